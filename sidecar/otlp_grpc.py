"""OTLP/gRPC receiver: the trace, metrics and logs ``Export`` services on ``grpc.aio``.

A thin shell: it parses (so malformed input gets INVALID_ARGUMENT), hands traces to the one
consumer, queues the untouched bytes for pass-through, and maps errors. Handlers are registered
generically with no deserializer so the exact received bytes are what pass-through sends on.
The size limit is gRPC's own ``grpc.max_receive_message_length`` (RESOURCE_EXHAUSTED beyond it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from sidecar.forward_queue import SpoolRefused
from sidecar.inflight import InFlightBudget, NoRoom
from sidecar.metrics import SidecarMetrics
from sidecar.otlp_lite import parse_traces
from sidecar.passthrough import Passthrough
from sidecar.pipeline import ConsumeResult, Overloaded, TracesConsumer

__all__ = ["OtlpGrpcReceiver"]

log = logging.getLogger(__name__)

Handler = Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]


def _unavailable_metadata(message: str, retry_after_s: float) -> tuple[tuple[str, str | bytes], ...]:
    """Trailing metadata carrying google.rpc.RetryInfo, which OTLP exporters honour."""
    delay = Duration()
    delay.FromNanoseconds(int(retry_after_s * 1e9))
    detail = AnyProto()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return tuple(rpc_status.to_status(status).trailing_metadata)


class OtlpGrpcReceiver:
    def __init__(
        self,
        *,
        listen: str,
        max_recv_bytes: int,
        consumer: TracesConsumer,
        metrics: SidecarMetrics,
        passthrough: Passthrough | None = None,
        budget: InFlightBudget | None = None,
    ) -> None:
        self._budget = budget if budget is not None else InFlightBudget(2**62)
        self._listen = listen
        self._max_recv = max_recv_bytes
        self._consumer = consumer
        self._metrics = metrics
        self._passthrough = passthrough
        self._server: grpc.aio.Server | None = None
        self.port: int = 0

    async def start(self) -> None:
        # At most as many handlers at once as the budget holds largest messages (RESOURCE_EXHAUSTED
        # beyond, which OTLP exporters retry); the budget bounds what decoding holds. gRPC's transport
        # still takes in each whole message before a handler runs (sidecar/README.md, a known limit).
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self._max_recv),
            ("grpc.so_reuseport", 0),
        ], maximum_concurrent_rpcs=max(4, min(self._budget.max_bytes // self._max_recv, 1 << 20)))

        def unary(fn: Handler) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(fn)

        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": unary(self._traces)}),
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.metrics.v1.MetricsService", {"Export": unary(self._metrics_export)}),
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.logs.v1.LogsService", {"Export": unary(self._logs)}),
        ))
        try:
            self.port = server.add_insecure_port(self._listen)
        except RuntimeError:  # grpc reports a failed bind this way
            self.port = 0
        if self.port == 0:
            raise OSError(f"grpc_listen: cannot listen on {self._listen} (address in use or not local)")
        await server.start()
        self._server = server
        log.info("OTLP/gRPC receiver listening on %s", self._listen.rsplit(":", 1)[0] + f":{self.port}")

    async def _parse(self, cls: Any, raw: bytes, context: grpc.aio.ServicerContext[Any, Any], signal: str) -> Any:
        try:
            return cls.FromString(raw)
        except DecodeError as e:
            self._metrics.requests.labels(signal, "grpc", "malformed").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {cls.__name__}: {e}")

    async def _traces(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            reserved = self._budget.reserve(len(raw))
        except NoRoom as e:
            self._metrics.requests.labels("traces", "grpc", "refused").inc()
            message = f"sidecar overloaded: {e}"
            await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                                trailing_metadata=_unavailable_metadata(message, 1.0))
        try:
            return await self._traces_within(raw, context)
        finally:
            self._budget.release(reserved)

    async def _traces_within(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        t0 = time.perf_counter()
        try:
            # The lean view (sidecar.otlp_lite) is what extraction reads; parsing it validates
            # the request's framing at a fraction of the full parse's cost.
            request = parse_traces(raw)
        except DecodeError as e:
            self._metrics.requests.labels("traces", "grpc", "malformed").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed ExportTraceServiceRequest: {e}")
        result = await self._consume("traces", self._consumer.consume_traces(request, len(raw)), context)
        if self._passthrough is not None:
            self._passthrough.offer("traces", raw)
        self._metrics.requests.labels("traces", "grpc", "ok").inc()
        response = ExportTraceServiceResponse()
        if result.rejected_spans:
            response.partial_success.rejected_spans = result.rejected_spans
            response.partial_success.error_message = result.message
        self._metrics.export_seconds.labels("grpc").observe(time.perf_counter() - t0)
        out: bytes = response.SerializeToString()
        return out

    async def _consume(self, signal: str, consuming: Awaitable[ConsumeResult],
                       context: grpc.aio.ServicerContext[Any, Any]) -> ConsumeResult:
        """Await the consumer; overload becomes UNAVAILABLE with a retry hint."""
        try:
            return await consuming
        except (Overloaded, SpoolRefused) as e:
            self._metrics.requests.labels(signal, "grpc", "refused").inc()
            retry = e.retry_after_s if isinstance(e, Overloaded) else 2.0
            message = f"sidecar overloaded: {e}"
            await context.abort(grpc.StatusCode.UNAVAILABLE, message,
                                trailing_metadata=_unavailable_metadata(message, retry))
            raise  # abort() raises; this keeps the type checker informed

    async def _metrics_export(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        request = await self._parse(ExportMetricsServiceRequest, raw, context, "metrics")
        await self._consume("metrics", self._consumer.consume_metrics(request, len(raw)), context)
        if self._passthrough is not None:
            self._passthrough.offer("metrics", raw)
        self._metrics.requests.labels("metrics", "grpc", "ok").inc()
        out: bytes = ExportMetricsServiceResponse().SerializeToString()
        return out

    async def _logs(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        request = await self._parse(ExportLogsServiceRequest, raw, context, "logs")
        consume_logs = getattr(self._consumer, "consume_logs", None)
        if consume_logs is not None:  # evaluation, feedback and security event records
            await self._consume("logs", consume_logs(request, len(raw)), context)
        if self._passthrough is not None:
            self._passthrough.offer("logs", raw)
        self._metrics.requests.labels("logs", "grpc", "ok").inc()
        out: bytes = ExportLogsServiceResponse().SerializeToString()
        return out

    async def shutdown(self, grace_s: float = 2.0) -> None:
        """Stop accepting, let in-flight calls finish within ``grace_s``; idempotent."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
