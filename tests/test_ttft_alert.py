"""A TTFT regression on streamed calls raises an alert: the real OpenTelemetry SDK emits
OpenInference-shaped stream spans (TTFT only in their ``First Token Stream Event``) through a
sidecar to an aggregator, and slower first tokens at the same total latency become a
``latency_spike`` alert on ``ttft_ms``."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.conftest import AggregatorFactory, SidecarFactory

PARAMS = json.dumps({"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}})


def emit_streams(endpoint: str, *, start: int, n: int, ttft_ms: float) -> list[str]:
    """``n`` streamed calls 400 ms apart, each 1.2 s long, first token after about ``ttft_ms``."""
    provider = TracerProvider(resource=Resource.create({"service.name": "stream-api"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                   max_export_batch_size=128, schedule_delay_millis=50))
    tracer = provider.get_tracer("ttft")
    rng = random.Random(start)
    ids = []
    for i in range(n):
        t = start + i * 400_000_000
        first = ttft_ms * rng.lognormvariate(0, 0.1)
        span = tracer.start_span("ChatCompletion", start_time=t, attributes={
            "openinference.span.kind": "LLM", "llm.system": "openai", "llm.invocation_parameters": PARAMS,
            "llm.model_name": "gpt-4o-mini-2024-07-18", "llm.token_count.prompt": 50,
            "llm.token_count.completion": 100, "llm.finish_reason": "stop",
        })
        span.add_event("First Token Stream Event", timestamp=t + int(first * 1e6))
        ids.append(format(span.get_span_context().trace_id, "032x"))
        span.end(end_time=t + int(1200 * 1e6 * rng.lognormvariate(0, 0.02)))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return ids


async def test_a_ttft_regression_on_streams_raises_an_alert(make_aggregator: AggregatorFactory,
                                                            make_sidecar: SidecarFactory) -> None:
    agg = await make_aggregator()
    sidecar = await make_sidecar(aggregator_url=agg.url)
    endpoint = f"127.0.0.1:{sidecar.ports()['grpc']}"
    t0 = time.time_ns() - 200 * 1_000_000_000
    await asyncio.to_thread(emit_streams, endpoint, start=t0, n=300, ttft_ms=100.0)
    while (agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_ingested_total") or 0) < 300:
        await asyncio.sleep(0.05)
    await agg.analysis.drain()
    slow = await asyncio.to_thread(emit_streams, endpoint, start=t0 + 125 * 1_000_000_000, n=8, ttft_ms=900.0)

    alert: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=agg.url) as api:
        deadline = time.monotonic() + 30
        while not alert and time.monotonic() < deadline:
            r = await api.get("/api/v1/alerts", params={"type": "latency_spike", "service": "stream-api"})
            assert r.status_code == 200
            alert = next((a for a in r.json()["alerts"] if a["details"]["metric"] == "ttft_ms"), {})
            await asyncio.sleep(0.1)
    assert alert, "no latency_spike alert on ttft_ms within 30 s"
    assert alert["model"] == "gpt-4o-mini"  # the request model, from the invocation parameters
    assert alert["details"]["value"] > 500 and alert["details"]["baseline"] < 200
    assert set(alert["context"]["trace_ids"]) <= set(slow)
