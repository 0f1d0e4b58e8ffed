"""The aggregator's self-metrics (Prometheus), registered on an injected registry.

Tests pass a fresh ``CollectorRegistry`` so they stay hermetic; the process uses one of its own,
served at ``/metrics`` on the aggregator's listener.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["INGEST_OUTCOMES", "AggregatorMetrics"]

#: Values of the ``outcome`` label of ``sentinel_aggregator_batches_received_total``.
INGEST_OUTCOMES = (
    "accepted",        # stored in the journal (200)
    "duplicate",       # (sidecar, seq) already stored (200, not counted again)
    "unauthorized",    # missing or wrong bearer token (401)
    "unsupported",     # Content-Type is not application/x-msgpack (415)
    "too_large",       # body over max_body_bytes (413)
    "invalid",         # not a valid wire batch (400)
    "overloaded",      # ingest queue full (503, Retry-After)
    "error",           # the journal could not commit (503, Retry-After)
)


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
        self.journal_pruned_batches = Counter(
            "sentinel_aggregator_journal_pruned_batches", "Batches deleted from the journal by retention",
            registry=r)
