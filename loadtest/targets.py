"""The design targets the benchmarks print, one constant each; ``docs/targets.md`` is their table.

``tests/test_targets_doc.py`` checks that every constant here appears in that table, so a target
changes in one place and the docs follow.
"""

from __future__ import annotations

SIDECAR_SPANS_PER_S = 100_000
"""Sidecar ingest on one core, GenAI spans, end to end to the forward queue."""
SIDECAR_RSS_MIB = 80.0
"""Sidecar RSS at a steady 2,000 spans/s."""
SIDECAR_EXPORT_P99_MS = 5.0
"""OTLP export call p99 seen by the app at 2,000 spans/s."""
AGGREGATOR_ANALYSIS_ROWS_PER_S = 200_000
"""Aggregator analysis, every consumer as the aggregator builds them, one thread."""
AGGREGATOR_E2E_ROWS_PER_S = 100_000
"""Aggregator end to end (POST /v1/ingest -> analysed), one core."""
IFOREST_RATIO_500 = 3.0
"""Isolation Forest scoring throughput on batches of 500 rows, as a multiple of scikit-learn's."""
IFOREST_AUC_TOLERANCE = 0.01
"""Isolation Forest ROC AUC within this of scikit-learn's on the tabular sets."""
DETECTION_LATENCY_P95_S = 1.0
"""Anomaly in a span -> alert on RabbitMQ, p95, at FLEET_SPANS_PER_S on one machine."""
FLEET_SPANS_PER_S = 20_000
"""The fleet load at which the detection latency target holds."""
NAB_RATIO_STANDARD = 1.2
"""NAB (its own scorer, standard profile): the sidecar's streaming detector / windowedGaussian."""

__all__ = [
    "AGGREGATOR_ANALYSIS_ROWS_PER_S",
    "AGGREGATOR_E2E_ROWS_PER_S",
    "DETECTION_LATENCY_P95_S",
    "FLEET_SPANS_PER_S",
    "IFOREST_AUC_TOLERANCE",
    "IFOREST_RATIO_500",
    "NAB_RATIO_STANDARD",
    "SIDECAR_EXPORT_P99_MS",
    "SIDECAR_RSS_MIB",
    "SIDECAR_SPANS_PER_S",
]
