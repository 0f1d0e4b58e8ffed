"""The sidecar's self-metrics (Prometheus), registered on an injected registry.

Tests pass a fresh ``CollectorRegistry`` so they stay hermetic; the process uses one of its own
too, served at ``/metrics`` on the metrics listener.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["DROP_REASONS", "SidecarMetrics"]

#: Values of the ``reason`` label of ``sentinel_sidecar_dropped_rows_total``.
DROP_REASONS = (
    "no_aggregator",    # no aggregator_url set: rows are detected locally only
    "queue_full",       # memory queue full and no spool to spill to
    "spool_full",       # spool full under drop_oldest
    "spool_error",      # acknowledged rows that had to spill to a spool that cannot be written
    "rejected",         # the aggregator refused the batch permanently (400/413/422)
    "shutdown",         # still held at shutdown with no spool to keep it
)


class SidecarMetrics:
    """Every metric the sidecar exports; names are part of its public interface."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sentinel_sidecar_requests", "OTLP export requests by signal, transport and outcome",
            ["signal", "transport", "outcome"], registry=r)
        self.spans_received = Counter(
            "sentinel_sidecar_spans_received", "Spans received over OTLP", registry=r)
        self.llm_calls = Counter(
            "sentinel_sidecar_llm_calls", "Spans recognised as LLM calls (one feature row each)", registry=r)
        self.attribute_errors = Counter(
            "sentinel_sidecar_attribute_errors", "Wrong-typed LLM attributes read as null", registry=r)
        self.metric_rows = Counter(
            "sentinel_sidecar_metric_rows", "rows made from GenAI metrics of keys no spans come for",
            registry=r)
        self.metric_values_thinned = Counter(
            "sentinel_sidecar_metric_values_thinned", "GenAI metric values left out by "
            "genai_metrics_max_rows_per_point", registry=r)
        self.unknown_cost = Counter(
            "sentinel_sidecar_unknown_cost", "LLM calls whose model has no price", registry=r)
        self.quality_events = Counter(
            "sentinel_sidecar_quality_events", "Evaluation results and user feedback read from spans and logs",
            registry=r)
        self.security_events = Counter(
            "sentinel_sidecar_security_events", "Guardrail security events read from spans and logs", registry=r)
        self.local_anomalies = Counter(
            "sentinel_sidecar_local_anomalies", "Local detections by metric and method",
            ["metric", "method"], registry=r)
        self.forwarded_rows = Counter(
            "sentinel_sidecar_forwarded_rows", "Rows acknowledged by the aggregator", registry=r)
        self.forwarded_batches = Counter(
            "sentinel_sidecar_forwarded_batches", "Batches acknowledged by the aggregator", registry=r)
        self.forward_retries = Counter(
            "sentinel_sidecar_forward_retries", "Ingest attempts that failed and will be retried",
            ["reason"], registry=r)
        self.dropped_rows = Counter(
            "sentinel_sidecar_dropped_rows", "Rows lost, by reason", ["reason"], registry=r)
        for reason in DROP_REASONS:
            self.dropped_rows.labels(reason)
        self.receive_bytes_in_flight = Gauge(
            "sentinel_sidecar_receive_bytes_in_flight", "Bytes reserved by export requests being received and "
            "decoded (bounded by receive_max_bytes_in_flight)", registry=r)
        self.queue_batches = Gauge(
            "sentinel_sidecar_queue_batches", "Sealed batches waiting in memory for the forwarder", registry=r)
        self.spool_bytes = Gauge(
            "sentinel_sidecar_spool_bytes", "Bytes of spool segment files on disk", registry=r)
        self.spool_records = Gauge(
            "sentinel_sidecar_spool_records", "Batches in the spool not yet acknowledged", registry=r)
        self.spool_write_errors = Counter(
            "sentinel_sidecar_spool_write_errors", "Spool appends that failed with an OS error (a directory gone "
            "read-only, a disk error); the export is refused", registry=r)
        self.spool_corrupt_records = Counter(
            "sentinel_sidecar_spool_corrupt_records", "Spool records skipped as corrupt or torn", registry=r)
        self.upstream_requests = Counter(
            "sentinel_sidecar_upstream_requests", "Pass-through exports by signal and outcome",
            ["signal", "outcome"], registry=r)
        self.export_seconds = Histogram(
            "sentinel_sidecar_export_duration_seconds", "Time to answer an OTLP export request",
            ["transport"], buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r)
