"""Retry timing shared by every client of this project (forwarder, alert sinks).

As the OpenTelemetry SDK exporters do it: exponential backoff ``base_s * 2**attempt`` with ±20 %
jitter, capped, and raised to a server's ``Retry-After`` hint (up to the same cap).
"""

from __future__ import annotations

import random
from typing import Protocol

__all__ = ["backoff_s", "retry_after"]


class _HasHeaders(Protocol):
    """A response of either HTTP client in use (httpx's in the aggregator, aiohttp's in the sidecar)."""

    @property
    def headers(self) -> _Headers: ...


class _Headers(Protocol):
    def get(self, key: str, /) -> str | None: ...


def backoff_s(attempt: int, max_backoff_s: float, *, base_s: float = 0.1, retry_after_s: float | None = None) -> float:
    """Delay before retry number ``attempt`` (0-based).

    >>> 0.08 <= backoff_s(0, 30.0) <= 0.12
    True
    """
    # Jitter first, then the cap: the cap is a promise to the operator.
    delay = min(max_backoff_s, base_s * 2 ** min(attempt, 32) * random.uniform(0.8, 1.2))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, max_backoff_s))
    return float(delay)


def retry_after(response: _HasHeaders) -> float | None:
    """The response's ``Retry-After`` in seconds; ``None`` when absent or an HTTP date."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: the caller's own backoff it is
