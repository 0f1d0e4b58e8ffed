"""``POST|GET /api/v1/alerts/{alert_id}/feedback``: operators tell whether an alert was right.

A verdict (``true_positive``, ``false_positive`` or ``unsure``) with an optional comment, given by an
operator (``by`` defaults to the caller's role), stored with who and when
(:class:`aggregator.alerting.feedback.FeedbackLog`), counted in
``sentinel_aggregator_alert_feedback_total{anomaly_type, verdict}`` and measured as precision per
anomaly type in ``GET /api/v1/statistics/summary`` (``precision_by_type``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from aggregator.alerting.feedback import MAX_COMMENT_CHARS, VERDICTS, Feedback, FeedbackLog
from aggregator.api.actions import AlertActions
from aggregator.api.auth import request_who
from aggregator.api.params import ParamError, error_response, json_body

__all__ = ["FeedbackApi", "parse_feedback"]


def parse_feedback(body: object, who: str) -> tuple[str, str, str]:
    """(verdict, by, comment) from the request body; :class:`ParamError` names the field at fault."""
    if not isinstance(body, dict):
        raise ParamError("body: must be a JSON object")
    verdict = body.get("verdict")
    if verdict not in VERDICTS:
        raise ParamError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
    by, comment = body.get("by") or who, body.get("comment", "")
    if not isinstance(by, str):
        raise ParamError("by: must be a string")
    if not isinstance(comment, str):
        raise ParamError("comment: must be a string")
    if len(comment) > MAX_COMMENT_CHARS:
        raise ParamError(f"comment: longer than {MAX_COMMENT_CHARS} characters")
    return str(verdict), by, comment


class FeedbackApi:
    def __init__(self, actions: AlertActions, log: FeedbackLog, clock: Callable[[], int],
                 registry: CollectorRegistry | None) -> None:
        self.actions = actions
        self.log = log
        self.clock = clock
        self.counter = Counter("sentinel_aggregator_alert_feedback", "Verdicts given on alerts through the API "
                               "(true_positive, false_positive, unsure), by anomaly type", ["anomaly_type", "verdict"],
                               registry=registry)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/alerts/{alert_id}/feedback", self.post)
        app.router.add_get("/api/v1/alerts/{alert_id}/feedback", self.get)

    async def post(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        try:
            verdict, by, comment = parse_feedback(await json_body(request), request_who(request))
        except ParamError as e:
            return error_response(400, str(e))
        alert = await asyncio.to_thread(self.actions.store.get, alert_id)
        if alert is None:
            return error_response(404, f"alert_id: no alert {alert_id!r}")
        fb = Feedback(alert_id, alert.anomaly_type, alert.timestamp, verdict, by, self.clock(), comment)
        await asyncio.to_thread(self.log.add, fb)
        self.counter.labels(alert.anomaly_type, verdict).inc()
        return web.json_response(fb.to_dict(), status=201)

    async def get(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        alert = await asyncio.to_thread(self.actions.store.get, alert_id)
        if alert is None:
            return error_response(404, f"alert_id: no alert {alert_id!r}")
        given = await asyncio.to_thread(self.log.of_alert, alert_id)
        return web.json_response({"alert_id": alert_id, "verdict": given[-1].verdict if given else None,
                                  "feedback": [f.to_dict() for f in given]})
