"""Query and body parsing shared by the API handlers: every error names the parameter at fault."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from aggregator.alerting.hub import AlertFilter
from sentinel import service
from sentinel.alerts import SEVERITIES, STATUSES, parse_time

__all__ = ["MAX_JSON_BODY_BYTES", "ParamError", "alert_filter", "error_response", "json_body", "opt_int", "opt_time",
           "split_list"]

#: Largest JSON body the API reads: an acknowledgement or a silence is a few hundred bytes.
MAX_JSON_BODY_BYTES = 1024 * 1024


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


#: Integers the store can hold (SQLite's signed 64 bits): beyond them a query would overflow (500).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def opt_int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ParamError(f"{name}: {text!r} is not an integer") from None
    if not INT64_MIN <= value <= INT64_MAX:
        raise ParamError(f"{name}: {text} is out of range (at most {INT64_MAX})")
    return value


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


def _error_exception(cls: type[web.HTTPException], message: str, **kwargs: Any) -> web.HTTPException:
    return cls(text=json.dumps({"status": "error", "error": message}), content_type="application/json", **kwargs)


async def _read_bounded(request: web.Request) -> bytes:
    """The body, at most :data:`MAX_JSON_BODY_BYTES` (413 beyond), within ``BODY_TIMEOUT_S`` (408 beyond)."""
    too_large = f"body: larger than {MAX_JSON_BODY_BYTES} bytes"
    if request.content_length is not None and request.content_length > MAX_JSON_BODY_BYTES:
        raise _error_exception(web.HTTPRequestEntityTooLarge, too_large, max_size=MAX_JSON_BODY_BYTES)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(service.BODY_TIMEOUT_S):
            while chunk := await request.content.read(64 * 1024):
                size += len(chunk)
                if size > MAX_JSON_BODY_BYTES:
                    raise _error_exception(web.HTTPRequestEntityTooLarge, too_large, max_size=MAX_JSON_BODY_BYTES)
                chunks.append(chunk)
    except TimeoutError:
        raise _error_exception(web.HTTPRequestTimeout, f"body: not received within {service.BODY_TIMEOUT_S:g} s",
                               headers={"Connection": "close"}) from None
    return b"".join(chunks)


async def json_body(request: web.Request, *, optional: bool = False) -> Any:
    """The request's JSON body; an empty body is ``{}`` when ``optional``.

    Bounded: more than :data:`MAX_JSON_BODY_BYTES` is answered 413, a body that does not arrive within
    ``sentinel.service.BODY_TIMEOUT_S`` 408, a compressed one 415 (as the API's JSON error document).
    """
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding != "identity":  # the listener does not inflate bodies (aggregator/app.py)
        raise _error_exception(web.HTTPUnsupportedMediaType, f"body: Content-Encoding {encoding!r} is not supported")
    raw = await _read_bounded(request) if request.can_read_body else b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamError(f"body: not UTF-8: {e}") from None
    if not text.strip():
        if optional:
            return {}
        raise ParamError("body: a JSON object is required")
    try:
        return json.loads(text)
    except RecursionError:
        raise ParamError("body: not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise ParamError(f"body: not valid JSON: {e}") from None
