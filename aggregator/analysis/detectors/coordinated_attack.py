"""Coordinated attacks in guardrail security events: many from one source, or one signature from many users.

Fed :class:`sentinel.security_event.SecurityEvent` s in event time; windows end at the newest event
time seen, and an event older than that minus ``window_s`` is late (``late_events``, not counted:
a sidecar far behind the others must not re-fill an emptied window). Per source — a user, an API key
hash, an IP address — a sliding window of ``window_s``: more than ``max_events`` events in it emit one
``coordinated_attack`` candidate (``context.scope`` ``user`` / ``api_key_hash`` / ``ip_address``,
``scope_value``, the threat types seen); re-armed once the window holds at most half as many. Per
attack signature, the distinct users within the window: ``campaign_min_users`` or more emit one
``attack_campaign``. The candidates' confidence is the mean guardrail confidence of the window's events,
raised with their number (``1 − (1 − c)^(events / max_events)``, at most 0.99).

>>> from sentinel.security_event import parse_security_event
>>> det = CoordinatedAttackDetector(CoordinatedAttackConfig(max_events=2))
>>> evs = [parse_security_event({"threat_type": "jailbreak", "timestamp": t, "metadata": {"ip_address": "ip1"}})
...        for t in (1, 2, 3)]
>>> [(c.anomaly_type, c.context["scope"], c.context["scope_value"]) for c in det.update(evs)]
[('coordinated_attack', 'ip_address', 'ip1')]
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.validation import check_min, check_positive
from sentinel.security_event import SecurityEvent

__all__ = ["SCOPES", "CoordinatedAttackConfig", "CoordinatedAttackDetector"]

NAME = "security"
NS = 1_000_000_000
#: The source fields a burst is counted by.
SCOPES = ("user", "api_key_hash", "ip_address")


@dataclass(frozen=True, kw_only=True)
class CoordinatedAttackConfig:
    window_s: float = 300.0
    max_events: int = 10
    campaign_min_users: int = 5
    max_sources: int = 100_000

    def validate(self) -> CoordinatedAttackConfig:
        check_positive("security", "window_s", self.window_s)
        check_min("security", "max_events", self.max_events, 1)
        check_min("security", "campaign_min_users", self.campaign_min_users, 2)
        check_min("security", "max_sources", self.max_sources, 1)
        return self


class _Window:
    __slots__ = ("armed", "events")

    def __init__(self) -> None:
        self.events: deque[SecurityEvent] = deque()
        self.armed = True


def _insert(events: deque[SecurityEvent], e: SecurityEvent) -> None:
    """Append, keeping the window in time order (events of two sidecars arrive interleaved)."""
    events.append(e)
    i = len(events) - 1
    while i > 0 and events[i - 1].time_unix_nano > e.time_unix_nano:
        events[i - 1], events[i] = events[i], events[i - 1]
        i -= 1


class CoordinatedAttackDetector:
    """Bursts per source and campaigns per signature over a sliding event-time window."""

    def __init__(self, config: CoordinatedAttackConfig | None = None) -> None:
        self.config = (config or CoordinatedAttackConfig()).validate()
        self._sources: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._signatures: OrderedDict[str, _Window] = OrderedDict()
        # The newest event time seen (all sources): windows end there, so events from a sidecar that
        # lags the others by more than the window are late (dropped, counted) instead of re-filling a
        # window that already emptied and alerting on the same burst twice.
        self.watermark: int | None = None
        self.late_events = 0

    def _window(self, table: OrderedDict[Any, _Window], key: Any) -> _Window:
        w = table.get(key)
        if w is None:
            w = table[key] = _Window()
            if len(table) > self.config.max_sources:
                table.popitem(last=False)
        table.move_to_end(key)
        return w

    def _trim(self, w: _Window) -> None:
        assert self.watermark is not None
        horizon = self.watermark - int(self.config.window_s * NS)
        while w.events and w.events[0].time_unix_nano < horizon:
            w.events.popleft()

    def update(self, events: Sequence[SecurityEvent]) -> list[Candidate]:
        out: list[Candidate] = []
        c = self.config
        window_ns = int(c.window_s * NS)
        for e in sorted(events, key=lambda e: e.time_unix_nano):
            if self.watermark is not None and e.time_unix_nano < self.watermark - window_ns:
                self.late_events += 1
                continue
            self.watermark = e.time_unix_nano if self.watermark is None else max(self.watermark, e.time_unix_nano)
            for scope in SCOPES:
                value = getattr(e, scope)
                if value is None:
                    continue
                w = self._window(self._sources, (scope, value))
                _insert(w.events, e)
                self._trim(w)
                n = len(w.events)
                if n > c.max_events and w.armed:
                    w.armed = False
                    out.append(self._candidate("coordinated_attack", list(w.events), scope, value, n,
                                               float(c.max_events)))
                elif n <= c.max_events // 2:
                    w.armed = True
            if e.attack_signature is not None and e.user is not None:
                w = self._window(self._signatures, e.attack_signature)
                _insert(w.events, e)
                self._trim(w)
                users = {x.user for x in w.events}
                if len(users) >= c.campaign_min_users and w.armed:
                    w.armed = False
                    out.append(self._candidate("attack_campaign", list(w.events), "attack_signature",
                                               e.attack_signature, len(users), float(c.campaign_min_users)))
                elif len(users) < max(2, c.campaign_min_users // 2):
                    w.armed = True
        return out

    def _candidate(self, kind: str, events: list[SecurityEvent], scope: str, value: str, count: int,
                   threshold: float) -> Candidate:
        mean_conf = sum(e.confidence for e in events) / len(events)
        confidence = min(0.99, 1 - (1 - mean_conf) ** max(1.0, count / threshold))
        services = Counter(e.service for e in events if e.service is not None)
        service = services.most_common(1)[0][0] if services else None
        ctx: dict[str, Any] = {
            "scope": scope, "scope_value": value, "events": len(events),
            "threat_types": dict(Counter(e.threat_type for e in events)),
            "event_ids": [e.event_id for e in events[-5:]], "window": self.config.window_s,
            "services": sorted(services), "users": sorted({e.user for e in events if e.user})[:10],
        }
        for field in SCOPES:  # the user / key / IP when there is one (the action hook's subject)
            vals = {getattr(e, field) for e in events if getattr(e, field) is not None}
            if len(vals) == 1:
                ctx[field if field != "ip_address" else "ip"] = vals.pop()
        if "user" in ctx and scope != "user" and kind == "attack_campaign":
            del ctx["user"]
        return Candidate(
            anomaly_type=kind, service=service, model=None, detection_method="sliding_window_count",
            confidence=confidence, metric="security_events" if kind == "coordinated_attack" else "attack_users",
            value=float(count), baseline=0.0, threshold=threshold, deviation_sigma=math.nan,
            window_start=events[0].time_unix_nano, window_end=events[-1].time_unix_nano + 1, context=ctx)

    def to_state(self) -> dict[str, Any]:
        return {"detector": NAME, "version": 1, "watermark": self.watermark, "late_events": self.late_events,
                "sources": [[list(k), w.armed, [e.to_wire() for e in w.events]] for k, w in self._sources.items()],
                "signatures": [[k, w.armed, [e.to_wire() for e in w.events]] for k, w in self._signatures.items()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: CoordinatedAttackConfig | None = None
                   ) -> CoordinatedAttackDetector:
        if state.get("detector") != NAME or state.get("version") != 1:
            raise ValueError(f"not a {NAME} state (version 1)")
        det = cls(config)
        det.watermark, det.late_events = state.get("watermark"), int(state.get("late_events", 0))
        for k, armed, evs in state["sources"]:
            w = det._window(det._sources, tuple(k))
            w.armed, w.events = bool(armed), deque(SecurityEvent.from_wire(e) for e in evs)
        for k, armed, evs in state["signatures"]:
            w = det._window(det._signatures, k)
            w.armed, w.events = bool(armed), deque(SecurityEvent.from_wire(e) for e in evs)
        return det
