"""End to end: the real OpenTelemetry SDK -> sidecar -> aggregator -> one alert, seen in the store,
on the REST API, on the SSE stream, on gRPC ``Watch`` and as a persistent message on the real
RabbitMQ queue bound to ``incidents.#``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from typing import Any

import aio_pika
import grpc.aio
import httpx
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from sentinel.alerts import SEVERITIES
from sentinel.cli.alerts import parse_sse
from sentinel.v1 import alerts_pb2, alerts_pb2_grpc
from tests.conftest import AggregatorFactory, SidecarFactory

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
VIEWER = "viewer-token-e2e"
INGEST = "ingest-token-e2e"
SCHEMA = ("alert_id", "timestamp", "severity", "anomaly_type", "service_name", "model", "detection_method",
          "confidence", "details", "context", "root_cause", "remediation", "related_alerts", "runbook_url")


def emit_spans(endpoint: str, *, start: int, n: int, factor: float = 1.0) -> list[str]:
    """``n`` chat calls 400 ms apart from ``start``, latency x ``factor``; their trace ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": "chat-api", "cloud.region": "eu-west-1"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True),
                                                   max_export_batch_size=128, schedule_delay_millis=50))
    tracer = provider.get_tracer("e2e")
    rng = random.Random(start)
    ids: list[str] = []
    for i in range(n):
        t = start + i * 400_000_000
        latency_ms = 1000 * rng.lognormvariate(0, 0.25) * factor
        span = tracer.start_span("chat gpt-4o", start_time=t, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 800, "gen_ai.usage.output_tokens": 200,
            "gen_ai.response.finish_reasons": ["stop"],
        })
        ids.append(format(span.get_span_context().trace_id, "032x"))
        span.end(end_time=t + int(latency_ms * 1e6))
    assert provider.force_flush(10_000)
    provider.shutdown()
    return ids


async def _collect_sse(url: str, events: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=None) as client, client.stream(
            "GET", f"{url}/api/v1/stream?type=latency_spike",
            headers={"Authorization": f"Bearer {VIEWER}"}) as r:
        assert r.status_code == 200
        lines: list[str] = []
        async for line in r.aiter_lines():
            lines.append(line)
            if line == "":
                for name, data in parse_sse(lines):
                    if name in ("alert", "update", "resolved"):
                        events.append({"event": name, "alert": json.loads(data)})
                lines = []


