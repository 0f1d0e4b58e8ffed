"""Per-minute, per-key summaries of feature rows: what a sidecar in ``forward: summaries`` mode sends.

Instead of every row, such a sidecar sends, per event-time minute and key (every string column
that names *what* was called: service, namespace, pod, region, operation, provider, request and
response model), the count of calls and errors, the calls per error type and finish reason, and per
metric the moments and DDSketch of its values (:class:`MetricSummary`: count, mean, sum of squared
deviations, min, max, and DDSketch's protobuf message) — exactly what the aggregator's baselines
keep (``aggregator/baselines.py``), so a summary merges into them as if the rows had come.

This module is the wire data model only (pure Python); building the sketches is the sidecar's
(``sidecar/summaries.py``), reading them the aggregator's (``aggregator/summaries.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KEY_COLUMNS", "MAX_CATEGORIES", "SUMMARY_METRICS", "MetricSummary", "Summary"]

#: The string columns that make a summary's key.
KEY_COLUMNS: tuple[str, ...] = ("service", "namespace", "pod", "region", "operation", "provider", "request_model",
                                "response_model")
#: The metrics a summary carries (the float columns of a row).
SUMMARY_METRICS: tuple[str, ...] = ("latency_ms", "ttft_ms", "input_tokens", "output_tokens", "tokens_per_s",
                                    "cost_usd")
#: Distinct error types / finish reasons counted per summary; the rest count as ``(other)``.
MAX_CATEGORIES = 32
_MAX_SKETCH_BYTES = 64 * 1024
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
    """One metric's values in one summary: moments (Chan et al.) and a DDSketch protobuf message."""

    count: int
    mean: float
    m2: float
    min: float
    max: float
    sketch: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "min": self.min, "max": self.max,
                "sketch": self.sketch}

    @classmethod
    def from_wire(cls, m: Any, where: str) -> MetricSummary:
        if not isinstance(m, dict):
            raise ValueError(f"{where} is not a map")
        sketch = m.get("sketch")
        if not isinstance(sketch, bytes) or len(sketch) > _MAX_SKETCH_BYTES:
            raise ValueError(f"{where}.sketch must be bytes (at most {_MAX_SKETCH_BYTES})")
        out = cls(count=_count(m, "count", f"{where}."), mean=_num(m, "mean", f"{where}."),
                  m2=_num(m, "m2", f"{where}."), min=_num(m, "min", f"{where}."), max=_num(m, "max", f"{where}."),
                  sketch=sketch)
        if out.count and not all(math.isfinite(x) and x >= 0 for x in (out.mean, out.m2, out.min, out.max)):
            raise ValueError(f"{where}: mean, m2, min and max must be finite and not negative")
        return out


@dataclass(kw_only=True)
class Summary:
    """The calls of one key in one event-time window ``[start_unix_nano, start_unix_nano + width_s)``."""

    start_unix_nano: int
    width_s: int
    key: dict[str, str | None]
    n: int
    errors: int
    error_types: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, MetricSummary] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"start_unix_nano": self.start_unix_nano, "width_s": self.width_s, "key": dict(self.key),
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
        return cls(start_unix_nano=start, width_s=width,
                   key={k: (v[:_MAX_TEXT] if isinstance(v, str) else None) for k, v in key.items()},
                   n=n, errors=errors, error_types=cats["error_types"], finish_reasons=cats["finish_reasons"],
                   metrics=metrics)
