"""``GET /api/v1/stream``: live alert events as Server-Sent Events.

On connect, ``event: hello`` with ``data: {"subscribers": n}``; then one event per alert event of the
hub that passes the request's filters (those of the alert list): ``id: <n>`` (per connection, from
1), ``event: alert|update|resolved``, ``data: <Alert JSON>``. If the client fell too far behind and
the hub dropped events for it, an ``event: lagged`` with ``data: {"dropped": n}`` comes first (the
alert list has everything). A ``: keepalive`` comment every ``keepalive_s`` keeps proxies from
closing an idle stream, and is how a vanished client is noticed (the write fails).

The stream ends when the hub closes or the application shuts down (:meth:`Streams.stop` runs in
``on_shutdown``, before aiohttp waits for handlers), so open streams never hold up a shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from aggregator.alerting.hub import AlertFilter, AlertHub
from aggregator.api.params import ParamError, alert_filter, error_response

__all__ = ["DEFAULT_KEEPALIVE_S", "LiveFeed", "Streams", "sse_event"]

DEFAULT_KEEPALIVE_S = 15.0


def sse_event(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One SSE event; ``data`` as compact JSON on one line (JSON never holds a raw newline)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class LiveFeed:
    """What the live feeds share (this SSE stream, ``WS /ws/realtime``): the route, the filters, the
    open connections ended at shutdown. Subclasses set ``path`` and write ``handle``."""

    path = ""

    def __init__(self, hub: AlertHub, *, keepalive_s: float = DEFAULT_KEEPALIVE_S) -> None:
        self.hub = hub
        self.keepalive_s = keepalive_s
        self._stopping = asyncio.Event()

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(self.path, self.handle)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, app: web.Application) -> None:
        self.stop()

    def stop(self) -> None:
        """End every open connection (and refuse new ones)."""
        self._stopping.set()

    def opening(self, request: web.Request) -> AlertFilter | web.Response:
        """The request's filters, or the error to answer (a bad filter, or shutting down)."""
        try:
            flt = alert_filter(request.query)
        except ParamError as e:
            return error_response(400, str(e))
        if self._stopping.is_set():
            return error_response(503, "the aggregator is shutting down")
        return flt

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


class Streams(LiveFeed):
    """The stream handler and the open streams it ends at shutdown."""

    path = "/api/v1/stream"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        flt = self.opening(request)
        if isinstance(flt, web.Response):
            return flt
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        })
        sub = self.hub.subscribe(flt)
        stopping = asyncio.ensure_future(self._stopping.wait())
        next_event: asyncio.Future[dict[str, Any] | None] | None = None
        try:
            await response.prepare(request)
            await response.write(sse_event("hello", {"subscribers": self.hub.subscribers}))
            n = 0
            while True:
                if next_event is None:
                    next_event = asyncio.ensure_future(sub.get())
                waiting: set[asyncio.Future[Any]] = {next_event, stopping}
                done, _ = await asyncio.wait(waiting, timeout=self.keepalive_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    break
                if next_event not in done:
                    await response.write(b": keepalive\n\n")
                    continue
                item, next_event = next_event.result(), None
                if item is None:  # the hub closed
                    break
                if item.get("lagged"):
                    await response.write(sse_event("lagged", {"dropped": item["lagged"]}))
                n += 1
                await response.write(sse_event(item["event"], item["alert"], n))
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            sub.unsubscribe()
            for fut in (next_event, stopping):
                if fut is not None:
                    fut.cancel()
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
