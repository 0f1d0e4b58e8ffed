"""The alert: its vocabulary and its document, shared by the aggregator, the sidecar's edge alerts and
the clients (``sentinel alerts``, the API's users) (DESIGN.md, 'Alert').

An :class:`Alert` is a plain dataclass; :meth:`Alert.to_dict` is the JSON document that is stored,
served by the API, streamed live and published to RabbitMQ and webhooks, and that an edge sidecar's
local sinks receive (sidecar/local_alerts.py), so it lives here, below both. The schema's fields
come first (``alert_id`` … ``runbook_url``); the lifecycle fields after them (``status``,
``count``, ``first_seen``, ``last_seen``, ``peak_value``, ``fingerprint``, …) are what the
aggregator's alert manager keeps up to date while the alert is open. One alert stands for a group of
series (aggregator/alerting/grouping.py): ``members`` (:class:`AlertMember`) is the per-model,
per-region or per-user breakdown, and ``notifications`` / ``notified_at`` / ``notify_due`` its
notifications.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MEMBER_STATUSES",
    "SEVERITIES",
    "SEVERITY_RANK",
    "STATUSES",
    "Alert",
    "AlertDetails",
    "AlertMember",
    "fingerprint",
    "iso_time",
    "parse_time",
]

#: Most severe first. ``incidents.<severity>`` is the RabbitMQ routing key.
SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low")
SEVERITY_RANK: dict[str, int] = {s: i for i, s in enumerate(SEVERITIES)}  # lower = more severe
#: ``open`` until acknowledged or resolved; ``acknowledged`` alerts still de-duplicate and resolve.
STATUSES: tuple[str, ...] = ("open", "acknowledged", "resolved")

#: Context keys that tell one series from another (beyond type, service, model and metric).
_SCOPE_KEYS = ("user", "api_key_hash", "region", "scope", "scope_value")


def iso_time(ns: int) -> str:
    """Unix nanoseconds as RFC 3339 UTC with milliseconds: ``2025-11-06T12:35:01.234Z``."""
    t = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


# Unix ns that fit a signed 64-bit integer (SQLite, numpy), with room for a window end of + 1.
_MIN_NS, _MAX_NS = -(2**63) + 1, 2**63 - 2


def parse_time(text: str) -> int:
    """RFC 3339 (``Z`` or an offset) or unix seconds as text, to unix nanoseconds.

    Raises ``ValueError`` naming the text when it is neither, or when it is outside what a signed
    64-bit count of nanoseconds holds (years 1678 to 2262).
    """
    try:
        ns = int(float(text) * 1e9)
    except OverflowError:  # inf
        raise ValueError(f"{text!r} is out of range") from None
    except ValueError:
        try:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is not an RFC 3339 time or unix seconds") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
        ns = int(t.timestamp() * 1e9)
    if not _MIN_NS <= ns <= _MAX_NS:
        raise ValueError(f"{text!r} is out of range")
    return ns


def fingerprint(anomaly_type: str, service: str | None, model: str | None, metric: str,
                context: dict[str, Any]) -> str:
    """A stable id of the series an alert is about: the same anomaly on the same series de-duplicates.

    The detection window is left out on purpose, so a spike that lasts several windows stays one
    alert whose ``count`` grows.
    """
    parts = [anomaly_type, service or "", model or "", metric]
    parts += [f"{k}={context[k]}" for k in _SCOPE_KEYS if context.get(k) not in (None, "")]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _num(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return float(x)


@dataclass(slots=True)
class AlertDetails:
    """The measured value against what was expected, in the units of ``metric``."""

    metric: str
    value: float | None
    baseline: float | None
    threshold: float | None
    deviation_sigma: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": _num(self.value), "baseline": _num(self.baseline),
                "threshold": _num(self.threshold), "deviation_sigma": _num(self.deviation_sigma)}


#: A member is ``firing`` while detections keep coming and ``resolved`` once its metric is back.
MEMBER_STATUSES: tuple[str, ...] = ("firing", "resolved")


@dataclass(slots=True)
class AlertMember:
    """One series of a grouped alert (one model, region or user): the breakdown inside the notification.

    ``key`` is the series' :func:`fingerprint`; de-duplication works on it, grouping on the group's.
    """

    key: str
    labels: dict[str, str]  # service_name, model, anomaly_type, severity, detection_method, region, user
    severity: str
    confidence: float
    details: AlertDetails
    count: int = 1
    first_seen: int = 0
    last_seen: int = 0
    peak_value: float | None = None
    status: str = "firing"
    resolved_at: int | None = None
    silenced_by: str | None = None  # the silence that matched when the member joined: left out of notifications
    notified: bool = False  # part of a notification already sent (or held back by a storm)
    trace_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "labels": dict(self.labels), "severity": self.severity,
                "confidence": round(float(self.confidence), 4), "details": self.details.to_dict(),
                "count": self.count, "first_seen": iso_time(self.first_seen) if self.first_seen else None,
                "last_seen": iso_time(self.last_seen) if self.last_seen else None,
                "peak_value": _num(self.peak_value), "status": self.status,
                "resolved_at": iso_time(self.resolved_at) if self.resolved_at else None,
                "silenced_by": self.silenced_by, "notified": self.notified, "trace_ids": list(self.trace_ids)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AlertMember:
        return cls(key=str(d["key"]), labels={str(k): str(v) for k, v in (d.get("labels") or {}).items()},
                   severity=str(d["severity"]), confidence=float(d.get("confidence") or 0.0),
                   details=AlertDetails(**d["details"]), count=int(d.get("count") or 1),
                   first_seen=parse_time(d["first_seen"]) if d.get("first_seen") else 0,
                   last_seen=parse_time(d["last_seen"]) if d.get("last_seen") else 0,
                   peak_value=d.get("peak_value"), status=str(d.get("status") or "firing"),
                   resolved_at=parse_time(d["resolved_at"]) if d.get("resolved_at") else None,
                   silenced_by=d.get("silenced_by"), notified=bool(d.get("notified")),
                   trace_ids=[str(t) for t in d.get("trace_ids") or ()])


@dataclass(slots=True)
class Alert:
    """One alert. Times are unix nanoseconds here and RFC 3339 strings in :meth:`to_dict`."""

    alert_id: str
    timestamp: int  # when the alert was raised (wall clock)
    severity: str
    anomaly_type: str
    service_name: str | None
    model: str | None
    detection_method: str
    confidence: float
    details: AlertDetails
    context: dict[str, Any] = field(default_factory=dict)
    root_cause: str | None = None
    remediation: list[str] = field(default_factory=list)
    related_alerts: list[str] = field(default_factory=list)
    runbook_url: str | None = None
    # Lifecycle, kept up to date by the alert manager.
    summary: str = ""
    fingerprint: str = ""
    status: str = "open"
    count: int = 1
    first_seen: int = 0
    last_seen: int = 0
    peak_value: float | None = None
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    resolved_at: int | None = None
    resolved_reason: str | None = None
    silenced_by: str | None = None  # the silence that matched every member: not sent to sinks
    storm_id: str | None = None  # its last notification fell in an alert storm: sent only inside its summary
    labels: dict[str, str] = field(default_factory=dict)
    # Grouping (one alert per group of series: aggregator/alerting/grouping.py).
    members: list[AlertMember] = field(default_factory=list)
    notifications: int = 0  # notifications sent to the sinks so far
    notified_at: int | None = None  # when the last one was
    notify_due: int | None = None  # when the next one is due (group_wait, group_interval, repeat_interval)

    @property
    def notify(self) -> bool:
        """Whether sinks are to be sent this alert (not silenced, not folded into a storm summary)."""
        return self.silenced_by is None and self.storm_id is None

    def member(self, key: str) -> AlertMember | None:
        return next((m for m in self.members if m.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        def t(ns: int | None) -> str | None:
            return iso_time(ns) if ns else None

        return {
            "alert_id": self.alert_id,
            "timestamp": iso_time(self.timestamp),
            "severity": self.severity,
            "anomaly_type": self.anomaly_type,
            "service_name": self.service_name,
            "model": self.model,
            "detection_method": self.detection_method,
            "confidence": round(float(self.confidence), 4),
            "details": self.details.to_dict(),
            "context": dict(self.context),
            "root_cause": self.root_cause,
            "remediation": list(self.remediation),
            "related_alerts": list(self.related_alerts),
            "runbook_url": self.runbook_url,
            "summary": self.summary,
            "fingerprint": self.fingerprint,
            "status": self.status,
            "count": self.count,
            "first_seen": t(self.first_seen),
            "last_seen": t(self.last_seen),
            "peak_value": _num(self.peak_value),
            "acknowledged_by": self.acknowledged_by,
            "acknowledged_at": t(self.acknowledged_at),
            "resolved_at": t(self.resolved_at),
            "resolved_reason": self.resolved_reason,
            "silenced_by": self.silenced_by,
            "storm_id": self.storm_id,
            "labels": dict(self.labels),
            "members": [m.to_dict() for m in self.members],
            "notifications": self.notifications,
            "notified_at": t(self.notified_at),
            "notify_due": t(self.notify_due),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        """The inverse of :meth:`to_dict` (how the store reads alerts back)."""
        def ns(text: str | None) -> int | None:
            return parse_time(text) if text else None

        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["details"] = AlertDetails(**d["details"])
        kw["members"] = [AlertMember.from_dict(m) for m in d.get("members") or ()]
        for key in ("timestamp", "first_seen", "last_seen"):
            kw[key] = ns(d.get(key)) or 0
        for key in ("acknowledged_at", "resolved_at", "notified_at", "notify_due"):
            kw[key] = ns(d.get(key))
        return cls(**kw)
