"""The action hook: a block / rate-limit request for a coordinated attack, sent to a webhook once approved.

For each ``coordinated_attack`` or ``security_correlation`` detection (and ``attack_campaign``, whose
subject is the signature), :class:`ActionHook` makes one :class:`Action` — the subject (user, API key
hash or IP), the reason, a suggested duration — that a guardrail service or a gateway can act on.
With ``require_approval`` (the default) it waits, ``pending``, until an operator approves it on the
page or with ``POST /api/v1/security/actions/{action_id}/approve`` (or rejects it); the approval goes
to the audit log like every other write of the API. Without it, it is sent at once. Sent as JSON
(:meth:`Action.payload`) with ``POST`` to ``webhook_url``; ``sent`` or ``failed`` (with the error) after.
Actions are kept in memory (the newest ``max_actions``) and in ``data_dir/security_actions.json``,
written at every change (as the alert store is, not at the pipeline's saves); in a cluster in
PostgreSQL, shared by the replicas (:mod:`aggregator.analysis.security.action_store`,
:mod:`aggregator.alerting.security_actions`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.security.action_store import FILE_NAME, ActionStore, MemoryActionStore

__all__ = ["ACTION_TYPES", "Action", "ActionHook"]

log = logging.getLogger(__name__)

ACTION_TYPES = frozenset({"coordinated_attack", "security_correlation", "attack_campaign"})
STATUSES = ("pending", "approved", "rejected", "sent", "failed")


@dataclass
class Action:
    action_id: str
    created_unix_nano: int
    anomaly_type: str
    service: str | None
    subject_type: str  # user, api_key_hash, ip_address or attack_signature
    subject: str
    user: str | None
    api_key_hash: str | None
    ip_address: str | None
    reason: str
    suggested_duration_s: float
    confidence: float
    status: str = "pending"
    decided_by: str | None = None
    decided_unix_nano: int | None = None
    error: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """What the webhook receives: who to block or limit, why, and for how long."""
        return {"action": "block", "action_id": self.action_id, "service": self.service,
                "subject_type": self.subject_type, "subject": self.subject, "user": self.user,
                "api_key_hash": self.api_key_hash, "ip_address": self.ip_address, "reason": self.reason,
                "suggested_duration_s": self.suggested_duration_s, "confidence": self.confidence,
                "approved_by": self.decided_by, "source": "llm-sentinel"}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def action_for(c: Candidate, duration_s: float, now_ns: int) -> Action | None:
    ctx = c.context
    scope, value = ctx.get("scope"), ctx.get("scope_value")
    if c.anomaly_type == "security_correlation":
        scope, value = "user", ctx.get("user")
    if not isinstance(scope, str) or not isinstance(value, str):
        return None
    reason = (f"{c.anomaly_type}: {int(c.value)} security events from {scope} {value} within "
              f"{ctx.get('window', '?')} s ({', '.join(sorted(ctx.get('threat_types', {})))})"
              if c.anomaly_type == "coordinated_attack" else
              f"{c.anomaly_type} on {c.service or 'an unknown service'}: {scope} {value}")
    return Action(action_id=uuid.uuid4().hex, created_unix_nano=now_ns, anomaly_type=c.anomaly_type,
                  service=c.service, subject_type=scope, subject=value, user=ctx.get("user"),
                  api_key_hash=ctx.get("api_key_hash"), ip_address=ctx.get("ip"), reason=reason,
                  suggested_duration_s=duration_s, confidence=round(c.confidence, 4),
                  detail={"threat_types": ctx.get("threat_types"), "events": ctx.get("events")})


class ActionHook:
    """Pending and decided actions; thread-safe. ``send`` is the transport (httpx by default); ``store``
    where the actions are kept (:class:`MemoryActionStore` of ``data_dir`` by default, a cluster's in
    PostgreSQL: :mod:`aggregator.alerting.security_actions`)."""

    def __init__(self, *, webhook_url: str, require_approval: bool = True, duration_s: float = 3600.0,
                 timeout_s: float = 5.0, max_actions: int = 1000, data_dir: str | Path | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 send: Callable[[str, dict[str, Any]], None] | None = None,
                 store: ActionStore | None = None) -> None:
        self.webhook_url = webhook_url
        self.require_approval = require_approval
        self.duration_s = duration_s
        self.timeout_s = timeout_s
        self.max_actions = max_actions
        self.store: ActionStore = store if store is not None else MemoryActionStore(
            max_actions, Path(data_dir) / FILE_NAME if data_dir is not None else None)
        self._clock = clock
        self._send = send or self._post
        #: Operators' decisions at this process since it started (sentinel_aggregator_security_actions_total).
        self.decided = {"approved": 0, "rejected": 0}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_url)

    def _post(self, url: str, body: dict[str, Any]) -> None:
        r = httpx.post(url, json=body, timeout=self.timeout_s)
        r.raise_for_status()

    def observe(self, candidates: list[Candidate]) -> list[Action]:
        """New actions for the candidates that call for one (sent at once without approval)."""
        if not self.enabled:
            return []
        made = []
        for c in candidates:
            if c.anomaly_type not in ACTION_TYPES:
                continue
            a = action_for(c, self.duration_s, self._clock())
            if a is None:
                continue
            try:
                kept = self.store.add(a)  # not when the subject has a pending action (one at a time)
            except Exception as e:  # a store's failure (a cluster's database down) must not stop the analysis:
                # the alert stands, this block request is lost (logged)
                log.error("security action for %s %s not kept: %s", a.subject_type, a.subject, e)
                continue
            if kept:
                made.append(a)
        for a in made:
            log.warning("security action %s for %s %s: %s (%s)", a.action_id, a.subject_type, a.subject, a.reason,
                        "waiting for approval" if self.require_approval else "sending")
            if not self.require_approval:
                self._deliver(self.store.decide(a.action_id, "approved", "auto", self._clock()))
        return made

    def list(self, status: str | None = None) -> list[Action]:
        return self.store.list(status)

    def get(self, action_id: str) -> Action | None:
        return self.store.get(action_id)

    def decide(self, action_id: str, approve: bool, who: str) -> Action:
        """Approve (and send) or reject a pending action; ``KeyError`` unknown, ``ValueError`` not pending
        (decided already, here or at another replica: the message names the action, its status and who)."""
        a = self.store.decide(action_id, "approved" if approve else "rejected", who, self._clock())
        with self._lock:
            self.decided[a.status] += 1
        if approve:
            self._deliver(a)
        return a

    def _deliver(self, a: Action) -> None:
        try:
            self._send(self.webhook_url, a.payload())
        except Exception as e:  # the decision stands; the failure is shown and can be retried by hand
            a.status, a.error = "failed", f"{type(e).__name__}: {e}"[:300]
            log.error("security action %s could not be sent: %s", a.action_id, a.error)
        else:
            a.status, a.error = "sent", None
        self.store.finish(a)

    def restore(self) -> None:
        self.store.restore()
