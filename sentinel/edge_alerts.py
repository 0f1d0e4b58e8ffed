"""Alerts a sidecar raised on its own (an edge node paging while the aggregator is away).

A sidecar with local alerting (:mod:`sidecar.local_alerts`) turns its local anomalies into alerts
and sends them to its own sinks. Each alert travels to the aggregator in the optional top-level
``edge_alerts`` field of a wire batch (:mod:`sentinel.wire`), in the same body — and so the same
spool record — as the anomalies it was raised on; the aggregator reconciles it with its own alerts
(``aggregator/alerting/edge_alerts.py``) and does not page again for what the edge already paged.

A record is sent once when the alert is raised (``paged`` true when a sink was being called) and
once more only if every sink then failed (``paged`` false, ``delivery`` ``"failed"``): the
aggregator then pages itself.

>>> a = EdgeAlert(alert_id="e1", anomaly_type="error_burst", severity="critical", service="chat",
...               model="gpt-4o", operation="chat", metric="error_rate", value=0.6, baseline=0.01,
...               threshold=0.2, sigma=float("nan"), method="error_rate", time_unix_nano=1, raised_unix_nano=2)
>>> EdgeAlert.from_wire(a.to_wire()).alert_id
'e1'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DELIVERY_STATES", "LOCAL_ANOMALY_TYPES", "MAX_TRACE_IDS", "EdgeAlert"]

#: The anomaly type (of the alert) of each metric a sidecar scores: one table for the sidecar's own
#: alerts and the aggregator's confirmation of its anomalies (``aggregator/analysis/confirm.py``).
LOCAL_ANOMALY_TYPES: dict[str, str] = {
    "latency_ms": "latency_spike",
    "ttft_ms": "latency_spike",
    "input_tokens": "token_spike",
    "output_tokens": "token_spike",
    "cost_usd": "cost_anomaly",
    "tokens_per_s": "throughput_drop",
    "error_rate": "error_burst",
}

#: ``pending`` (sinks being called), ``delivered`` (at least one took it), ``failed`` (none did),
#: ``none`` (no sink but the log line: nobody was paged).
DELIVERY_STATES = ("pending", "delivered", "failed", "none")
MAX_TRACE_IDS = 5
_MAX_TEXT = 256


def _text(m: Mapping[str, Any], key: str, *, optional: bool = False) -> str | None:
    v = m.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or (not optional and not v):
        raise ValueError(f"{key} must be a non-empty string")
    return v[:_MAX_TEXT]


def _float(m: Mapping[str, Any], key: str) -> float:
    v = m.get(key)
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{key} must be a number")
    return float(v)


def _int(m: Mapping[str, Any], key: str, default: int | None = None) -> int:
    v = m.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or not -(2**63) <= v < 2**63:
        raise ValueError(f"{key} must be a 64-bit integer")
    return v


@dataclass(kw_only=True)
class EdgeAlert:
    """One alert raised by a sidecar. Times are unix ns: ``time_unix_nano`` is the detection's event
    time, ``raised_unix_nano`` the sidecar's wall clock when it raised (and paged)."""

    alert_id: str
    anomaly_type: str
    severity: str
    service: str | None
    model: str | None
    operation: str | None
    metric: str
    value: float
    baseline: float
    threshold: float
    sigma: float
    method: str
    time_unix_nano: int
    raised_unix_nano: int
    count: int = 1
    trace_ids: list[str] = field(default_factory=list)
    paged: bool = False
    delivery: str = "none"
    sinks: list[str] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        def num(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "alert_id": self.alert_id, "anomaly_type": self.anomaly_type, "severity": self.severity,
            "service": self.service, "model": self.model, "operation": self.operation, "metric": self.metric,
            "value": num(self.value), "baseline": num(self.baseline), "threshold": num(self.threshold),
            "sigma": num(self.sigma), "method": self.method, "time_unix_nano": int(self.time_unix_nano),
            "raised_unix_nano": int(self.raised_unix_nano), "count": int(self.count),
            "trace_ids": list(self.trace_ids[:MAX_TRACE_IDS]), "paged": bool(self.paged),
            "delivery": self.delivery, "sinks": list(self.sinks),
        }

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> EdgeAlert:
        """Read a record; ``ValueError`` names the field at fault."""
        delivery = m.get("delivery", "none")
        if delivery not in DELIVERY_STATES:
            raise ValueError(f"delivery must be one of {', '.join(DELIVERY_STATES)}")
        trace_ids = m.get("trace_ids") or []
        sinks = m.get("sinks") or []
        if not isinstance(trace_ids, list) or not all(isinstance(t, str) for t in trace_ids):
            raise ValueError("trace_ids must be a list of strings")
        if not isinstance(sinks, list) or not all(isinstance(s, str) for s in sinks):
            raise ValueError("sinks must be a list of strings")
        paged = m.get("paged", False)
        if not isinstance(paged, bool):
            raise ValueError("paged must be true or false")
        count = _int(m, "count", 1)
        if count < 1:
            raise ValueError("count must be at least 1")
        return cls(
            alert_id=str(_text(m, "alert_id")), anomaly_type=str(_text(m, "anomaly_type")),
            severity=str(_text(m, "severity")), service=_text(m, "service", optional=True),
            model=_text(m, "model", optional=True), operation=_text(m, "operation", optional=True),
            metric=str(_text(m, "metric")), value=_float(m, "value"), baseline=_float(m, "baseline"),
            threshold=_float(m, "threshold"), sigma=_float(m, "sigma"), method=str(_text(m, "method")),
            time_unix_nano=_int(m, "time_unix_nano"), raised_unix_nano=_int(m, "raised_unix_nano"),
            count=count, trace_ids=[t[:_MAX_TEXT] for t in trace_ids[:MAX_TRACE_IDS]], paged=paged,
            delivery=str(delivery), sinks=[s[:_MAX_TEXT] for s in sinks[:8]],
        )
