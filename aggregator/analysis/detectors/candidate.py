"""The detection candidate: what every aggregator detector emits and the alert manager consumes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ANOMALY_TYPES", "Candidate"]

#: The anomaly types the detectors of this package emit.
ANOMALY_TYPES: frozenset[str] = frozenset({
    "latency_spike", "token_spike", "cost_anomaly", "error_burst", "throughput_drop", "drift",
    "model_swap", "budget_exceeded", "budget_warning", "token_abuse", "expensive_prompt",
    "multivariate_outlier", "ttft_regression", "finish_length", "content_filter", "empty_answer",
    # quality (aggregator.analysis.quality.consumer) and security (aggregator.analysis.security.consumer)
    "quality_regression", "satisfaction_drop", "coordinated_attack", "attack_campaign", "security_correlation",
})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One detection, before de-duplication and alerting.

    ``value``, ``baseline`` and ``threshold`` are in the units of ``metric`` (e.g. USD per bucket,
    calls per minute, PSI); ``deviation_sigma`` is ``NaN`` where the method has no sigma. The window
    is in event time (unix ns, ``window_end`` exclusive). ``context`` holds a few example
    ``trace_ids`` and, where the key has them, ``user``, ``api_key_hash``, ``region`` and
    method-specific figures (e.g. the CUSUM statistic).
    """

    anomaly_type: str
    service: str | None
    model: str | None
    detection_method: str
    confidence: float
    metric: str
    value: float
    baseline: float
    threshold: float
    deviation_sigma: float
    window_start: int
    window_end: int
    context: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        """De-duplication key: the same anomaly of the same series in the same window."""
        scope = tuple(self.context.get(k) for k in ("user", "api_key_hash", "scope", "scope_value", "window"))
        return (self.anomaly_type, self.service, self.model, self.metric, self.window_start, *scope)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        """The inverse of :meth:`to_dict` (``None`` numbers become ``NaN``)."""
        def num(x: Any) -> float:
            return math.nan if x is None else float(x)

        return cls(anomaly_type=str(d["anomaly_type"]), service=d["service"], model=d["model"],
                   detection_method=str(d["detection_method"]), confidence=float(d["confidence"]),
                   metric=str(d["metric"]), value=num(d["value"]), baseline=num(d["baseline"]),
                   threshold=num(d["threshold"]), deviation_sigma=num(d["deviation_sigma"]),
                   window_start=int(d["window_start"]), window_end=int(d["window_end"]),
                   context=dict(d["context"]))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able map (``NaN`` becomes ``None``)."""
        def num(x: float) -> float | None:
            return None if math.isnan(x) else float(x)

        return {
            "anomaly_type": self.anomaly_type,
            "service": self.service,
            "model": self.model,
            "detection_method": self.detection_method,
            "confidence": float(self.confidence),
            "metric": self.metric,
            "value": num(self.value),
            "baseline": num(self.baseline),
            "threshold": num(self.threshold),
            "deviation_sigma": num(self.deviation_sigma),
            "window_start": int(self.window_start),
            "window_end": int(self.window_end),
            "context": dict(self.context),
        }
