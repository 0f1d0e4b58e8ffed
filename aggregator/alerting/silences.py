"""Silences: matchers over an alert's labels with an end time, as in Prometheus Alertmanager.

A silence mutes new alerts whose labels match all of its matchers while ``starts_at <= now <
ends_at``: they are stored and shown (with ``silenced_by``) but no sink is sent them. Labels are
``service_name``, ``model``, ``anomaly_type``, ``severity``, ``detection_method`` and, where the
detection has them, ``region`` and ``user``. Operators: ``=``, ``!=``, ``=~`` and ``!~`` (a
regular expression that must match the whole value, in RE2 syntax, matched in linear time:
:mod:`aggregator.alerting.safe_regex`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from aggregator.alerting.safe_regex import RegexError, compile_pattern, fullmatch
from sentinel.alerts import iso_time, parse_time

__all__ = ["MATCH_OPS", "Matcher", "Silence", "SilenceError"]

MATCH_OPS = ("=", "!=", "=~", "!~")
LABELS = ("service_name", "model", "anomaly_type", "severity", "detection_method", "region", "user")


class SilenceError(ValueError):
    """A silence or matcher that cannot be used; the message names the field."""


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    value: str
    op: str = "="

    def __post_init__(self) -> None:
        if self.name not in LABELS:
            raise SilenceError(f"matchers: unknown label {self.name!r} (one of {', '.join(LABELS)})")
        if self.op not in MATCH_OPS:
            raise SilenceError(f"matchers: unknown operator {self.op!r} (one of {', '.join(MATCH_OPS)})")
        if self.op in ("=~", "!~"):
            try:
                compile_pattern(self.value)
            except RegexError as e:
                raise SilenceError(f"matchers: {self.name}{self.op}{self.value!r} is not a valid regex: {e}") from None

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        hit = fullmatch(self.value, actual)
        return hit if self.op == "=~" else not hit

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "value": self.value, "op": self.op}


@dataclass(slots=True)
class Silence:
    matchers: list[Matcher]
    starts_at: int
    ends_at: int
    created_by: str = ""
    comment: str = ""
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: int = 0

    def active(self, now_ns: int) -> bool:
        return self.starts_at <= now_ns < self.ends_at

    def matches(self, labels: dict[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def to_dict(self, now_ns: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id, "matchers": [m.to_dict() for m in self.matchers],
            "starts_at": iso_time(self.starts_at), "ends_at": iso_time(self.ends_at),
            "created_by": self.created_by, "comment": self.comment,
            "created_at": iso_time(self.created_at) if self.created_at else None,
        }
        if now_ns is not None:
            d["state"] = ("active" if self.active(now_ns) else
                          "pending" if now_ns < self.starts_at else "expired")
        return d

    @classmethod
    def from_request(cls, body: Any, *, now_ns: int, created_by: str = "") -> Silence:
        """A silence from an API body; :class:`SilenceError` names what is wrong.

        ``{"matchers": [{"name": "service_name", "value": "chat", "op": "="}], "ends_at": "…",
        "starts_at": "…" (default now), "comment": "…"}``; ``duration`` (seconds) may replace ``ends_at``.
        """
        if not isinstance(body, dict):
            raise SilenceError("body: must be a JSON object")
        raw = body.get("matchers")
        if not isinstance(raw, list) or not raw:
            raise SilenceError("matchers: must be a non-empty list")
        matchers = []
        for m in raw:
            if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not isinstance(m.get("value"), str):
                raise SilenceError("matchers: each must be an object with string 'name' and 'value'")
            matchers.append(Matcher(m["name"], m["value"], str(m.get("op", "="))))
        try:
            starts = parse_time(str(body["starts_at"])) if body.get("starts_at") else now_ns
            if body.get("ends_at"):
                ends = parse_time(str(body["ends_at"]))
            elif body.get("duration") is not None:
                duration = body["duration"]
                if isinstance(duration, bool) or not isinstance(duration, int | float | str):
                    raise SilenceError("duration: must be a number of seconds")
                ends = starts + int(float(duration) * 1e9)
            else:
                raise SilenceError("ends_at: required (or duration in seconds)")
        except (ValueError, OverflowError) as e:
            if isinstance(e, SilenceError):
                raise
            raise SilenceError(f"starts_at/ends_at: {e}") from None
        if ends > 2**63 - 1:
            raise SilenceError("ends_at: out of range")
        if ends <= starts:
            raise SilenceError("ends_at: must be after starts_at")
        comment = body.get("comment", "")
        if not isinstance(comment, str):
            raise SilenceError("comment: must be a string")
        return cls(matchers=matchers, starts_at=starts, ends_at=ends, comment=comment,
                   created_by=str(body.get("created_by") or created_by), created_at=now_ns)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Silence:
        return cls(matchers=[Matcher(m["name"], m["value"], m.get("op", "=")) for m in d["matchers"]],
                   starts_at=parse_time(d["starts_at"]), ends_at=parse_time(d["ends_at"]),
                   created_by=d.get("created_by", ""), comment=d.get("comment", ""), id=d["id"],
                   created_at=parse_time(d["created_at"]) if d.get("created_at") else 0)
