"""What every LLM-Sentinel process shares: the ops endpoints and running until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["BODY_TIMEOUT_S", "IDLE_TIMEOUT_S", "Service", "add_ops_routes", "run_until_signalled", "version"]

log = logging.getLogger(__name__)

#: The HTTP listeners (``web.AppRunner(keepalive_timeout=IDLE_TIMEOUT_S)``) close a connection that has
#: not sent a complete request line and headers for this long: an idle keep-alive connection, or a
#: client that dribbles its headers (aiohttp's own default is an hour).
IDLE_TIMEOUT_S = 75.0
#: Once a request's headers are in, its body must arrive within this long; a client that dribbles it
#: is answered 408 and the connection closed (aiohttp itself waits forever).
BODY_TIMEOUT_S = 30.0


class Service(Protocol):
    """A component with ``start()`` and an idempotent ``shutdown()``."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...


@functools.cache
def version() -> str:
    """The installed package's version (``0+unknown`` when run from a tree that is not installed)."""
    # The ``Version:`` header of the distribution's METADATA on sys.path, read here rather than by
    # importlib.metadata: that module brings zipfile, csv and email's parsers, ~0.7 MiB a sidecar
    # would hold from its first /healthz on (issue 16). tests/test_service_version.py pins the answer to
    # importlib.metadata's.
    for entry in sys.path:
        for info in sorted(Path(entry or ".").glob("llm_sentinel-*.dist-info")):
            with contextlib.suppress(OSError), (info / "METADATA").open(encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Version:"):
                        return line.partition(":")[2].strip()
                    if not line.strip():
                        break  # the headers end at the first blank line
    return "0+unknown"


def add_ops_routes(app: web.Application, registry: CollectorRegistry, ready: Callable[[], str],
                   warnings: Callable[[], str] | None = None) -> None:
    """``/metrics`` (Prometheus), ``/healthz`` (alive), ``/health`` (the same as the plan's JSON,
    ``{"status": "healthy", "version": ...}``) and ``/readyz``: 200 when ``ready()`` returns ``""``,
    else 503 with the reason it returns; a 200 also carries what ``warnings()`` returns."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "version": version()})

    async def readyz(request: web.Request) -> web.Response:
        reason = ready()
        if reason:
            return web.Response(status=503, text=reason + "\n")
        warning = warnings() if warnings is not None else ""
        return web.Response(text="ready\n" + (warning + "\n" if warning else ""))

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/health", health)
    app.router.add_get("/readyz", readyz)


async def run_until_signalled(service: Service, start_errors: tuple[type[BaseException], ...], *,
                              on_reload: Callable[[], Awaitable[Any]] | None = None) -> int:
    """Start ``service``, run until SIGTERM or SIGINT, then shut it down gracefully.

    SIGHUP does not stop it: it logs ``reload requested`` and runs ``on_reload`` (a
    :class:`sentinel.reload.SettingsReloader`'s ``reload``), or says that nothing reloads without it.
    Returns the exit status: 0 after a graceful stop, 1 when start-up failed with one of
    ``start_errors`` (a port in use, a locked or unwritable directory), logged without a traceback.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[Any]] = set()

    def hangup() -> None:
        log.info("reload requested (SIGHUP)")
        if on_reload is None:
            log.warning("reload: nothing in this process reloads; restart it to apply changed settings")
            return
        task = asyncio.ensure_future(on_reload())
        reloads.add(task)  # a reference until it ends (the loop keeps only weak ones)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        try:
            await service.start()
        except start_errors as e:
            log.error("cannot start: %s", e)
            return 1
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        for task in list(reloads):
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
        await service.shutdown()
    return 0
