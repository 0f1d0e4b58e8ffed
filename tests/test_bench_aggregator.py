"""Smoke tests of the aggregator and fleet benchmarks: they run and report their keys.

Tiny sizes and no timing assertions: the figures themselves are for ``python -m loadtest.bench_aggregator``,
``python -m loadtest.bench_fleet`` and ``python -m loadtest.bench_all``.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from loadtest.bench_aggregator import AggBenchSettings, Stream, build_corpus, marker_body, run_in_process
from loadtest.bench_all import render
from loadtest.bench_fleet import FleetSettings, Retimer, carried, run_fleet
from loadtest.spans import build_trace_payloads
from sentinel import wire
from sentinel.model import LocalAnomaly


def test_decode_and_analysis_report_their_figures() -> None:
    settings = AggBenchSettings(corpus_payloads=2, spans_per_payload=128, rows_per_batch=64, sidecars=3,
                                decode_seconds=0.01, decode_bodies=4, analysis_warmup_rows=128, analysis_rows=256)
    r = run_in_process(settings)
    for key in ("rows_per_s", "batches_per_s", "mb_per_s", "rows", "seconds", "bytes_per_row", "rows_per_batch"):
        assert key in r["decode"], key
    a = r["analysis"]
    for key in ("rows_per_s", "cpu_rows_per_s", "rows", "batches", "seconds", "cpu_seconds", "warmup_rows",
                "candidates", "alerts", "forest_fits", "consumers", "ratio_to_decode"):
        assert key in a, key
    assert a["rows"] == a["batches"] * 64 == 256
    # Every consumer the aggregator builds, in its order (the forest, quality and security are on by default).
    assert list(a["consumers"]) == ["edge_alerts", "confirmer", "baselines", "quality", "security", "detectors",
                                    "forest", "series", "alerts"]
    assert all(v["cpu_seconds"] >= 0 and v["cpu_share"] >= 0 for v in a["consumers"].values())


def test_analysis_with_forwarded_anomalies_raises_alerts() -> None:
    # Threshold anomalies are always confirmed; the third on one key (the first of the timed part: the
    # warm-up batch holds two) makes an alert, which the alert manager stores (its store is open).
    settings = AggBenchSettings(corpus_payloads=1, spans_per_payload=64, rows_per_batch=16, sidecars=2,
                                decode_seconds=0.01, decode_bodies=2, analysis_warmup_rows=16, analysis_rows=256)
    corpus = build_corpus(1, 64)
    b = corpus.batch
    for i in range(0, 64, 8):
        corpus.anomalies[i] = [LocalAnomaly(
            metric="latency_ms", value=1e6, baseline=1e3, deviation=float("nan"), threshold=1e5, sigma=float("nan"),
            method="threshold", service=b.strings["service"][0], model=b.strings["request_model"][0],
            operation=b.strings["operation"][0], trace_id=b.strings["trace_id"][i], span_id=b.strings["span_id"][i],
            time_unix_nano=0)]
    a = run_in_process(settings, corpus)["analysis"]
    assert a["anomalies_forwarded"] == 32 and a["candidates"] >= 32 and a["alerts"] >= 1  # 256 rows: 4 cycles


def test_stream_batches_have_increasing_times_and_distinct_seqs() -> None:
    corpus = build_corpus(1, 64)
    stream = Stream(corpus, rows_per_batch=16, sidecars=2, event_rows_per_s=1000.0, start_unix_nano=10**18)
    batches = stream.take(100)
    assert len(batches) == 7
    times = np.concatenate([b.batch.numeric["time_unix_nano"] for b in batches])
    assert (np.diff(times) == 1_000_000).all()
    assert len({(b.sidecar, b.seq) for b in batches}) == len(batches)
    decoded = wire.decode(marker_body(3, now_ns=10**18))
    assert decoded.anomalies[0].method == "threshold" and decoded.batch.strings["service"] == ["bench-marker-3"]


def test_retimer_rewrites_only_span_times() -> None:
    payload = build_trace_payloads(1, 50, seed=3)[0]
    r = Retimer(payload)
    out = ExportTraceServiceRequest.FromString(r.at(1_800_000_000 * 10**9, 10**9))
    spans = [s for rs in out.resource_spans for ss in rs.scope_spans for s in ss.spans]
    ends = sorted(s.end_time_unix_nano for s in spans)
    assert ends[-1] == 1_800_000_000 * 10**9 and ends[0] > (1_800_000_000 - 1) * 10**9
    original = ExportTraceServiceRequest.FromString(payload)
    for rs in original.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.start_time_unix_nano = s.end_time_unix_nano = 0
    for rs in out.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.start_time_unix_nano = s.end_time_unix_nano = 0
    assert out == original


@pytest.mark.system
@pytest.mark.timeout(120)
def test_tiny_fleet_drops_nothing_and_reports(tmp_path: Path) -> None:
    settings = FleetSettings(sidecars=2, rate=400.0, seconds=5.0, spans_per_request=20, payloads=4, warmup_s=1.5,
                             inject_every_s=1.5, burst_spans=40, startup_timeout_s=60.0, drain_timeout_s=30.0,
                             alert_wait_s=5.0)
    r = asyncio.run(run_fleet(settings, lambda _: None, log_dir=str(tmp_path)))
    assert r["nothing_dropped"], json.dumps({k: r[k] for k in ("traffic", "sidecars", "aggregator")}, default=str)
    assert r["traffic"]["spans_acked"] == r["aggregator"]["rows_ingested"] > 0
    assert r["sidecars"]["dropped_rows"] == 0
    for key in ("traffic", "sidecars", "aggregator", "resources", "detection", "kept_rate", "alert_channel"):
        assert key in r, key
    for key in ("injections", "detected", "p50_s", "p95_s", "max_s", "per_injection", "channel"):
        assert key in r["detection"], key
    assert r["detection"]["injections"] >= 2
    carried(r)  # a verdict either way; no timing assertion
    table = render({"fleet": {"status": 0, "seconds": 1.0, "load_average_at_start": 0.0, "figures": r}},
                   {"load_average": [0.0, 0.0, 0.0]}, quick=True)
    assert "detection latency" in table
