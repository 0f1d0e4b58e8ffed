"""Per-minute, per-key summaries of feature rows: what a sidecar in ``forward: summaries`` mode sends.

Instead of every row, such a sidecar sends, per event-time minute and key (every string column
that names *what* was called: service, namespace, region, operation, provider, request and
response model), the count of calls and errors, the calls per error type and finish reason, and per
metric the moments and DDSketch of its values (:class:`MetricSummary`: count, mean, sum of squared
deviations, min, max, and the DDSketch's bins) — exactly what the aggregator's baselines
keep (``aggregator/analysis/baselines/store.py``), so a summary merges into them as if the rows had come.

This module is the wire data model only (pure Python); building the sketches is the sidecar's
(``sidecar/summaries.py``), reading them the aggregator's (``aggregator/analysis/summaries.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEY_COLUMNS", "MAX_BINS", "MAX_CATEGORIES", "SUMMARY_METRICS", "MetricSummary", "Summary"]

#: The string columns that make a summary's key.
#: Not the pod: an edge node's many pods would multiply the summaries (the pod of a call is not kept).
KEY_COLUMNS: tuple[str, ...] = ("service", "namespace", "region", "operation", "provider", "request_model",
                                "response_model")
#: The metrics a summary carries (the float columns of a row).
SUMMARY_METRICS: tuple[str, ...] = ("latency_ms", "ttft_ms", "input_tokens", "output_tokens", "tokens_per_s",
                                    "cost_usd")
#: Distinct error types / finish reasons counted per summary; the rest count as ``(other)``.
MAX_CATEGORIES = 32
#: Bins of one metric's sketch (at 1 % accuracy, 4,096 bins span a factor of 10^35).
MAX_BINS = 4096
_MAX_TEXT = 256


def _num(m: Mapping[str, Any], key: str, where: str) -> float:
    v = m.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{where}{key} must be a number")
    return float(v)


def _count(m: Mapping[str, Any], key: str, where: str) -> int:
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**62:
        raise ValueError(f"{where}{key} must be a non-negative integer")
    return v


@dataclass(kw_only=True)
class MetricSummary:
    """One metric's values in one summary: moments (Chan et al.) and the bins of a DDSketch.

    The sketch is DDSketch's logarithmic mapping at ``accuracy`` (its relative accuracy): ``counts[i]``
    values fell in bin ``offset + i``, ``zeros`` were 0. Sent as small integers (most bins hold a
    few values: one msgpack byte each), a fraction of DDSketch's own protobuf message.
    """

    count: int
    mean: float
    m2: float
    min: float
    max: float
    accuracy: float
    offset: int
    counts: list[int]
    zeros: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max,
                "accuracy": self.accuracy, "offset": self.offset, "counts": self.counts, "zeros": self.zeros}

    @classmethod
    def from_wire(cls, m: Any, where: str) -> MetricSummary:
        if not isinstance(m, dict):
            raise ValueError(f"{where} is not a map")
        counts = m.get("counts")
        if not isinstance(counts, list) or len(counts) > MAX_BINS:
            raise ValueError(f"{where}.counts must be a list of at most {MAX_BINS} bin counts")
        if not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < 2**62 for c in counts):
            raise ValueError(f"{where}.counts must hold non-negative integers")
        offset = m.get("offset")
        if isinstance(offset, bool) or not isinstance(offset, int) or not -(2**31) <= offset < 2**31:
            raise ValueError(f"{where}.offset must be a 32-bit integer")
        accuracy = _num(m, "accuracy", f"{where}.")
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"{where}.accuracy must be between 0 and 1 (exclusive)")
        out = cls(count=_count(m, "count", f"{where}."), mean=_num(m, "mean", f"{where}."),
                  m2=_num(m, "m2", f"{where}."), min=_num(m, "min", f"{where}."), max=_num(m, "max", f"{where}."),
                  accuracy=accuracy, offset=offset, counts=counts,
                  zeros=_count({"zeros": m.get("zeros", 0)}, "zeros", f"{where}."))
        if out.count and not all(math.isfinite(x) and x >= 0 for x in (out.mean, out.m2, out.min, out.max)):
            raise ValueError(f"{where}: mean, m2, min and max must be finite and not negative")
        if sum(counts) + out.zeros != out.count:
            raise ValueError(f"{where}: the bin counts and zeros do not add up to count")
        return out


@dataclass(kw_only=True)
class Summary:
    """The calls of one key in one event-time window ``[start_unix_nano, start_unix_nano + width_s)``."""

    start_unix_nano: int
    width_s: int
    key: dict[str, str | None]
    #: Event times of the earliest and latest call counted (a partial minute covers only part of it).
    first_unix_nano: int = 0
    last_unix_nano: int = 0
    n: int
    errors: int
    error_types: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, MetricSummary] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"start_unix_nano": self.start_unix_nano, "width_s": self.width_s, "key": dict(self.key),
                "first_unix_nano": self.first_unix_nano, "last_unix_nano": self.last_unix_nano,
                "n": self.n, "errors": self.errors, "error_types": dict(self.error_types),
                "finish_reasons": dict(self.finish_reasons),
                "metrics": {k: v.to_wire() for k, v in self.metrics.items()}}

    @classmethod
    def from_wire(cls, m: Any, where: str = "summary") -> Summary:
        """Read a summary map; ``ValueError`` names the field at fault."""
        if not isinstance(m, dict):
            raise ValueError(f"{where} is not a map")
        start = m.get("start_unix_nano")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < 2**63:
            raise ValueError(f"{where}.start_unix_nano must be a non-negative 64-bit integer")
        width = m.get("width_s")
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 3600:
            raise ValueError(f"{where}.width_s must be an integer of 1 to 3600 seconds")
        end = start + width * 1_000_000_000
        first, last = m.get("first_unix_nano", start), m.get("last_unix_nano", end - 1)
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in (first, last)) \
                or not start <= first <= last < end:
            raise ValueError(f"{where}: first_unix_nano and last_unix_nano must lie in order within the window")
        key = m.get("key")
        if not isinstance(key, dict) or set(key) - set(KEY_COLUMNS):
            raise ValueError(f"{where}.key must be a map of {', '.join(KEY_COLUMNS)}")
        if not all(v is None or isinstance(v, str) for v in key.values()):
            raise ValueError(f"{where}.key values must be strings or null")
        n, errors = _count(m, "n", f"{where}."), _count(m, "errors", f"{where}.")
        if errors > n:
            raise ValueError(f"{where}.errors is more than n")
        cats: dict[str, dict[str, int]] = {}
        for name in ("error_types", "finish_reasons"):
            raw = m.get(name) or {}
            if not isinstance(raw, dict) or len(raw) > MAX_CATEGORIES + 1:
                raise ValueError(f"{where}.{name} must be a map of at most {MAX_CATEGORIES + 1} entries")
            if not all(isinstance(k, str) for k in raw):
                raise ValueError(f"{where}.{name} keys must be strings")
            cats[name] = {k[:_MAX_TEXT]: _count(raw, k, f"{where}.{name}.") for k in raw}
            if sum(cats[name].values()) > n:
                raise ValueError(f"{where}.{name} counts add up to more than n")
        raw_metrics = m.get("metrics") or {}
        if not isinstance(raw_metrics, dict) or set(raw_metrics) - set(SUMMARY_METRICS):
            raise ValueError(f"{where}.metrics must be a map of {', '.join(SUMMARY_METRICS)}")
        metrics = {k: MetricSummary.from_wire(v, f"{where}.metrics.{k}") for k, v in raw_metrics.items()}
        if any(ms.count > n for ms in metrics.values()):
            raise ValueError(f"{where}.metrics: a count is more than n")
        return cls(start_unix_nano=start, width_s=width, first_unix_nano=first, last_unix_nano=last,
                   key={k: (v[:_MAX_TEXT] if isinstance(v, str) else None) for k, v in key.items()},
                   n=n, errors=errors, error_types=cats["error_types"], finish_reasons=cats["finish_reasons"],
                   metrics=metrics)
