"""Pass-through: every accepted OTLP request goes on, unchanged, to the team's own endpoint.

Pointing an app at the sidecar must never cut its telemetry off, and must never slow its export:
requests wait in a bounded queue (``upstream_queue``) and are sent by background workers; when the
queue is full the newest request is dropped and counted. Protobuf bodies are passed as the exact
bytes received; JSON bodies are re-encoded as protobuf (the same message).

Upstreams: ``grpc`` (``http://host:4317``; https for TLS) or ``http/protobuf`` (``http://host:4318``,
requests go to ``/v1/traces``, ``/v1/metrics``, ``/v1/logs``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import grpc
import grpc.aio

from sentinel.config import ConfigError, setting
from sidecar.metrics import SidecarMetrics

__all__ = ["GRPC_METHODS", "UPSTREAM_PROTOCOLS", "Passthrough", "PassthroughConfig", "Signal"]

log = logging.getLogger(__name__)

Signal = Literal["traces", "metrics", "logs"]

GRPC_METHODS: dict[str, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}

_RETRYABLE_GRPC = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED,
})
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
_ATTEMPTS = 3
_WORKERS = 2


UPSTREAM_PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_UPSTREAM_QUEUE = 256


@dataclass(frozen=True)
class PassthroughConfig:
    """The sidecar's ``upstream:`` section: where every received request is passed on, unchanged."""

    url: str = setting("", "the team's own OTLP endpoint; every received request is passed on to it unchanged "
                       "(empty: no pass-through)")
    protocol: str = setting("grpc", "grpc or http/protobuf")
    queue: int = setting(DEFAULT_UPSTREAM_QUEUE, "requests queued for the upstream before new ones are dropped "
                         "(counted)")
    timeout_s: float = setting(10.0, "timeout of one upstream export")

    def validate(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"upstream.url: {self.url!r} must start with http:// or https://")
        if self.protocol not in UPSTREAM_PROTOCOLS:
            raise ConfigError(f"upstream.protocol: {self.protocol!r} is not one of {', '.join(UPSTREAM_PROTOCOLS)}")
        if self.queue <= 0:
            raise ConfigError("upstream.queue: must be greater than 0")
        if not self.timeout_s > 0:
            raise ConfigError("upstream.timeout_s: must be greater than 0")


class Passthrough:
    def __init__(self, config: PassthroughConfig, metrics: SidecarMetrics) -> None:
        self._config = config
        self._metrics = metrics
        self._queue: asyncio.Queue[tuple[Signal, bytes]] = asyncio.Queue(maxsize=config.queue)
        self._workers: list[asyncio.Task[None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._client: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._config.protocol == "grpc":
            parts = urlsplit(self._config.url)
            target = parts.netloc or parts.path
            if parts.scheme == "https":
                self._channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
            else:
                self._channel = grpc.aio.insecure_channel(target)
        else:
            # aiohttp's client, already loaded for the receivers (no httpx in the sidecar: issue 16).
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._config.timeout_s),
                                                 trust_env=True)
        self._workers = [asyncio.create_task(self._work(), name=f"passthrough-{i}") for i in range(_WORKERS)]

    def offer(self, signal: Signal, body: bytes) -> None:
        """Queue one request for the upstream; never blocks."""
        try:
            self._queue.put_nowait((signal, body))
        except asyncio.QueueFull:
            self._metrics.upstream_requests.labels(signal, "dropped").inc()

    async def _work(self) -> None:
        while True:
            signal, body = await self._queue.get()
            try:
                outcome = await self._send(signal, body)
            except Exception:  # a worker must survive anything one request does
                log.exception("pass-through of %s failed", signal)
                outcome = "failed"
            self._metrics.upstream_requests.labels(signal, outcome).inc()
            self._queue.task_done()

    async def _send(self, signal: Signal, body: bytes) -> str:
        for attempt in range(_ATTEMPTS):
            retryable, detail = await self._send_once(signal, body)
            if detail == "":
                return "sent"
            if not retryable:
                log.warning("upstream refused %s export: %s", signal, detail)
                return "failed"
            if attempt + 1 < _ATTEMPTS:
                await asyncio.sleep(0.1 * 2**attempt * random.uniform(0.8, 1.2))
        log.warning("upstream %s export failed after %d attempts: %s", signal, _ATTEMPTS, detail)
        return "failed"

    async def _send_once(self, signal: Signal, body: bytes) -> tuple[bool, str]:
        """One attempt: ``(retryable, error detail)``; an empty detail means success."""
        if self._channel is not None:
            call = self._channel.unary_unary(GRPC_METHODS[signal], None, None)
            try:
                await call(body, timeout=self._config.timeout_s)
            except grpc.aio.AioRpcError as e:
                return e.code() in _RETRYABLE_GRPC, f"{e.code().name}: {e.details()}"
            return False, ""
        assert self._client is not None
        url = self._config.url.rstrip("/") + f"/v1/{signal}"
        try:
            async with self._client.post(url, data=body, headers={"Content-Type": "application/x-protobuf"}) as r:
                status = r.status
                await r.read()  # the whole answer, so the connection is reused
        except (aiohttp.ClientError, TimeoutError) as e:
            return True, f"{type(e).__name__}: {e}"
        if 200 <= status < 300:
            return False, ""
        return status in _RETRYABLE_HTTP, f"HTTP {status}"

    async def flush(self, timeout_s: float) -> None:
        """Wait (bounded) for queued requests to be sent."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout=timeout_s)
        except TimeoutError:
            log.warning("pass-through: %d requests not sent at shutdown", self._queue.qsize())

    async def shutdown(self) -> None:
        """Stop the workers and close connections; idempotent."""
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
        if self._client is not None:
            await self._client.close()
            self._client = None
