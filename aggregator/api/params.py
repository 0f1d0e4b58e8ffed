"""Query and body parsing shared by the API handlers: every error names the parameter at fault."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from aggregator.alerting.hub import AlertFilter
from aggregator.alerting.model import SEVERITIES, STATUSES, parse_time

__all__ = ["ParamError", "alert_filter", "error_response", "json_body", "opt_int", "opt_time", "split_list"]


class ParamError(ValueError):
    """A bad query parameter or body field; the message starts with its name (answered with 400)."""


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The API's error document, ``{"status": "error", "error": "..."}``."""
    return web.json_response({"status": "error", "error": message}, status=status,
                             headers=dict(headers) if headers else None)


def opt_time(query: Mapping[str, str], name: str) -> int | None:
    """``name`` as unix ns (RFC 3339 or unix seconds), or ``None`` when absent or empty."""
    text = query.get(name, "")
    if not text:
        return None
    try:
        return parse_time(text)
    except (ValueError, OverflowError) as e:
        raise ParamError(f"{name}: {e}") from None


def opt_int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise ParamError(f"{name}: {text!r} is not an integer") from None


def split_list(query: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """A comma list (``severity=critical,high``); every item must be one of ``allowed``."""
    items = tuple(s.strip() for s in query.get(name, "").split(",") if s.strip())
    for s in items:
        if s not in allowed:
            raise ParamError(f"{name}: {s!r} is not one of {', '.join(allowed)}")
    return items


def alert_filter(query: Mapping[str, str]) -> AlertFilter:
    """The alert filters shared by the list and the stream: severity, status, service, model, type."""
    return AlertFilter(severity=split_list(query, "severity", SEVERITIES),
                       status=split_list(query, "status", STATUSES),
                       service=query.get("service") or None, model=query.get("model") or None,
                       anomaly_type=query.get("type") or None)


async def json_body(request: web.Request, *, optional: bool = False) -> Any:
    """The request's JSON body; an empty body is ``{}`` when ``optional``."""
    text = await request.text() if request.can_read_body else ""
    if not text.strip():
        if optional:
            return {}
        raise ParamError("body: a JSON object is required")
    try:
        return json.loads(text)
    except ValueError as e:
        raise ParamError(f"body: not valid JSON: {e}") from None
