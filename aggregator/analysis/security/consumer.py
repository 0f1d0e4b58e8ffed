"""Security signals in the aggregator: guardrail events in, coordinated attacks and correlations out.

Security events (:mod:`sentinel.security_event`) arrive three ways — in sidecar batches (span events and
log records named ``security.event`` / ``gen_ai.guardrail.*``), ``POST /api/v1/security-events``, and
a RabbitMQ queue bound to the ``security.events`` exchange (:mod:`aggregator.ingest.security_amqp`) — and go
through :meth:`SecurityConsumer.submit` (a batch's through :meth:`~SecurityConsumer.consume`):

- :class:`aggregator.analysis.detectors.coordinated_attack.CoordinatedAttackDetector` finds bursts from one user,
  API key or IP (``coordinated_attack``) and one signature across many users (``attack_campaign``);
- behavioural correlation: a token or cost anomaly of a user (``correlated_types``: ``token_abuse``,
  ``cost_anomaly``, ``token_spike``, seen through :meth:`observe_candidates`) and security events of the
  same user within ``correlation_window_s`` raise one ``security_correlation`` whose confidence
  combines both, ``1 − (1 − guardrail) · (1 − anomaly)`` (the plan: a guardrail's 0.6–0.8 with a cost
  anomaly's → above 0.9), whichever of the two came first;
- each alert carries the service, so the alert manager relates it to the service's other alerts;
- the action hook (:mod:`aggregator.analysis.security.actions`) turns attacks into block requests for a webhook,
  after an operator's approval when ``require_approval``.

Settings (YAML ``security:``): :class:`SecurityConfig`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.coordinated_attack import CoordinatedAttackConfig, CoordinatedAttackDetector
from aggregator.analysis.security.action_store import ActionStore
from aggregator.analysis.security.actions import ActionHook
from aggregator.analysis.state import JsonStateFile
from sentinel.config import ConfigError, load_map
from sentinel.security_event import SecurityEvent
from sentinel.wire import WireBatch

__all__ = ["SecurityConfig", "SecurityConsumer", "parse_security_settings"]

log = logging.getLogger(__name__)

FILE_NAME = "security.json"
FORMAT_VERSION = 1
NS = 1_000_000_000


@dataclass(frozen=True, kw_only=True)
class SecurityConfig:
    """Settings of ``security``."""

    enabled: bool = True
    window_s: float = 300.0  # the coordinated-attack window
    max_events: int = 10  # more than this many events from one user, key or IP in the window is an attack
    campaign_min_users: int = 5  # distinct users of one attack signature in the window
    correlation_window_s: float = 600.0  # security events and a token anomaly of one user this close
    correlated_types: tuple[str, ...] = ("token_abuse", "cost_anomaly", "token_spike")
    max_users: int = 100_000  # users remembered for correlation
    max_events_per_request: int = 1000  # items in one POST /api/v1/security-events
    amqp_url: str = ""  # RabbitMQ to consume security events from (empty: off)
    amqp_exchange: str = "security.events"
    amqp_queue: str = "sentinel.security-events"
    amqp_binding_key: str = "#"
    action_webhook_url: str = ""  # where approved block requests go (empty: no action hook)
    require_approval: bool = True
    action_duration_s: float = 3600.0  # suggested block duration
    action_timeout_s: float = 5.0
    max_actions: int = 1000

    def validate(self) -> SecurityConfig:
        self.detector_config().validate()
        for name in ("correlation_window_s", "action_duration_s", "action_timeout_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"security.{name}: must be a number greater than 0")
        for name in ("max_users", "max_events_per_request", "max_actions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"security.{name}: must be an integer at least 1")
        if self.amqp_url and not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise ConfigError("security.amqp_url: must start with amqp:// or amqps://")
        if self.action_webhook_url and not self.action_webhook_url.startswith(("http://", "https://")):
            raise ConfigError("security.action_webhook_url: must start with http:// or https://")
        return self

    def detector_config(self) -> CoordinatedAttackConfig:
        return CoordinatedAttackConfig(window_s=self.window_s, max_events=self.max_events,
                                       campaign_min_users=self.campaign_min_users, max_sources=self.max_users)


def parse_security_settings(settings: Mapping[str, Any] | None) -> SecurityConfig:
    """A validated :class:`SecurityConfig` from the YAML ``security:`` map; errors name ``security.<key>``
    (the loader's rules, :func:`sentinel.config.load_map`)."""
    return load_map(SecurityConfig, {} if settings is None else settings, "security").validate()


@dataclass
class _UserTrail:
    events: deque[SecurityEvent] = field(default_factory=deque)
    anomalies: deque[Candidate] = field(default_factory=deque)
    correlated: bool = False  # one correlated alert per trail until it empties


class SecurityConsumer:
    """Receives security events, runs the attack detectors and the correlation (thread-safe)."""

    def __init__(self, config: SecurityConfig, data_dir: str | Path, *,
                 on_candidates: Callable[[list[Candidate]], None] | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 send: Callable[[str, dict[str, Any]], None] | None = None,
                 action_store: ActionStore | None = None) -> None:
        self.config = config.validate()
        self.state_file = JsonStateFile(Path(data_dir) / FILE_NAME, version=FORMAT_VERSION, what="security state")
        self.attacks = CoordinatedAttackDetector(config.detector_config())
        self.actions = ActionHook(webhook_url=config.action_webhook_url, require_approval=config.require_approval,
                                  duration_s=config.action_duration_s, timeout_s=config.action_timeout_s,
                                  max_actions=config.max_actions, data_dir=data_dir, clock=clock, send=send,
                                  store=action_store)
        #: Where the candidates raised outside a batch go (events from the API or the queue, and
        #: correlations found in :meth:`observe_candidates`): the candidate log and the alert manager.
        self.on_candidates = on_candidates
        self._users: OrderedDict[str, _UserTrail] = OrderedDict()
        self._lock = threading.Lock()
        self._dirty = False
        self.received = 0

    # --- input -------------------------------------------------------------------------------

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        found = self._events(batch.security)
        self.actions.observe(found)
        return found

    def submit(self, events: Sequence[SecurityEvent]) -> list[Candidate]:
        """Events from the API or the queue (any thread); the candidates they raised (handed on too)."""
        found = self._events(events)
        self._raise(found)
        return found

    def _events(self, events: Sequence[SecurityEvent]) -> list[Candidate]:
        if not events:
            return []
        with self._lock:
            self.received += len(events)
            self._dirty = True
            found = self.attacks.update(events)
            for e in events:
                if e.user is not None:
                    trail = self._trail(e.user)
                    trail.events.append(e)
                    found += self._correlate(e.user, trail, e.time_unix_nano)
        return found

    def observe_candidates(self, candidates: Sequence[Candidate]) -> None:
        """Other detectors' candidates: token and cost anomalies of a user feed the correlation."""
        found: list[Candidate] = []
        with self._lock:
            for c in candidates:
                user = c.context.get("user")
                if c.anomaly_type not in self.config.correlated_types or not isinstance(user, str):
                    continue
                trail = self._trail(user)
                trail.anomalies.append(c)
                found += self._correlate(user, trail, c.window_end)
        self._raise(found)

    def _raise(self, found: list[Candidate]) -> None:
        if found:
            if self.on_candidates is not None:
                self.on_candidates(found)
            self.actions.observe(found)

    # --- correlation -------------------------------------------------------------------------

    def _trail(self, user: str) -> _UserTrail:
        trail = self._users.get(user)
        if trail is None:
            trail = self._users[user] = _UserTrail()
            if len(self._users) > self.config.max_users:
                self._users.popitem(last=False)
        self._users.move_to_end(user)
        return trail

    def _correlate(self, user: str, trail: _UserTrail, now: int) -> list[Candidate]:
        horizon = now - int(self.config.correlation_window_s * NS)
        while trail.events and trail.events[0].time_unix_nano < horizon:
            trail.events.popleft()
        while trail.anomalies and trail.anomalies[0].window_end < horizon:
            trail.anomalies.popleft()
        if not trail.events or not trail.anomalies:
            trail.correlated = False
            return []
        if trail.correlated:
            return []
        trail.correlated = True
        guard = max(e.confidence for e in trail.events)
        anomaly = max(trail.anomalies, key=lambda c: c.confidence)
        combined = 1 - (1 - guard) * (1 - anomaly.confidence)
        events = list(trail.events)
        services = sorted({e.service for e in events if e.service} | ({anomaly.service} if anomaly.service else set()))
        return [Candidate(
            anomaly_type="security_correlation", service=anomaly.service or (services[0] if services else None),
            model=anomaly.model, detection_method="correlation", confidence=round(combined, 4),
            metric="combined_confidence", value=combined, baseline=guard, threshold=0.9, deviation_sigma=math.nan,
            window_start=min(events[0].time_unix_nano, anomaly.window_start),
            window_end=max(events[-1].time_unix_nano + 1, anomaly.window_end),
            context={"user": user, "security_events": len(events),
                     "threat_types": sorted({e.threat_type for e in events}),
                     "guardrail_confidence": guard, "anomaly_type": anomaly.anomaly_type,
                     "anomaly_confidence": anomaly.confidence, "anomaly_metric": anomaly.metric,
                     "anomaly_value": anomaly.value, "services": services,
                     "event_ids": [e.event_id for e in events[-5:]], "window": self.config.correlation_window_s,
                     **({"api_key_hash": k} if (k := events[-1].api_key_hash) else {}),
                     **({"ip": ip} if (ip := events[-1].ip_address) else {})})]

    # --- state -------------------------------------------------------------------------------

    def restore(self, state: Mapping[str, Any] | None) -> None:
        self.actions.restore()
        self.attacks = CoordinatedAttackDetector(self.config.detector_config())
        if state is not None:
            self.attacks = CoordinatedAttackDetector.from_state(state["attacks"], self.config.detector_config())

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            return {"version": FORMAT_VERSION, "attacks": self.attacks.to_state()}

    def shutdown(self) -> None:
        """Nothing to stop (the action hook sends on the caller's thread)."""
