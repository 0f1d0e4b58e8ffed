"""The analysis consumer that hands alerts raised at the edge to the alert manager.

Batches may carry ``edge_alerts`` (:mod:`sentinel.edge_alerts`): alerts a sidecar raised, and
paged, while it could not reach this aggregator. Each becomes a :class:`Candidate` of its series
and is reconciled by :meth:`aggregator.alerting.manager.AlertManager.reconcile_edge` (rules in
:mod:`aggregator.alerting.edge`). Give this consumer the analysis' list *before* the confirmer: the
alert then exists when the batch's own anomalies (the ones it was raised on) are confirmed, and they
fold into it instead of raising (and paging) another.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from aggregator.alerting.edge import OUTCOMES
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.state import StateFile
from sentinel.edge_alerts import EdgeAlert
from sentinel.wire import WireBatch

__all__ = ["EdgeAlertReconciler", "edge_candidate"]


class _Manager(Protocol):
    def reconcile_edge(self, c: Candidate, edge: EdgeAlert, *, sidecar: str, late: bool) -> str: ...


def edge_candidate(e: EdgeAlert, sidecar: str) -> Candidate:
    """The detection an edge alert stands for; its context is the confirmer's (same fingerprint)."""
    t = int(e.time_unix_nano)
    return Candidate(
        anomaly_type=e.anomaly_type, service=e.service, model=e.model, detection_method=f"edge_{e.method}",
        confidence=1.0, metric=e.metric, value=e.value, baseline=e.baseline, threshold=e.threshold,
        deviation_sigma=e.sigma if math.isfinite(e.sigma) else math.nan, window_start=t, window_end=t + 1,
        context={"trace_ids": list(e.trace_ids), "operation": e.operation, "sidecar": sidecar})


class EdgeAlertReconciler:
    """A :class:`~aggregator.analysis.pipeline.Consumer`; counts ``sentinel_aggregator_edge_alerts_total``.

    It returns no candidates: each edge alert is reconciled with the alert manager at once (raised,
    merged or dropped as a duplicate), not handed on as a new detection.
    """

    state_file: StateFile | None = None  # nothing of its own to keep: the alerts are in the alert store

    def __init__(self, manager: _Manager, *, late_after_s: float, registry: CollectorRegistry | None = None) -> None:
        self._manager = manager
        self._late_ns = int(late_after_s * 1e9)
        self.outcomes = Counter("sentinel_aggregator_edge_alerts", "Alerts raised at the edge (by sidecars) by "
                                "outcome: raised, merged (into an open alert), duplicate, updated (every edge "
                                "sink failed)", ["outcome"], registry=registry)
        for o in OUTCOMES:
            self.outcomes.labels(o)

    def restore(self, state: Any) -> None:
        """Nothing to restore."""

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        for e in batch.edge_alerts:
            late = e.time_unix_nano < arrival_ns - self._late_ns
            outcome = self._manager.reconcile_edge(edge_candidate(e, batch.sidecar), e, sidecar=batch.sidecar,
                                                   late=late)
            self.outcomes.labels(outcome).inc()
        return []

    def snapshot(self) -> None:
        """Nothing to keep: the alerts are in the alert store."""

    def shutdown(self) -> None:
        """Nothing to stop."""
