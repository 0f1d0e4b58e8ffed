"""OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/metrics``, ``/v1/logs`` on aiohttp.

A thin shell over :mod:`sidecar.otlp_codec`: read the body (bounded), decompress it ourselves
(bounded, so a gzip bomb never allocates past the limit, and a truncated stream is refused),
decode, hand traces to the consumer, queue pass-through, and answer as the specification says
(a ``google.rpc.Status`` in the request's encoding on failure; 503 + ``Retry-After`` on overload).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from google.rpc import code_pb2

from sentinel import service
from sidecar import otlp_codec
from sidecar.forward_queue import SpoolRefused
from sidecar.inflight import JSON_EXPANSION, InFlightBudget, NoRoom
from sidecar.metrics import SidecarMetrics
from sidecar.otlp_codec import Signal
from sidecar.otlp_lite import parse_traces
from sidecar.passthrough import Passthrough
from sidecar.pipeline import Overloaded, TracesConsumer

__all__ = ["OtlpHttpReceiver"]

log = logging.getLogger(__name__)


class OtlpHttpReceiver:
    def __init__(
        self,
        *,
        listen: str,
        max_body_bytes: int,
        consumer: TracesConsumer,
        metrics: SidecarMetrics,
        passthrough: Passthrough | None = None,
        budget: InFlightBudget | None = None,
    ) -> None:
        self._budget = budget if budget is not None else InFlightBudget(2**62)
        self._host, _, port = listen.rpartition(":")
        self._port = int(port)
        self._max_body = max_body_bytes
        self._consumer = consumer
        self._metrics = metrics
        self._passthrough = passthrough
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        # client_max_size bounds the body as sent; decompress() bounds it after decompression.
        app = web.Application(client_max_size=self._max_body)
        for signal in Signal:
            app.router.add_post(signal.path, self._handler(signal))
        # auto_decompress=False: aiohttp would otherwise inflate gzip itself and accept a truncated
        # stream silently; we inflate with our own bound and a strict end-of-stream check.
        runner = web.AppRunner(app, access_log=None, auto_decompress=False, keepalive_timeout=service.IDLE_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("OTLP/HTTP receiver listening on %s:%d", self._host, self.port)

    def _handler(self, signal: Signal) -> Any:
        async def handle(request: web.Request) -> web.Response:
            return await self._handle(signal, request)

        return handle

    def _error(self, signal: Signal, status: int, code: int, message: str, content_type: str | None,
               outcome: str, headers: dict[str, str] | None = None) -> web.Response:
        self._metrics.requests.labels(signal.value, "http", outcome).inc()
        ct = content_type if content_type in (otlp_codec.JSON, otlp_codec.PROTOBUF) else otlp_codec.PROTOBUF
        body = otlp_codec.status_body(code, message, ct)
        return web.Response(status=status, body=body, headers={"Content-Type": ct, **(headers or {})})

    async def _handle(self, signal: Signal, request: web.Request) -> web.Response:
        reserved = [0]
        try:
            return await self._handle_within(signal, request, reserved)
        except NoRoom as e:
            content_type = request.headers.get("Content-Type")
            if e.permanent:
                return self._error(signal, 413, code_pb2.RESOURCE_EXHAUSTED, str(e), content_type, "too_large")
            return self._error(signal, 503, code_pb2.UNAVAILABLE, f"sidecar overloaded: {e}", content_type,
                               "refused", {"Retry-After": "1"})
        finally:
            self._budget.release(reserved[0])

    def _reserve_up_to(self, reserved: list[int], cost: int) -> None:
        if cost > reserved[0]:
            reserved[0] += self._budget.reserve(cost - reserved[0])

    async def _handle_within(self, signal: Signal, request: web.Request, reserved: list[int]) -> web.Response:
        t0 = time.perf_counter()
        content_type = request.headers.get("Content-Type")
        try:
            media = otlp_codec.media_type(content_type)
            # Before reading: what the body will take (a chunked one may take the largest).
            self._reserve_up_to(reserved, min(request.content_length or self._max_body, self._max_body))
            try:
                async with asyncio.timeout(service.BODY_TIMEOUT_S):
                    raw = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise otlp_codec.BodyTooLarge(f"body larger than {self._max_body} bytes") from None
            except TimeoutError:
                return self._error(signal, 408, code_pb2.DEADLINE_EXCEEDED,
                                   f"body not received within {service.BODY_TIMEOUT_S:g} s", content_type,
                                   "timeout", {"Connection": "close"})
            body = otlp_codec.decompress(raw, request.headers.get("Content-Encoding"), self._max_body)
            del raw  # the compressed copy is not needed past here
            self._reserve_up_to(reserved, len(body) * (JSON_EXPANSION if media == otlp_codec.JSON else 1))
            if signal is Signal.TRACES and media == otlp_codec.PROTOBUF:
                # Traces in protobuf go straight to the lean view extraction reads.
                try:
                    lean = parse_traces(body)
                except DecodeError as e:
                    raise otlp_codec.MalformedRequest(f"invalid protobuf ExportTraceServiceRequest: {e}") from None
                protobuf = body
            else:
                message = otlp_codec.decode_request(signal, body, media)
                protobuf = body if media == otlp_codec.PROTOBUF else message.SerializeToString()
                if signal is Signal.TRACES:
                    lean = parse_traces(protobuf)
        except otlp_codec.OtlpDecodeError as e:
            outcome = "too_large" if isinstance(e, otlp_codec.BodyTooLarge) else "malformed"
            return self._error(signal, e.http_status, e.grpc_code, str(e), content_type, outcome)
        rejected, error_message = 0, ""
        consume_logs = getattr(self._consumer, "consume_logs", None)
        if signal is not Signal.LOGS or consume_logs is not None:
            try:
                if signal is Signal.TRACES:
                    result = await self._consumer.consume_traces(lean, len(protobuf))
                elif signal is Signal.LOGS:  # evaluation, feedback and security event records
                    assert consume_logs is not None
                    result = await consume_logs(message, len(protobuf))
                else:
                    result = await self._consumer.consume_metrics(message, len(protobuf))
            except (Overloaded, SpoolRefused) as e:
                retry = e.retry_after_s if isinstance(e, Overloaded) else 2.0
                return self._error(signal, 503, code_pb2.UNAVAILABLE, f"sidecar overloaded: {e}", media,
                                   "refused", {"Retry-After": str(max(1, math.ceil(retry)))})
            rejected, error_message = result.rejected_spans, result.message
        if self._passthrough is not None:
            # Protobuf passes as received; JSON is re-encoded as the same message in protobuf.
            self._passthrough.offer(signal.value, protobuf)
        self._metrics.requests.labels(signal.value, "http", "ok").inc()
        response = otlp_codec.export_response(signal, rejected, error_message)
        if signal is Signal.TRACES:
            self._metrics.export_seconds.labels("http").observe(time.perf_counter() - t0)
        return web.Response(body=otlp_codec.encode_response(response, media), headers={"Content-Type": media})

    async def shutdown(self) -> None:
        """Stop listening; idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
