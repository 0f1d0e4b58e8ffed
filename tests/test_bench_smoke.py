"""Smoke test of the sidecar benchmark's in-process parts (figures 1 and 2): it runs and reports.

Tiny sizes and no timing assertions: the figures themselves are for ``python -m loadtest.bench_sidecar``.
"""

from __future__ import annotations

from loadtest.bench_sidecar import QUICK, BenchSettings, run_in_process, steady_sizes
from loadtest.spans import build_trace_payloads


def test_in_process_parts_report_their_figures() -> None:
    payloads = build_trace_payloads(3, 32, seed=1)
    settings = BenchSettings(payloads=3, spans_per_request=32, parse_seconds=0.01, pipeline_seconds=0.01,
                             pipeline_warmup_requests=2)
    r = run_in_process(payloads, settings)
    for key in ("spans_per_s", "requests_per_s", "mb_per_s", "spans", "seconds", "bytes_per_span"):
        assert key in r["parse"], key
    for key in ("spans_per_s", "spans", "requests", "seconds", "llm_calls", "rows_sealed", "local_anomalies",
                "ratio_to_parse"):
        assert key in r["pipeline"], key
    assert r["parse"]["spans"] > 0
    # Every span is an LLM call, and every row of the timed part was sealed (wire-encoded).
    assert r["pipeline"]["spans"] == r["pipeline"]["requests"] * 32
    assert r["pipeline"]["rows_sealed"] == r["pipeline"]["llm_calls"] == r["pipeline"]["spans"]
    assert QUICK.steady_seconds < BenchSettings().steady_seconds


def test_steady_measurements_main_size_then_64() -> None:
    assert steady_sizes(BenchSettings()) == [512, 64]
    assert steady_sizes(BenchSettings(steady_spans_per_request=64)) == [64]
    assert steady_sizes(BenchSettings(steady_extra_spans_per_request=0)) == [512]
