"""``/api/v1/config``: the live settings, changed without a restart, versioned, rolled back (admin).

``GET /api/v1/config`` answers the running live settings by dotted key (the keys a reload applies:
every ``alerts.*``, ``confirm.*``, ``jwt.*`` and ``amqp.*`` setting, the detectors, the forest, the
webhooks and the tokens; secrets as ``sha256:…`` digests) and their version; ``PUT`` changes some
of them (``{"settings": {key: value}, "comment": "..."}``, a key dotted, a section as a map, or a
deprecated flat key as the YAML file takes them): validated whole first — an unknown key, a key
that needs a restart or a bad value is refused with 400 naming the key, and nothing changes — then
applied between two analysis batches and recorded as a new version (who, when, comment, diff).
``GET /api/v1/config/history`` lists the versions; ``POST /api/v1/config/rollback``
(``{"version": n}``) applies version n's settings as a new version. ``sentinel config`` is the CLI.
In a cluster a version made at one replica is applied at every replica (aggregator/README.md).
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from aiohttp import web

from aggregator.api.auth import request_role, request_who
from aggregator.api.params import ParamError, error_response, json_body, opt_int
from aggregator.config_versions import ConfigVersion, ConfigVersions
from sentinel.config import ConfigError

__all__ = ["ConfigApi", "LiveSettings"]


class LiveSettings(Protocol):
    """What the API needs from the aggregator (:class:`aggregator.app.Aggregator` has it)."""

    versions: ConfigVersions

    def live_settings(self) -> dict[str, Any]: ...

    async def put_settings(self, changes: dict[str, Any], who: str, comment: str,
                           role: str = "") -> ConfigVersion | None:
        """The new version (``None``: nothing changed); raises ``ConfigError`` naming the key at fault."""


def _comment(body: dict[str, Any]) -> str:
    comment = body.get("comment", "")
    if not isinstance(comment, str) or len(comment) > 1000:
        raise ParamError("comment: must be a string of at most 1000 characters")
    return comment


class ConfigApi:
    def __init__(self, live: LiveSettings | None) -> None:
        self.live = live

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/config", self.get)
        app.router.add_put("/api/v1/config", self.put)
        app.router.add_get("/api/v1/config/history", self.history)
        app.router.add_post("/api/v1/config/rollback", self.rollback)

    def _unavailable(self) -> web.Response:
        return error_response(404, "config: this process has no live configuration")

    async def _current(self) -> dict[str, Any]:
        assert self.live is not None
        latest = await asyncio.to_thread(self.live.versions.latest)
        return {"version": latest.version if latest else 0, "settings": self.live.live_settings()}

    async def get(self, request: web.Request) -> web.Response:
        if self.live is None:
            return self._unavailable()
        return web.json_response(await self._current())

    async def _apply(self, request: web.Request, changes: dict[str, Any], comment: str) -> web.Response:
        assert self.live is not None
        try:
            version = await self.live.put_settings(changes, request_who(request), comment,
                                                   request_role(request) or "")
        except ConfigError as e:
            return error_response(400, f"settings.{e}")
        doc = await self._current()
        return web.json_response(doc | {"diff": version.diff if version else {}, "changed": version is not None})

    async def put(self, request: web.Request) -> web.Response:
        if self.live is None:
            return self._unavailable()
        try:
            body = await json_body(request)
            if not isinstance(body, dict) or not isinstance(body.get("settings"), dict) or not body["settings"]:
                raise ParamError("settings: a JSON object of setting -> value is required")
            comment = _comment(body)
        except ParamError as e:
            return error_response(400, str(e))
        return await self._apply(request, body["settings"], comment)

    async def history(self, request: web.Request) -> web.Response:
        if self.live is None:
            return self._unavailable()
        try:
            versions = await asyncio.to_thread(self.live.versions.history, opt_int(request.query, "limit", 100))
        except ValueError as e:
            return error_response(400, str(e))
        return web.json_response({"versions": [v.to_dict() for v in versions]})

    async def rollback(self, request: web.Request) -> web.Response:
        if self.live is None:
            return self._unavailable()
        try:
            body = await json_body(request)
            if not isinstance(body, dict) or not isinstance(body.get("version"), int) or isinstance(
                    body.get("version"), bool):
                raise ParamError("version: the integer version to roll back to is required")
            comment = _comment(body)
        except ParamError as e:
            return error_response(400, str(e))
        target = await asyncio.to_thread(self.live.versions.get, body["version"])
        if target is None:
            return error_response(404, f"version: no configuration version {body['version']}")
        return await self._apply(request, target.settings, comment or f"rollback to version {target.version}")
