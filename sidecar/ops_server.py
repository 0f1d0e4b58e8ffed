"""The operations listener: ``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz`` (ready)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry

from sentinel.service import add_ops_routes

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
        add_ops_routes(app, self._registry, self._ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("metrics and health on %s:%d", self._host, self.port)

    async def shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
