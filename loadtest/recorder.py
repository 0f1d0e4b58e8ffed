"""A small recording aggregator: accepts ``POST /v1/ingest`` and keeps what it decoded.

Stands in for the aggregator in tests, the demo and benchmarks until the real one exists. It
decodes each body with :func:`sentinel.wire.decode` (so a wire bug fails loudly), de-duplicates
by (``sidecar``, ``seq``) like the aggregator will, and can be told to refuse (``status``) or to
stall (``delay_s``) to exercise the sidecar's retries and backpressure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from aiohttp import web

from sentinel import wire

__all__ = ["RecordingAggregator"]


@dataclass
class RecordingAggregator:
    token: str = ""
    status: int = 200          # answer with this instead of 200 (e.g. 503) while set
    retry_after: str = ""
    delay_s: float = 0.0
    batches: list[wire.WireBatch] = field(default_factory=list)
    requests: int = 0
    duplicates: int = 0
    _seen: set[tuple[str, int]] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0
    _scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self._scheme}://127.0.0.1:{self.port}"

    @property
    def rows(self) -> int:
        return sum(b.batch.n for b in self.batches)

    async def start(self, port: int = 0, *, ssl_context: ssl.SSLContext | None = None) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/ingest", self._ingest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._scheme = "https" if ssl_context is not None else "http"

    async def _ingest(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401, text="bad token")
        if self.status != 200:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return web.Response(status=self.status, text="refused by test", headers=headers)
        body = await request.read()
        try:
            batch = wire.decode(body)
        except wire.WireFormatError as e:
            return web.Response(status=400, text=str(e))
        key = (batch.sidecar, batch.seq)
        if key in self._seen:
            self.duplicates += 1
        else:
            self._seen.add(key)
            self.batches.append(batch)
            self._arrived.set()
        return web.Response(status=200, text="ok")

    async def wait_rows(self, n: int, timeout_s: float = 10.0) -> int:
        """Wait until at least ``n`` rows have arrived; returns how many did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.rows < n:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout=min(remaining, 0.2))
        return self.rows

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
