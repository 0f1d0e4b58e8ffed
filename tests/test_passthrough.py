"""Pass-through: the team's own collector receives exactly what the app sent."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from loadtest.spans import build_trace_request
from sidecar.passthrough import GRPC_METHODS
from tests.conftest import SidecarFactory

DATA = Path(__file__).resolve().parents[1] / "testdata" / "otlp"


class GrpcCollector:
    """An in-process OTLP/gRPC server that records the raw bytes of every Export call."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.server = grpc.aio.server()
        handlers = {}
        for signal, method in GRPC_METHODS.items():
            service, name = method.strip("/").split("/")
            handlers[service] = grpc.method_handlers_generic_handler(
                service, {name: grpc.unary_unary_rpc_method_handler(self._record(signal))})
        self.server.add_generic_rpc_handlers(tuple(handlers.values()))
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _record(self, signal: str) -> Any:
        async def handle(raw: bytes, context: Any) -> bytes:
            self.received.append((signal, raw))
            return b""
        return handle


async def _wait(cond: Any, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if cond():
            return
        await asyncio.sleep(0.02)


async def test_grpc_upstream_gets_identical_bytes(make_sidecar: SidecarFactory) -> None:
    collector = GrpcCollector()
    await collector.server.start()
    try:
        sc = await make_sidecar(upstream={"url": f"http://127.0.0.1:{collector.port}"})
        body = build_trace_request(20, rng=random.Random(3)).SerializeToString()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.ports()['grpc']}") as ch:
            await ch.unary_unary(GRPC_METHODS["traces"], None, None)(body, timeout=5)
            await ch.unary_unary(GRPC_METHODS["metrics"], None, None)(b"", timeout=5)
        async with httpx.AsyncClient() as c:
            r = await c.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/logs",
                             content=(DATA / "logs.json").read_bytes(), headers={"Content-Type": "application/json"})
            assert r.status_code == 200
        await _wait(lambda: len(collector.received) == 3)
        got = dict(collector.received)
        assert got["traces"] == body  # byte for byte
        assert got["metrics"] == b""
        # JSON arrives re-encoded as protobuf, the same message (hex ids decoded).
        assert len(got["logs"]) > 0
        assert sc.metrics.upstream_requests.labels("traces", "sent")._value.get() == 1
    finally:
        await collector.server.stop(None)


async def test_http_upstream_and_drops_are_counted(make_sidecar: SidecarFactory) -> None:
    received: list[bytes] = []
    gate = asyncio.Event()

    async def handle(request: web.Request) -> web.Response:
        await gate.wait()  # a stalled collector: the app's export must not wait for it
        received.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        sc = await make_sidecar(upstream={"url": f"http://127.0.0.1:{port}", "protocol": "http/protobuf",
                                          "queue": 2})
        async with httpx.AsyncClient() as c:
            for i in range(8):
                body = build_trace_request(5, rng=random.Random(i)).SerializeToString()
                r = await c.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/traces", content=body,
                                 headers={"Content-Type": "application/x-protobuf"})
                assert r.status_code == 200
        # Two workers hold one request each, two wait in the queue, the other four are dropped.
        dropped = sc.metrics.upstream_requests.labels("traces", "dropped")._value.get()
        assert dropped == 4
        gate.set()
        await _wait(lambda: len(received) == 4)
        assert len(received) == 4
        assert all(ExportTraceServiceRequest.FromString(b).resource_spans for b in received)
    finally:
        gate.set()
        await runner.cleanup()

