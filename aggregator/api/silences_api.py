"""``/api/v1/silences``: list, create, get, delete and expire (matchers over alert labels, with an end)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from aggregator.alerting.silences import Silence, SilenceError
from aggregator.api.actions import AlertActions
from aggregator.api.auth import request_who
from aggregator.api.params import ParamError, error_response, json_body, split_list

__all__ = ["STATES", "SilencesApi"]

STATES: tuple[str, ...] = ("active", "pending", "expired")


class SilencesApi:
    def __init__(self, actions: AlertActions, clock: Callable[[], int]) -> None:
        self.actions = actions
        self.clock = clock

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/silences", self.list)
        app.router.add_post("/api/v1/silences", self.create)
        app.router.add_get("/api/v1/silences/{silence_id}", self.get)
        app.router.add_delete("/api/v1/silences/{silence_id}", self.delete)
        app.router.add_post("/api/v1/silences/{silence_id}/expire", self.expire)

    async def list(self, request: web.Request) -> web.Response:
        """``?state=active,pending`` (default: every state), in order of start."""
        try:
            states = split_list(request.query, "state", STATES)
        except ParamError as e:
            return error_response(400, str(e))
        silences = await asyncio.to_thread(self.actions.store.silences)
        now = self.clock()
        docs = [s.to_dict(now) for s in silences]
        return web.json_response({"silences": [d for d in docs if not states or d["state"] in states]})

    async def create(self, request: web.Request) -> web.Response:
        now = self.clock()
        try:
            body = await json_body(request)
            silence = Silence.from_request(body, now_ns=now, created_by=request_who(request))
        except (ParamError, SilenceError) as e:
            return error_response(400, str(e))
        silence = await asyncio.to_thread(self.actions.add_silence, silence)
        return web.json_response(silence.to_dict(now), status=201)

    async def get(self, request: web.Request) -> web.Response:
        silence_id = request.match_info["silence_id"]
        silence = await asyncio.to_thread(self.actions.store.get_silence, silence_id)
        if silence is None:
            return error_response(404, f"silence_id: no silence {silence_id!r}")
        return web.json_response(silence.to_dict(self.clock()))

    async def delete(self, request: web.Request) -> web.Response:
        silence_id = request.match_info["silence_id"]
        if not await asyncio.to_thread(self.actions.delete_silence, silence_id):
            return error_response(404, f"silence_id: no silence {silence_id!r}")
        return web.json_response({"status": "ok"})

    async def expire(self, request: web.Request) -> web.Response:
        silence_id = request.match_info["silence_id"]
        silence = await asyncio.to_thread(self.actions.expire_silence, silence_id)
        if silence is None:
            return error_response(404, f"silence_id: no silence {silence_id!r}")
        return web.json_response(silence.to_dict(self.clock()))
