"""``POST|GET /api/v1/alerts/{alert_id}/feedback``: operators tell whether an alert was right.

A verdict (``true_positive``, ``false_positive`` or ``unsure``) with an optional comment, given by an
operator (``by`` defaults to the caller's role), stored with who and when
(:class:`aggregator.alerting.feedback.FeedbackLog`), counted in
``sentinel_aggregator_alert_feedback_total{anomaly_type, verdict}`` and measured as precision per
anomaly type in ``GET /api/v1/statistics/summary`` (``precision_by_type``). With a
:class:`aggregator.alerting.precision_guard.PrecisionGuard`, each verdict may raise its type's
confidence floor; ``GET /api/v1/feedback/floors`` lists the raises and ``DELETE
/api/v1/feedback/floors/{anomaly_type}`` (admin) undoes one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from aggregator.alerting.feedback import MAX_COMMENT_CHARS, VERDICTS, Feedback, FeedbackLog
from aggregator.alerting.precision_guard import PrecisionGuard
from aggregator.api.actions import AlertActions
from aggregator.api.auth import request_who
from aggregator.api.params import ParamError, error_response, json_body

__all__ = ["FeedbackApi", "parse_feedback"]

log = logging.getLogger(__name__)


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
                 registry: CollectorRegistry | None, guard: PrecisionGuard | None = None) -> None:
        self.actions = actions
        self.log = log
        self.clock = clock
        self.guard = guard
        self.counter = Counter("sentinel_aggregator_alert_feedback", "Verdicts given on alerts through the API "
                               "(true_positive, false_positive, unsure), by anomaly type", ["anomaly_type", "verdict"],
                               registry=registry)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/alerts/{alert_id}/feedback", self.post)
        app.router.add_get("/api/v1/alerts/{alert_id}/feedback", self.get)
        app.router.add_get("/api/v1/feedback/floors", self.floors)
        app.router.add_delete("/api/v1/feedback/floors/{anomaly_type}", self.reset_floor)

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
        if self.guard is not None:
            try:
                await asyncio.to_thread(self.guard.observe, alert.anomaly_type)
            except Exception:  # the verdict is stored; tuning is a bonus that must not fail the request
                log.exception("could not evaluate the precision of %s", alert.anomaly_type)
        return web.json_response(fb.to_dict(), status=201)

    async def floors(self, request: web.Request) -> web.Response:
        """The confidence floors raised for low precision (:mod:`aggregator.alerting.precision_guard`)."""
        if self.guard is None:
            return web.json_response({"enabled": False, "min_precision": 0.0, "floors": []})
        raises = await asyncio.to_thread(self.guard.raises)
        return web.json_response({"enabled": self.guard.enabled, "min_precision": self.guard.config.min_precision,
                                  "floors": [r.to_dict() for _, r in sorted(raises.items())]})

    async def reset_floor(self, request: web.Request) -> web.Response:
        anomaly_type = request.match_info["anomaly_type"]
        undone = await asyncio.to_thread(self.guard.reset, anomaly_type) if self.guard is not None else None
        if undone is None:
            return error_response(404, f"anomaly_type: no raised confidence floor for {anomaly_type!r}")
        return web.json_response(undone.to_dict())

    async def get(self, request: web.Request) -> web.Response:
        alert_id = request.match_info["alert_id"]
        alert = await asyncio.to_thread(self.actions.store.get, alert_id)
        if alert is None:
            return error_response(404, f"alert_id: no alert {alert_id!r}")
        given = await asyncio.to_thread(self.log.of_alert, alert_id)
        return web.json_response({"alert_id": alert_id, "verdict": given[-1].verdict if given else None,
                                  "feedback": [f.to_dict() for f in given]})
