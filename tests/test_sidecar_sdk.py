"""End to end with the real OpenTelemetry SDK as the client: spans in, rows at the aggregator."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode

from loadtest.recorder import RecordingAggregator
from tests.conftest import SidecarFactory

RESOURCE = Resource.create({
    "service.name": "chat-api",
    "k8s.namespace.name": "prod",
    "k8s.pod.name": "chat-api-7d9f",
    "cloud.region": "eu-west-1",
})

T0 = 1_760_000_000_000_000_000


def _emit(exporter: SpanExporter, calls: list[dict[str, Any]]) -> dict[str, str]:
    """Emit one GenAI span per call through the SDK; returns span name -> trace id hex."""
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=64, schedule_delay_millis=50))
    tracer = provider.get_tracer("test")
    ids: dict[str, str] = {}
    for i, call in enumerate(calls):
        start = T0 + i * 10_000_000_000
        attrs = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": call.get("model", "gpt-4o"),
            "gen_ai.response.model": call.get("model", "gpt-4o") + "-2024-08-06",
            "gen_ai.usage.input_tokens": call.get("input", 1000),
            "gen_ai.usage.output_tokens": call.get("output", 200),
            "gen_ai.response.finish_reasons": ["stop"],
            "server.address": "api.openai.com",
        }
        span = tracer.start_span(f"chat {i}", start_time=start, attributes=attrs)
        if call.get("error"):
            span.set_status(Status(StatusCode.ERROR, "boom"))
            span.set_attribute("error.type", "timeout")
        ids[f"chat {i}"] = format(span.get_span_context().trace_id, "032x")
        span.end(end_time=start + int(call.get("latency_ms", 1200) * 1e6))
    # A non-LLM span is counted, not rowed.
    tracer.start_span("GET /health", start_time=T0).end(end_time=T0 + 1_000_000)
    assert provider.force_flush(10_000)
    provider.shutdown()
    return ids


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_sdk_spans_become_rows(
    transport: str, recorder: RecordingAggregator, make_sidecar: SidecarFactory
) -> None:
    sc = await make_sidecar(aggregator_url=recorder.url)
    ports = sc.ports()
    if transport == "grpc":
        exporter: SpanExporter = GrpcExporter(endpoint=f"127.0.0.1:{ports['grpc']}", insecure=True)
    else:
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{ports['http']}/v1/traces")
    calls = [
        {"model": "gpt-4o", "input": 1000, "output": 200, "latency_ms": 1500},
        {"model": "gpt-4o-mini", "input": 50, "output": 10, "latency_ms": 300, "error": True},
    ]
    ids = await asyncio.to_thread(_emit, exporter, calls)
    assert await recorder.wait_rows(2) == 2
    rows = {r["trace_id"]: r for b in recorder.batches for r in b.batch.rows()}
    assert set(rows) == {ids["chat 0"], ids["chat 1"]}
    first, second = rows[ids["chat 0"]], rows[ids["chat 1"]]
    assert first["service"] == "chat-api"
    assert first["namespace"] == "prod"
    assert first["pod"] == "chat-api-7d9f"
    assert first["region"] == "eu-west-1"
    assert first["operation"] == "chat"
    assert first["provider"] == "openai"
    assert first["request_model"] == "gpt-4o"
    assert first["response_model"] == "gpt-4o-2024-08-06"
    assert first["input_tokens"] == 1000
    assert first["output_tokens"] == 200
    assert first["latency_ms"] == pytest.approx(1500)
    assert first["finish_reason"] == "stop"
    assert first["is_error"] == 0
    # gpt-4o lists at $2.50 / $10 per million input / output tokens in genai-prices.
    assert first["cost_usd"] == pytest.approx(1000 * 2.5e-6 + 200 * 10e-6, rel=1e-6)
    assert first["tokens_per_s"] == pytest.approx(200 / 1.5)
    assert second["request_model"] == "gpt-4o-mini"
    assert second["is_error"] == 1
    assert second["error_type"] == "timeout"
    assert second["cost_usd"] is not None and second["cost_usd"] > 0
    m = sc.metrics
    assert m.spans_received._value.get() == 3
    assert m.llm_calls._value.get() == 2
    for _ in range(100):  # the forwarder counts a batch once its response is read
        if m.forwarded_rows._value.get() == 2:
            break
        await asyncio.sleep(0.02)
    assert m.forwarded_rows._value.get() == 2


async def test_latency_outlier_after_warmup_is_forwarded_as_local_anomaly(
    recorder: RecordingAggregator, make_sidecar: SidecarFactory
) -> None:
    sc = await make_sidecar(aggregator_url=recorder.url)
    exporter = GrpcExporter(endpoint=f"127.0.0.1:{sc.ports()['grpc']}", insecure=True)
    # 80 ordinary calls (latency 1000-1390 ms), then one that takes 30 s.
    calls: list[dict[str, Any]] = [{"latency_ms": 1000 + (i * 37) % 400} for i in range(80)]
    calls.append({"latency_ms": 30_000})
    ids = await asyncio.to_thread(_emit, exporter, calls)
    assert await recorder.wait_rows(81) == 81
    anomalies = [a for b in recorder.batches for a in b.anomalies]
    latency = [a for a in anomalies if a.metric == "latency_ms"]
    assert [a.trace_id for a in latency] == [ids["chat 80"]]
    a = latency[0]
    assert a.value == pytest.approx(30_000)
    assert 1000 <= a.baseline <= 1400
    assert a.sigma > 10 and not math.isnan(a.threshold)
    assert a.service == "chat-api" and a.model == "gpt-4o"
    assert sc.metrics.local_anomalies.labels("latency_ms", a.method)._value.get() >= 1
