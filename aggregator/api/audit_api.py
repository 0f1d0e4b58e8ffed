"""The audit trail of the API: every successful write recorded, and ``GET /api/v1/audit`` (admin).

:func:`audit_middleware` runs inside the auth middleware, so it knows the caller's role; after a
write (any method but GET/HEAD/OPTIONS on a route that needs a token, ingest excepted) answered
2xx it appends an :class:`aggregator.alerting.audit.AuditEntry`: the action named from the route
(:data:`ACTIONS`; any other write is ``<METHOD> <route>``, so a new route is audited without
being listed), the target id from the path or the created object, and a few fields of the answer
(:data:`DETAIL_FIELDS`). A failure to write the entry is logged; the change itself stands.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from aggregator.alerting.audit import AuditEntry, AuditLog
from aggregator.api.auth import INGEST_PATH, request_role, request_who, required_role, route_of
from aggregator.api.params import ParamError, error_response, opt_int, opt_time

__all__ = ["ACTIONS", "DETAIL_FIELDS", "AuditApi", "audit_middleware"]

log = logging.getLogger(__name__)

ACTIONS = {
    ("POST", "/api/v1/alerts/{alert_id}/ack"): "alert.acknowledge",
    ("POST", "/api/v1/alerts/{alert_id}/feedback"): "alert.feedback",
    ("POST", "/api/v1/silences"): "silence.create",
    ("POST", "/api/v1/silences/{silence_id}/expire"): "silence.expire",
    ("DELETE", "/api/v1/silences/{silence_id}"): "silence.delete",
    ("DELETE", "/api/v1/feedback/floors/{anomaly_type}"): "confidence_floor.reset",
    ("PUT", "/api/v1/config"): "config.apply",
    ("POST", "/api/v1/config/rollback"): "config.rollback",
    ("POST", "/api/v1/security/actions/{action_id}/approve"): "security_action.approve",
    ("POST", "/api/v1/security/actions/{action_id}/reject"): "security_action.reject",
}
#: What of the answer each action records (never an alert's whole document).
DETAIL_FIELDS = {
    "alert.acknowledge": ("acknowledged_by", "anomaly_type", "service_name"),
    "alert.feedback": ("verdict", "by", "comment", "anomaly_type"),
    "silence.create": ("matchers", "starts_at", "ends_at", "comment", "created_by"),
    "silence.expire": ("ends_at",),
    "confidence_floor.reset": ("floor",),
    "config.apply": ("version", "diff"),
    "config.rollback": ("version", "diff"),
    "security_action.approve": ("status", "subject_type", "subject", "reason", "suggested_duration_s", "error"),
    "security_action.reject": ("status", "subject_type", "subject", "reason"),
}
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


def _answer(response: web.StreamResponse) -> dict[str, Any]:
    body = getattr(response, "body", None)
    if not isinstance(body, bytes | bytearray):
        return {}
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}


def entry_for(request: web.Request, route: str, response: web.StreamResponse, at: int) -> AuditEntry:
    action = ACTIONS.get((request.method, route), f"{request.method} {route}")
    answer = _answer(response)
    target = next(iter(request.match_info.values()), "") or str(answer.get("id") or answer.get("alert_id") or "")
    detail = {k: answer[k] for k in DETAIL_FIELDS.get(action, ()) if k in answer}
    if action == "alert.acknowledge" and answer.get("context", {}).get("ack_comment"):
        detail["comment"] = answer["context"]["ack_comment"]
    return AuditEntry(at=at, who=request_who(request), role=request_role(request) or "", action=action,
                      target=target, detail=detail)


def audit_middleware(audit: AuditLog, clock: Callable[[], int]) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method in _READS or request.path == INGEST_PATH or not 200 <= response.status < 300:
            return response
        route = route_of(request)
        if route is None or required_role(request.method, route) in (None, "ingest"):
            return response  # public, or telemetry-like input (user feedback, security events): not changes
        try:
            await asyncio.to_thread(audit.append, entry_for(request, route, response, clock()))
        except Exception:  # the change happened; a full disk must not turn it into an error
            log.exception("could not write the audit entry of %s %s", request.method, route)
        return response

    return middleware


class AuditApi:
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/audit", self.list)

    async def list(self, request: web.Request) -> web.Response:
        """``?start=&end=&action=&who=&target=&limit=100&offset=``, newest first."""
        q = request.query
        try:
            kwargs: dict[str, Any] = {"start": opt_time(q, "start"), "end": opt_time(q, "end"),
                                      "action": q.get("action") or None, "who": q.get("who") or None,
                                      "target": q.get("target") or None, "limit": opt_int(q, "limit", 100),
                                      "offset": opt_int(q, "offset", 0)}
            entries, total = await asyncio.to_thread(lambda: self.audit.query(**kwargs))
        except (ParamError, ValueError) as e:
            return error_response(400, str(e))
        return web.json_response({"entries": [e.to_dict() for e in entries], "total": total,
                                  "limit": kwargs["limit"], "offset": kwargs["offset"]})
