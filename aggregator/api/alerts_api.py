"""``/api/v1/alerts``, ``/api/v1/alerts/{alert_id}``, ``.../ack`` and ``/api/v1/statistics/summary``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from aggregator.alerting.manager import AlertStateError
from aggregator.alerting.store import AlertQuery
from aggregator.api.actions import AlertActions
from aggregator.api.auth import request_who
from aggregator.api.params import ParamError, alert_filter, error_response, json_body, opt_int, opt_time
from sentinel.alerts import iso_time

__all__ = ["AlertsApi", "alert_page", "parse_alert_query"]

DEFAULT_SUMMARY_S = 24 * 3600


def parse_alert_query(query: Mapping[str, str]) -> AlertQuery:
    """``GET /api/v1/alerts``'s parameters; :class:`ParamError` names the one at fault."""
    flt = alert_filter(query)
    q = AlertQuery(start=opt_time(query, "start"), end=opt_time(query, "end"), severity=flt.severity,
                   service=flt.service, model=flt.model, anomaly_type=flt.anomaly_type, status=flt.status,
                   limit=opt_int(query, "limit", 100), offset=opt_int(query, "offset", 0))
    try:
        q.validate()
    except ValueError as e:
        raise ParamError(str(e)) from None
    return q


async def alert_page(actions: AlertActions, request: web.Request,
                     parse: Callable[[Mapping[str, str]], AlertQuery], key: str) -> web.Response:
    """A page of alerts under ``key`` (``alerts``, or the plan's ``anomalies``) with the total and the paging."""
    try:
        q = parse(request.query)
    except ParamError as e:
        return error_response(400, str(e))
    alerts, total = await asyncio.to_thread(actions.store.query, q)
    return web.json_response({key: [a.to_dict() for a in alerts], "total": total, "limit": q.limit,
                              "offset": q.offset})


class AlertsApi:
    def __init__(self, actions: AlertActions, clock: Callable[[], int],
                 precision: Callable[[int, int], dict[str, Any]] | None = None) -> None:
        self.actions = actions
        self.clock = clock
        self.precision = precision  # precision per anomaly type from operators' feedback, for the summary

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/alerts", self.list)
        app.router.add_get("/api/v1/alerts/{alert_id}", self.get)
        app.router.add_post("/api/v1/alerts/{alert_id}/ack", self.ack)
        app.router.add_get("/api/v1/statistics/summary", self.summary)

    async def list(self, request: web.Request) -> web.Response:
        return await alert_page(self.actions, request, parse_alert_query, "alerts")

    async def get(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        alert = await asyncio.to_thread(self.actions.store.get, alert_id)
        if alert is None:
            return error_response(404, f"alert_id: no alert {alert_id!r}")
        return web.json_response(alert.to_dict())

    async def ack(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        try:
            body = await json_body(request, optional=True)
            if not isinstance(body, dict):
                raise ParamError("body: must be a JSON object")
            by, comment = body.get("by") or request_who(request), body.get("comment", "")
            if not isinstance(by, str):
                raise ParamError("by: must be a string")
            if not isinstance(comment, str):
                raise ParamError("comment: must be a string")
        except ParamError as e:
            return error_response(400, str(e))
        try:
            alert = await asyncio.to_thread(self.actions.acknowledge, alert_id, by, comment)
        except AlertStateError as e:  # resolved: there is nothing left to acknowledge
            return error_response(409, str(e))
        if alert is None:
            return error_response(404, f"alert_id: no alert {alert_id!r}")
        return web.json_response(alert.to_dict())

    async def summary(self, request: web.Request) -> web.Response:
        """Counts of the alerts raised in [start, end) (default: the last 24 h); ``open`` = not resolved."""
        try:
            end = opt_time(request.query, "end") or self.clock()
            start = opt_time(request.query, "start")
            if start is None:
                start = end - DEFAULT_SUMMARY_S * 1_000_000_000
            if end < start:
                raise ParamError("end: must not be before start")
        except ParamError as e:
            return error_response(400, str(e))
        counts = await asyncio.to_thread(self.actions.store.summary, start, end)
        precision = await asyncio.to_thread(self.precision, start, end) if self.precision is not None else {}
        by_status: dict[str, int] = counts.get("by_status", {})
        return web.json_response({
            "start": iso_time(start), "end": iso_time(end), "total": counts.get("total", 0),
            "open": sum(n for status, n in by_status.items() if status != "resolved"),
            "by_severity": counts.get("by_severity", {}), "by_type": counts.get("by_type", {}),
            "by_status": by_status, "by_service": counts.get("by_service", {}), "precision_by_type": precision,
        })
