"""``POST /api/v1/security-events`` (guardrail events in) and the action hook's ``/api/v1/security/actions``.

Security events: a JSON list, ``{"events": [...]}`` or one object, each in the plan's schema
(:mod:`sentinel.security_event`; at most ``security.max_events_per_request``), allowed to the ingest
tokens and every other role. The API key is hashed on arrival and the prompt dropped. Answers 202 with
how many were accepted and the detections they raised. Actions: ``GET /api/v1/security/actions``
(viewer; ``?status=pending``), ``POST .../{action_id}/approve`` and ``.../reject`` (operator; audited
as ``security_action.approve`` / ``.reject``) — an approved action is sent to the webhook at once, by
the replica that approved it; in a cluster every replica lists and decides every replica's actions
(PostgreSQL), and an action decided already is 409 naming its status and who decided it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from aiohttp import web

from aggregator.alerting.store import StoreError
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.security.actions import STATUSES
from aggregator.analysis.security.consumer import SecurityConsumer
from aggregator.api.auth import request_who
from aggregator.api.params import ParamError, error_response, json_body
from sentinel.security_event import SecurityEvent, SecurityEventError, parse_security_event

__all__ = ["SecurityApi", "parse_security_events"]


def parse_security_events(body: object, max_items: int, now_ns: int) -> list[SecurityEvent]:
    """The events of a request body; :class:`ParamError` names the item and field at fault."""
    if isinstance(body, dict) and "events" in body:
        items, where = body["events"], "events"
        if not isinstance(items, list):
            raise ParamError("events: must be a list")
    elif isinstance(body, list):
        items, where = body, "body"
    elif isinstance(body, dict):
        items, where = [body], ""
    else:
        raise ParamError("body: must be a JSON object or list")
    if len(items) > max_items:
        raise ParamError(f"{where or 'body'}: more than {max_items} events (security.max_events_per_request)")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(parse_security_event(item, default_time_ns=now_ns))
        except SecurityEventError as e:
            raise ParamError(f"{where}[{i}].{e}" if where else str(e)) from None
    return out


class SecurityApi:
    def __init__(self, service: SecurityConsumer, *,
                 submit: Callable[[list[SecurityEvent]], Sequence[Candidate]] | None = None) -> None:
        self.service = service
        # A cluster replica: events go to their partitions (their detections are raised there, not answered).
        self.submit = submit if submit is not None else service.submit

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/security-events", self.post_events)
        app.router.add_get("/api/v1/security/actions", self.list_actions)
        app.router.add_post("/api/v1/security/actions/{action_id}/approve", self.approve)
        app.router.add_post("/api/v1/security/actions/{action_id}/reject", self.reject)

    async def post_events(self, request: web.Request) -> web.Response:
        try:
            events = parse_security_events(await json_body(request), self.service.config.max_events_per_request,
                                           time.time_ns())
        except ParamError as e:
            return error_response(400, str(e))
        try:
            found = await asyncio.to_thread(self.submit, events)
        except ConnectionError as e:
            return error_response(503, str(e), headers={"Retry-After": "1"})
        return web.json_response({"status": "accepted", "accepted": len(events),
                                  "detections": [c.anomaly_type for c in found]}, status=202)

    async def list_actions(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None
        if status is not None and status not in STATUSES:
            return error_response(400, f"status: {status!r} is not one of {', '.join(STATUSES)}")
        actions = self.service.actions
        try:  # a cluster's are read from PostgreSQL: off the event loop
            listed = await asyncio.to_thread(actions.list, status)
        except StoreError as e:
            return error_response(503, str(e), headers={"Retry-After": "1"})
        return web.json_response({"enabled": actions.enabled, "require_approval": actions.require_approval,
                                  "actions": [a.to_dict() for a in listed]})

    async def approve(self, request: web.Request) -> web.Response:
        return await self._decide(request, True)

    async def reject(self, request: web.Request) -> web.Response:
        return await self._decide(request, False)

    async def _decide(self, request: web.Request, approve: bool) -> web.Response:
        action_id = request.match_info["action_id"]
        try:
            await json_body(request, optional=True)
            action = await asyncio.to_thread(self.service.actions.decide, action_id, approve, request_who(request))
        except ParamError as e:
            return error_response(400, str(e))
        except KeyError:
            return error_response(404, f"action_id: no action {action_id!r}")
        except ValueError as e:  # decided already (at this replica or another): names the action and who
            return error_response(409, str(e))
        except StoreError as e:
            return error_response(503, str(e), headers={"Retry-After": "1"})
        return web.json_response(action.to_dict())
