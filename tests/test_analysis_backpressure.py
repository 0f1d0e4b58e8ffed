"""Ingest refuses new batches (503 + Retry-After) while analysis is more than
``analysis_queue_max_rows`` behind, and accepts again once it catches up: memory and detection
latency stay bounded when sidecars send faster than analysis runs. Nothing accepted is lost."""

from __future__ import annotations

import asyncio
import threading

from sentinel.wire import WireBatch
from tests.conftest import AggregatorFactory, wait_for
from tests.test_aggregator_ingest import _body, _post, _value


async def test_ingest_backs_off_while_analysis_is_behind(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(analysis_queue_max_rows=8)
    gate = threading.Event()
    consume = agg.alerts.consume

    def slow(batch: WireBatch, *, arrival_ns: int) -> None:  # analysis stalls until the gate opens
        gate.wait(10)
        consume(batch, arrival_ns=arrival_ns)

    agg.alerts.consume = slow  # type: ignore[method-assign]
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
