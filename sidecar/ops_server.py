"""The operations listener: ``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz`` (ready)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["OpsServer"]

log = logging.getLogger(__name__)


class OpsServer:
    """``ready()`` is asked on every ``/readyz``: 200 when it returns ``""``, else 503 with the reason."""

    def __init__(self, *, listen: str, registry: CollectorRegistry, ready: Callable[[], str]) -> None:
        self._host, _, port = listen.rpartition(":")
        self._port = int(port)
        self._registry = registry
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("metrics and health on %s:%d", self._host, self.port)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reason = self._ready()
        if reason:
            return web.Response(status=503, text=reason + "\n")
        return web.Response(text="ready\n")

    async def shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
