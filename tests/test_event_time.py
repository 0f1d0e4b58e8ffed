"""Event time against arrival time (issue 15, case 1): a span stamped in 2200 blinds nobody.

A real in-process aggregator and raw wire bodies over HTTP; the detectors run as in production.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aggregator.analysis.detectors.consumer import DetectorConsumer
from aggregator.analysis.pipeline import restore, save
from aggregator.ingest.event_time import clamp_future
from sentinel import wire
from sentinel.model import COLUMNS, FeatureBatch, LocalAnomaly, Row
from tests.conftest import AggregatorFactory

S = 10**9
YEAR_2200_NS = 7_258_118_400 * S
MSGPACK = {"Content-Type": wire.CONTENT_TYPE}


def _rows(service: str, t_ns: int, n: int, errors: int) -> list[Row]:
    out = []
    for i in range(n):
        values: dict[str, Any] = {name: None for name in COLUMNS}
        values.update(time_unix_nano=t_ns + i, service=service, request_model="gpt-4o", operation="chat",
                      latency_ms=100.0, is_error=int(i < errors), trace_id=f"{i:032x}", span_id=f"{i:016x}")
        out.append(tuple(values[name] for name in COLUMNS))
    return out


def _anomaly(t_ns: int) -> LocalAnomaly:
    return LocalAnomaly(metric="latency_ms", value=9e3, baseline=100.0, deviation=10.0, threshold=130.0, sigma=890.0,
                        method="zscore", service="payments", model="gpt-4o", operation="chat", trace_id="ab" * 16,
                        span_id="cd" * 8, time_unix_nano=t_ns)


async def _send(c: httpx.AsyncClient, url: str, sidecar: str, seq: int, rows: list[Row],
                anomalies: list[LocalAnomaly] | None = None) -> dict[str, Any]:
    body = wire.encode(FeatureBatch.from_rows(rows), sidecar=sidecar, seq=seq, anomalies=anomalies or [])
    r = await c.post(f"{url}/v1/ingest", content=body, headers=MSGPACK)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


async def test_a_span_stamped_in_2200_does_not_blind_the_windowed_detectors(
        make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(detectors={"error_burst": {"window_s": 1.0}})
    now = time.time_ns()
    async with httpx.AsyncClient() as c:
        answer = await _send(c, agg.url, "attacker", 0, _rows("attacker", YEAR_2200_NS, 5, 0))
        # An error burst on another sidecar, 8 s old (inside error_burst's 10 s lateness), then rows
        # 4 s ahead (inside max_future_skew_s) that close its window.
        await _send(c, agg.url, "payments", 0, _rows("payments", now - 8 * S, 40, 24))
        await _send(c, agg.url, "payments", 1, _rows("payments", now + 4 * S, 5, 0))
    await agg.analysis.drain()
    assert answer["future_rows"] == 5
    assert agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_future_total") == 5
    found = agg.candidates.recent(anomaly_type="error_burst")
    assert [(f["service"], f["detection_method"]) for f in found] == [("payments", "binomial_z")]
    watermark = agg.detectors.detectors["error_burst"].to_state()["watermark"]
    assert watermark < time.time_ns() + agg.config.max_future_skew_s * S, "nobody's watermark was moved to 2200"


async def test_rows_within_the_skew_keep_their_time_and_are_not_counted(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    async with httpx.AsyncClient() as c:
        answer = await _send(c, agg.url, "sc", 0, _rows("checkout", time.time_ns() + 2 * S, 3, 0))
    assert answer["future_rows"] == 0
    assert agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_future_total") == 0


def test_clamp_moves_rows_and_anomalies_beyond_the_skew_to_arrival_time() -> None:
    arrival = 1_000 * S
    batch = wire.decode(wire.encode(
        FeatureBatch.from_rows(_rows("s", arrival - S, 2, 0) + _rows("s", arrival + 10 * S, 2, 0)), sidecar="s",
        seq=0, anomalies=[_anomaly(arrival + 3 * S), _anomaly(YEAR_2200_NS)]))
    assert clamp_future(batch, arrival_ns=arrival, max_skew_ns=5 * S) == 2
    assert batch.batch.numeric["time_unix_nano"].tolist() == [arrival - S, arrival - S + 1, arrival, arrival]
    assert batch.batch.numeric["time_unix_nano"].dtype == np.int64
    assert [a.time_unix_nano for a in batch.anomalies] == [arrival + 3 * S, arrival]


def test_a_watermark_saved_in_2200_is_not_restored(tmp_path: Path) -> None:
    """An older version persisted the 2200 watermark in detectors.json: it blinded the detector across restarts."""
    found: list[Any] = []
    settings = {"error_burst": {"window_s": 1.0}}
    old = DetectorConsumer(settings, tmp_path)  # no clamp, as before
    old.consume(wire.decode(wire.encode(FeatureBatch.from_rows(_rows("attacker", YEAR_2200_NS, 5, 0)),
                                        sidecar="a", seq=0)), arrival_ns=time.time_ns())
    save(old)
    assert old.detectors["error_burst"].to_state()["watermark"] >= YEAR_2200_NS
    restored = DetectorConsumer(settings, tmp_path, max_future_skew_s=5.0)
    restore(restored)
    assert restored.detectors["error_burst"].to_state()["watermark"] is None, "started afresh"
    now = time.time_ns()
    for seq, rows in enumerate((_rows("payments", now - 8 * S, 40, 24), _rows("payments", now + 4 * S, 5, 0))):
        found += restored.consume(wire.decode(wire.encode(FeatureBatch.from_rows(rows), sidecar="p", seq=seq)),
                                  arrival_ns=now)
    assert [c.service for c in found] == ["payments"]
