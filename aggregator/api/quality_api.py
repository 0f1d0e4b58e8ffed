"""``POST /api/v1/feedback`` (user feedback on LLM answers) and ``GET /api/v1/services/{service}/quality``.

Feedback: one JSON object or ``{"feedback": [...]}`` (at most ``quality.max_feedback_per_request``),
each with ``trace_id`` or ``span_id`` (hex, the LLM call's), ``score`` (a number in [0, 1]), ``rating``
(1-5) or ``label`` (``thumbs_up``, ``thumbs_down``, ``positive``, ...), optional ``user``, ``service``,
``model`` and ``timestamp`` (RFC 3339 or unix seconds; default now). ``comment`` is accepted and
never stored or forwarded. Allowed to the ingest tokens (and every other role). Answers 202 with how
many were accepted and how many joined a known call (:class:`aggregator.analysis.quality.consumer.QualityConsumer`).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web

from aggregator.analysis.quality.consumer import QualityConsumer
from aggregator.api.params import ParamError, error_response, json_body
from sentinel.quality import FEEDBACK_NAME, MAX_LABEL_CHARS, QualityEvent, normalise_name

__all__ = ["QualityApi", "parse_feedback_items"]

_MAX_ID = 64


def _opt_str(item: dict[str, Any], name: str, where: str, limit: int = 256) -> str | None:
    v = item.get(name)
    if v is None or v == "":
        return None
    if not isinstance(v, str):
        raise ParamError(f"{where}.{name}: must be a string")
    if len(v) > limit:
        raise ParamError(f"{where}.{name}: longer than {limit} characters")
    return v


def _time_ns(item: dict[str, Any], where: str, now_ns: int) -> int:
    ts = item.get("timestamp")
    if ts is None:
        return now_ns
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts) and ts >= 0:
        return int(ts * 1e9)
    if isinstance(ts, str):
        from datetime import datetime

        try:
            return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e9)
        except ValueError:
            pass
    raise ParamError(f"{where}.timestamp: must be RFC 3339 or unix seconds")


def parse_feedback_items(body: object, now_ns: int, max_items: int) -> list[QualityEvent]:
    """The feedback events of a request body; :class:`ParamError` names the item and field at fault."""
    listed = isinstance(body, dict) and "feedback" in body
    if isinstance(body, dict) and listed:
        items = body["feedback"]
        if not isinstance(items, list):
            raise ParamError("feedback: must be a list")
    elif isinstance(body, dict):
        items = [body]
    else:
        raise ParamError("body: must be a JSON object")
    if len(items) > max_items:
        raise ParamError(f"feedback: more than {max_items} items (quality.max_feedback_per_request)")
    out = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if listed else "body"
        if not isinstance(item, dict):
            raise ParamError(f"{where}: must be a JSON object")
        trace_id, span_id = _opt_str(item, "trace_id", where, _MAX_ID), _opt_str(item, "span_id", where, _MAX_ID)
        if trace_id is None and span_id is None:
            raise ParamError(f"{where}: trace_id or span_id is required")
        score = item.get("score")
        rating = item.get("rating")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or not 0.0 <= score <= 1.0):
            raise ParamError(f"{where}.score: must be a number in [0, 1]")
        if rating is not None:
            if isinstance(rating, bool) or not isinstance(rating, (int, float)) or not 1 <= rating <= 5:
                raise ParamError(f"{where}.rating: must be a number from 1 to 5")
            score = score if score is not None else (float(rating) - 1.0) / 4.0
        label = _opt_str(item, "label", where, MAX_LABEL_CHARS)
        if score is None and label is None:
            raise ParamError(f"{where}: score, rating or label is required")
        if "comment" in item and not isinstance(item["comment"], str):
            raise ParamError(f"{where}.comment: must be a string")
        # The comment is read only to check it; it is never stored or forwarded.
        out.append(QualityEvent(
            kind="feedback", name=FEEDBACK_NAME, time_unix_nano=_time_ns(item, where, now_ns),
            score=None if score is None else float(score), label=normalise_name(label) if label else None,
            service=_opt_str(item, "service", where), model=_opt_str(item, "model", where),
            trace_id=trace_id, span_id=span_id, user=_opt_str(item, "user", where), source="api"))
    return out


class QualityApi:
    def __init__(self, service: QualityConsumer, clock: Callable[[], int], *,
                 submit: Callable[[list[QualityEvent]], int] | None = None,
                 series: Callable[[str], list[dict[str, Any]]] | None = None) -> None:
        self.service = service
        self.clock = clock
        # A cluster replica: events go to their partitions, the series come from every partition's summary.
        self.submit = submit if submit is not None else service.submit
        self.series = series if series is not None else service.series

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/feedback", self.post_feedback)
        app.router.add_get("/api/v1/services/{service}/quality", self.get_quality)

    async def post_feedback(self, request: web.Request) -> web.Response:
        try:
            events = parse_feedback_items(await json_body(request), self.clock(),
                                          self.service.config.max_feedback_per_request)
        except ParamError as e:
            return error_response(400, str(e))
        try:
            joined = await asyncio.to_thread(self.submit, events)
        except ConnectionError as e:
            return error_response(503, str(e), headers={"Retry-After": "1"})
        return web.json_response({"status": "accepted", "accepted": len(events), "joined": joined}, status=202)

    async def get_quality(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        series = await asyncio.to_thread(self.series, service)
        return web.json_response({"service": service, "series": series})
