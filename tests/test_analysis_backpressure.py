"""Ingest refuses new batches (503 + Retry-After) while analysis is more than
``analysis_queue_max_rows`` behind, and accepts again once it catches up: memory and detection
latency stay bounded when sidecars send faster than analysis runs. Nothing accepted is lost."""

from __future__ import annotations

import asyncio
import threading
import time

from aggregator.app import Aggregator
from sentinel import wire
from sentinel.model import FeatureBatch, LocalAnomaly
from sentinel.wire import WireBatch
from tests.conftest import AggregatorFactory, wait_for
from tests.test_aggregator_ingest import _body, _post, _row, _value


def _stall(agg: Aggregator) -> threading.Event:
    """Analysis stalls (in its last consumer) until the returned gate is set."""
    gate = threading.Event()
    consume = agg.alerts.consume

    def slow(batch: WireBatch, *, arrival_ns: int) -> None:
        gate.wait(10)
        consume(batch, arrival_ns=arrival_ns)

    agg.alerts.consume = slow  # type: ignore[method-assign]
    return gate


async def test_ingest_backs_off_while_analysis_is_behind(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(analysis_queue_max_rows=8)
    gate = _stall(agg)
    try:
        assert (await _post(agg, _body(1, n=5))).status_code == 200
        assert (await _post(agg, _body(2, n=5))).status_code == 200  # 5 rows behind: still under 8
        await wait_for(lambda: agg.analysis.backlog_rows == 10, what="backlog")
        r = await _post(agg, _body(3, n=5))
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert "analysis_queue_max_rows" in r.json()["error"]
        assert _value(agg, "sentinel_aggregator_analysis_backlog_rows") == 10
    finally:
        gate.set()
    await wait_for(lambda: agg.analysis.backlog_rows == 0, what="analysis to catch up")
    assert (await _post(agg, _body(3, n=5))).status_code == 200  # the retry is accepted
    await asyncio.sleep(0)
    assert _value(agg, "sentinel_aggregator_rows_ingested_total") == 15


async def test_concurrent_batches_cannot_together_overshoot_the_bound(make_aggregator: AggregatorFactory) -> None:
    """Issue 15, case 4: the bound was checked before the body was read, so 16 concurrent batches
    all passed it (backlog 80 rows against a bound of 8). Rows are now reserved once decoded."""
    agg = await make_aggregator(analysis_queue_max_rows=8)
    gate = _stall(agg)
    try:
        answers = await asyncio.gather(*(_post(agg, _body(seq, n=5)) for seq in range(16)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 2 + [503] * 14, "taken while under the bound (5 < 8), then refused"
        assert agg.analysis.backlog_rows == 10
        assert all(r.headers["Retry-After"] == "1" for r in answers if r.status_code == 503)
    finally:
        gate.set()
    await wait_for(lambda: agg.analysis.backlog_rows == 0, what="analysis to catch up")
    assert agg.ingest._reserved == 0, "every reservation was handed to analysis or released"


async def test_anomalies_per_batch_are_bounded_counted_and_count_against_the_backlog(
        make_aggregator: AggregatorFactory) -> None:
    """Issue 15, case 6: 140,000 local anomalies in a batch of 20 rows were all confirmed."""
    agg = await make_aggregator(max_anomalies_per_batch=10, analysis_queue_max_rows=1_000)
    gate = _stall(agg)
    now = time.time_ns()
    anomaly = LocalAnomaly(metric="latency_ms", value=9e3, baseline=100.0, deviation=10.0, threshold=130.0,
                           sigma=890.0, method="zscore", service="checkout", model="gpt-4o", operation="chat",
                           trace_id="ab" * 16, span_id="cd" * 8, time_unix_nano=now)
    body = wire.encode(FeatureBatch.from_rows([_row(now, i) for i in range(20)]), sidecar="sc-1", seq=1,
                       anomalies=[anomaly] * 3_000)
    try:
        r = await _post(agg, body)
        assert r.status_code == 200, r.text
        await wait_for(lambda: agg.analysis.backlog_rows == 30, what="20 rows + 10 anomalies in the backlog")
    finally:
        gate.set()
    await agg.analysis.drain()
    outcome = {o: _value(agg, "sentinel_aggregator_local_anomalies_total", {"outcome": o})
               for o in ("confirmed", "dismissed", "late", "over_limit")}
    assert outcome["over_limit"] == 2_990
    assert outcome["confirmed"] + outcome["dismissed"] + outcome["late"] == 10