async def _collect_grpc(port: int, events: list[alerts_pb2.AlertEvent]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = alerts_pb2_grpc.AlertServiceStub(channel)
        call = stub.Watch(alerts_pb2.WatchRequest(anomaly_type="latency_spike"),
                          metadata=(("authorization", f"Bearer {VIEWER}"),))
        async for event in call:
            events.append(event)


async def test_sdk_span_becomes_an_alert_everywhere(make_aggregator: AggregatorFactory,
                                                    make_sidecar: SidecarFactory) -> None:
    suffix = uuid.uuid4().hex[:8]
    exchange_name = f"incidents-e2e-{suffix}"
    agg = await make_aggregator(amqp={"url": AMQP_URL, "exchange": exchange_name, "queue": f"incidents.all-{suffix}"},
                                grpc_listen="127.0.0.1:0", tokens=[INGEST], viewer_tokens=[VIEWER],
                                alerts={"group_wait_s": 1})  # grouping timers: tests/test_alert_grouping.py
    assert agg.grpc is not None
    connection = await aio_pika.connect(AMQP_URL)
    sse: list[dict[str, Any]] = []
    watched: list[alerts_pb2.AlertEvent] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(f"e2e-consumer-{suffix}", auto_delete=True)
        await queue.bind(exchange, "incidents.#")
        tasks = [asyncio.create_task(_collect_sse(agg.url, sse)),
                 asyncio.create_task(_collect_grpc(agg.grpc.port, watched))]
        while agg.hub.subscribers < 2:  # both watchers are connected before the incident
            await asyncio.sleep(0.02)

        sidecar = await make_sidecar(aggregator_url=agg.url, token=INGEST)
        endpoint = f"127.0.0.1:{sidecar.ports()['grpc']}"
        t0 = time.time_ns() - 200 * 1_000_000_000
        # Normal traffic first, ingested before the incident: the global baseline the spike is judged by.
        await asyncio.to_thread(emit_spans, endpoint, start=t0, n=300)
        while (agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_ingested_total") or 0) < 300:
            await asyncio.sleep(0.05)
        await agg.analysis.drain()
        slow_ids = await asyncio.to_thread(emit_spans, endpoint, start=t0 + 125 * 1_000_000_000, n=8, factor=60)

        # REST API
        alert: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=agg.url, headers={"Authorization": f"Bearer {VIEWER}"}) as api:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = await api.get("/api/v1/alerts", params={"type": "latency_spike", "service": "chat-api"})
                assert r.status_code == 200
                if r.json()["alerts"]:
                    alert = r.json()["alerts"][0]
                    break
                await asyncio.sleep(0.1)
            assert alert, "no latency_spike alert within 30 s"
            one = (await api.get(f"/api/v1/alerts/{alert['alert_id']}")).json()
            assert one["alert_id"] == alert["alert_id"]
        for key in SCHEMA:
            assert key in alert
        assert alert["severity"] in SEVERITIES and alert["service_name"] == "chat-api" and alert["model"] == "gpt-4o"
        assert alert["detection_method"].startswith("local_") and 0.5 <= alert["confidence"] <= 1
        details = alert["details"]
        assert details["metric"] == "latency_ms"
        assert details["value"] > details["threshold"] > details["baseline"] > 0 and details["deviation_sigma"] > 3
        assert set(alert["context"]["trace_ids"]) <= set(slow_ids) and alert["context"]["trace_ids"]
        assert alert["root_cause"] and alert["remediation"] and alert["runbook_url"].endswith("#latency_spike")
        assert alert["count"] >= 3
        # Alerts of the same service raised in the same batch (the slow calls' low tokens/s) are linked
        # as related; before grouping that link was lost from the store when both were raised together.
        for related_id in alert["related_alerts"]:
            related = agg.alert_store.get(related_id)
            assert related is not None and related.service_name == "chat-api"
            assert related.anomaly_type != "latency_spike" and alert["alert_id"] in related.related_alerts

        # store
        stored = agg.alert_store.get(alert["alert_id"])
        assert stored is not None and stored.anomaly_type == "latency_spike"

        # SSE and gRPC Watch
        async def seen_live() -> None:
            while not (any(e.get("alert", {}).get("alert_id") == alert["alert_id"] for e in sse)
                       and any(e.alert.alert_id == alert["alert_id"] for e in watched)):
                await asyncio.sleep(0.05)

        await asyncio.wait_for(seen_live(), 10)
        first_sse = next(e for e in sse if e.get("alert", {}).get("alert_id") == alert["alert_id"])
        assert first_sse["event"] == "alert"
        first_grpc = next(e for e in watched if e.alert.alert_id == alert["alert_id"])
        assert first_grpc.event == "alert" and first_grpc.alert.details.metric == "latency_ms"
        assert first_grpc.alert.severity == alert["severity"]

        # RabbitMQ: one persistent JSON message on the queue bound to incidents.#
        message = await queue.get(timeout=10, fail=False)
        deadline = time.monotonic() + 10
        while message is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            message = await queue.get(timeout=10, fail=False)
        assert message is not None, "no message on the incidents.# queue"
        await message.ack()
        body = json.loads(message.body)
        assert body["alert_id"] == alert["alert_id"] and message.message_id == alert["alert_id"]
        assert message.routing_key == f"incidents.{alert['severity']}"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.content_type == "application/json"
        for key in SCHEMA:
            assert key in body
        # Other alerts (the slow calls' low tokens/s) may be there too; this one is there once, not once
        # per repeat detection, and every message is a stored alert.
        others: list[dict[str, Any]] = []
        while (more := await queue.get(timeout=5, fail=False)) is not None:
            await more.ack()
            others.append(json.loads(more.body))
        assert alert["alert_id"] not in {o["alert_id"] for o in others}
        assert all(agg.alert_store.get(o["alert_id"]) is not None for o in others)
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            ch = await connection.channel()
            await ch.exchange_delete(exchange_name)
            await ch.queue_delete(f"incidents.all-{suffix}")
        await connection.close()
