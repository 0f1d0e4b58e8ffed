"""``WS /ws/realtime``: the live alert events of ``GET /api/v1/stream`` over a WebSocket (the plan's name).

The same auth (a viewer token in ``Authorization: Bearer``, checked by the auth middleware on the
upgrade request), the same filters (``severity``, ``status``, ``service``, ``model``, ``type`` in the
query) and the same events, one JSON text message each: first ``{"event": "hello", "data":
{"subscribers": n}}``, then ``{"id": n, "event": "alert"|"update"|"resolved", "data": <Alert>}``
(ids per connection, from 1), preceded by ``{"event": "lagged", "data": {"dropped": n}}`` when
the client fell behind and events were dropped. WebSocket pings every ``keepalive_s`` keep proxies
from closing an idle connection and notice a vanished client. Messages from the client are ignored
(there is nothing to subscribe to beyond the query's filters); the socket closes when the hub
closes or the application shuts down (code 1001, going away).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from aggregator.api.params import error_response
from aggregator.api.stream import LiveFeed

__all__ = ["REALTIME_PATH", "Realtime"]

REALTIME_PATH = "/ws/realtime"
#: Clients send nothing that matters; a larger message is refused (the socket closes with 1009).
MAX_CLIENT_MESSAGE_BYTES = 4096


class Realtime(LiveFeed):
    """The WebSocket handler and the open sockets it closes at shutdown."""

    path = REALTIME_PATH

    async def handle(self, request: web.Request) -> web.StreamResponse:
        flt = self.opening(request)
        if isinstance(flt, web.Response):
            return flt
        ws = web.WebSocketResponse(heartbeat=self.keepalive_s, max_msg_size=MAX_CLIENT_MESSAGE_BYTES)
        if not ws.can_prepare(request).ok:
            return error_response(400, "Upgrade: this path needs a WebSocket upgrade request")
        await ws.prepare(request)
        sub = self.hub.subscribe(flt)
        stopping = asyncio.ensure_future(self._stopping.wait())
        receiving: asyncio.Future[Any] = asyncio.ensure_future(ws.receive())
        next_event: asyncio.Future[dict[str, Any] | None] | None = None
        going_away = False
        try:
            await ws.send_json({"event": "hello", "data": {"subscribers": self.hub.subscribers}})
            n = 0
            while True:
                if next_event is None:
                    next_event = asyncio.ensure_future(sub.get())
                done, _ = await asyncio.wait({next_event, receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    going_away = True
                    break
                if receiving in done:
                    msg = receiving.result()
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                        break
                    receiving = asyncio.ensure_future(ws.receive())  # anything else: ignored
                    continue
                item, next_event = next_event.result(), None
                if item is None:  # the hub closed
                    going_away = True
                    break
                if item.get("lagged"):
                    await ws.send_json({"event": "lagged", "data": {"dropped": item["lagged"]}})
                n += 1
                await ws.send_json({"id": n, "event": item["event"], "data": item["alert"]})
        except (ConnectionResetError, ConnectionError):
            pass  # the client went away
        finally:
            sub.unsubscribe()
            for fut in (next_event, stopping, receiving):
                if fut is not None:
                    fut.cancel()
        if not ws.closed:
            await ws.close(code=WSCloseCode.GOING_AWAY if going_away else WSCloseCode.OK)
        return ws
