"""The aggregator's self-metrics (Prometheus), registered on an injected registry.

Tests pass a fresh ``CollectorRegistry`` so they stay hermetic; the process uses one of its own,
served at ``/metrics`` on the aggregator's listener.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from aggregator.analysis.detectors.candidate import Candidate
    from aggregator.analysis.forest.consumer import ForestConsumer

__all__ = ["CONFIRM_OUTCOMES", "DETECTION_LATENCY_BUCKETS", "INGEST_OUTCOMES", "SIGNAL_COUNTERS", "AggregatorMetrics"]

#: Values of the ``outcome`` label of ``sentinel_aggregator_batches_received_total``.
INGEST_OUTCOMES = (
    "accepted",        # stored in the journal (200)
    "duplicate",       # (sidecar, seq) already stored (200, not counted again)
    "unauthorized",    # missing or wrong bearer token (401)
    "forbidden",       # the token is bound to other sidecar ids, or the id to other services (403)
    "unsupported",     # Content-Type is not application/x-msgpack (415)
    "too_large",       # body over max_body_bytes (413)
    "timeout",         # body not received within sentinel.service.BODY_TIMEOUT_S (408)
    "invalid",         # not a valid wire batch (400)
    "overloaded",      # ingest queue full (503, Retry-After)
    "error",           # the journal could not commit (503, Retry-After)
)

#: Values of the ``outcome`` label of ``sentinel_aggregator_local_anomalies_total``.
CONFIRM_OUTCOMES = ("confirmed", "dismissed", "late", "over_limit", "unbound")

#: Event time to candidate: a bucket-closing detector waits for its window to close, plus the
#: sidecar's batching and forwarding; beyond an hour is replay or catch-up.
DETECTION_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


#: The quality and security signal counters: family -> (help, label name or ""). Their values are the
#: analysis consumers' own counts, read at each scrape (``watch_signals``), so the consumers stay free
#: of Prometheus and the analysis thread does no metric work per event.
SIGNAL_COUNTERS: dict[str, tuple[str, str]] = {
    "sentinel_aggregator_quality_events": (
        "Quality events received (in sidecar batches and POST /api/v1/feedback), by kind: evaluation "
        "(evaluation scores) or feedback (user feedback)", "kind"),
    "sentinel_aggregator_quality_events_joined": ("Quality events joined to their call (or naming their service)", ""),
    "sentinel_aggregator_quality_events_unjoined": (
        "Quality events dropped because no call of theirs arrived within join_wait_s (or the wait list was full)", ""),
    "sentinel_aggregator_security_events": (
        "Security events received (in sidecar batches, POST /api/v1/security-events and the RabbitMQ queue)", ""),
    "sentinel_aggregator_security_actions": (
        "Security actions decided by an operator (POST /api/v1/security/actions/{id}/approve or /reject), "
        "by decision: approved or rejected", "decision"),
    "sentinel_aggregator_answer_signals": (
        "Calls the answer-quality detectors counted as hits, by signal: finish_length (stopped at the output "
        "limit), content_filter (a safety filter or refusal ended it), empty_answer (near-zero output at a "
        "normal latency); restarts from 0 when a live settings change rebuilds the detector", "signal"),
}


class _SignalCollector(Collector):
    """``SIGNAL_COUNTERS`` from ``read()``: family -> label value (or "") -> count."""

    def __init__(self, read: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        try:
            values = self._read()
        except RuntimeError:  # a count map changed while read (analysis thread): this scrape has no figures
            return
        for name, (doc, label) in SIGNAL_COUNTERS.items():
            counts = values.get(name)
            if counts is None:  # that consumer is off
                continue
            family = CounterMetricFamily(name, doc, labels=[label] if label else [])
            for value, count in sorted(counts.items()):
                family.add_metric([value] if label else [], float(count))
            yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())  # families depend on which consumers are on: not checked at registration


class AggregatorMetrics:
    """Every metric the aggregator exports; names are part of its public interface."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.batches_received = Counter(
            "sentinel_aggregator_batches_received", "Ingest requests by outcome", ["outcome"], registry=r)
        for outcome in INGEST_OUTCOMES:
            self.batches_received.labels(outcome)
        self.rows_ingested = Counter(
            "sentinel_aggregator_rows_ingested", "Rows of accepted batches (duplicates not counted)", registry=r)
        self.rows_late = Counter(
            "sentinel_aggregator_rows_late", "Accepted rows whose event time was older than arrival minus "
            "late_after_s", registry=r)
        self.rows_future = Counter(
            "sentinel_aggregator_rows_future", "Accepted rows stamped more than max_future_skew_s after their "
            "arrival (a sidecar clock ahead); analysed at their arrival time", registry=r)
        self.batches_replayed = Counter(
            "sentinel_aggregator_batches_replayed", "Accepted batches sealed more than late_after_s before "
            "they arrived (spool replay, outage catch-up)", registry=r)
        self.duplicate_batches = Counter(
            "sentinel_aggregator_duplicate_batches", "Batches whose (sidecar, seq) was already stored",
            registry=r)
        self.ingest_queue_batches = Gauge(
            "sentinel_aggregator_ingest_queue_batches", "Decoded batches waiting to be committed", registry=r)
        self.commit_seconds = Histogram(
            "sentinel_aggregator_ingest_commit_seconds", "Time of one journal transaction (a group of batches)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5), registry=r)
        self.journal_full = Counter(
            "sentinel_aggregator_journal_full", "Journal commits that failed because the database or disk was "
            "full (answered 503; the WAL is then checkpointed and truncated)", registry=r)
        self.journal_pruned_batches = Counter(
            "sentinel_aggregator_journal_pruned_batches", "Batches deleted from the journal by retention",
            registry=r)
        self.local_anomalies = Counter(
            "sentinel_aggregator_local_anomalies", "Anomalies forwarded by sidecars, by outcome of the check "
            "against the global baselines (over_limit: beyond max_anomalies_per_batch, not checked)", ["outcome"],
            registry=r)
        for outcome in CONFIRM_OUTCOMES:
            self.local_anomalies.labels(outcome)
        self.detection_latency = Histogram(
            "sentinel_aggregator_detection_latency_seconds", "Seconds from the end of a candidate's event-time "
            "window to its emission", buckets=DETECTION_LATENCY_BUCKETS, registry=r)
        self.model_train_seconds = Histogram(
            "sentinel_aggregator_model_train_seconds", "Time to fit one Isolation Forest",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r)
        self.model_age = Gauge(
            "sentinel_aggregator_model_age_seconds", "Seconds since the newest Isolation Forest fit completed "
            "(NaN: no forest trained)", registry=r)
        self.model_age.set(math.nan)
        self._clock: Callable[[], float] = time.time

    def count_local_anomaly(self, outcome: str) -> None:
        """Count one forwarded anomaly as ``confirmed`` or ``dismissed``."""
        self.local_anomalies.labels(outcome).inc()

    def observing(self, emit: Callable[[Iterable[Candidate]], None]) -> Callable[[Iterable[Candidate]], None]:
        """``emit`` that also observes each candidate's detection latency (never negative)."""
        def observed(candidates: Iterable[Candidate]) -> None:
            items = list(candidates)
            emit(items)
            now_ns = time.time_ns()
            for c in items:
                self.detection_latency.observe(max(0.0, (now_ns - c.window_end) / 1e9))
        return observed

    def watch_signals(self, read: Callable[[], Mapping[str, Mapping[str, float]]]) -> None:
        """Export :data:`SIGNAL_COUNTERS` from ``read()`` at every scrape (family -> label value -> count;
        a family left out is not exported, a label-less family's one count is under "")."""
        self.registry.register(_SignalCollector(read))

    def watch_forest(self, forest: ForestConsumer) -> None:
        """Compute ``model_age_seconds`` from ``forest``'s fitted models at every scrape."""
        def age() -> float:
            try:
                fitted = [m.fitted_unix for m in map(forest.model, forest.groups()) if m is not None]
            except RuntimeError:  # groups changed while listed (analysis thread): no figure this time
                return math.nan
            return max(0.0, self._clock() - max(fitted)) if fitted else math.nan
        self.model_age.set_function(age)
