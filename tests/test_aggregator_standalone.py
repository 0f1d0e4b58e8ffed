"""Standalone topology: an app outside Kubernetes exports OTLP straight to the aggregator."""

from __future__ import annotations

import asyncio

from tests.conftest import AggregatorFactory
from tests.test_sidecar_sdk import GrpcExporter, HttpExporter, _emit


async def _wait(cond: object, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)


async def test_otlp_grpc_and_http_reach_ingest_and_baselines(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(otlp_grpc_listen="127.0.0.1:0", otlp_http_listen="127.0.0.1:0",
                                tokens=["t0ken"])
    assert agg.otlp is not None
    ports = agg.otlp.ports()
    calls = [{"model": "gpt-4o", "latency_ms": 900 + i} for i in range(5)]
    await asyncio.to_thread(_emit, GrpcExporter(endpoint=f"127.0.0.1:{ports['grpc']}", insecure=True), calls)
    await asyncio.to_thread(_emit, HttpExporter(endpoint=f"http://127.0.0.1:{ports['http']}/v1/traces"), calls)

    def ingested() -> float:
        return agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_ingested_total") or 0.0

    await _wait(lambda: ingested() >= 10)
    assert ingested() == 10
    await agg.analysis.drain()
    found = agg.baselines.store.query(service="chat-api", region=None)
    assert found and found[0]["calls"] == 10
    # The embedded receiver's own metrics are on the aggregator's /metrics too.
    assert agg.metrics.registry.get_sample_value("sentinel_sidecar_llm_calls_total") == 10
