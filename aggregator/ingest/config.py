"""The ingest stage's settings: what :class:`~aggregator.ingest.service.IngestService` reads.

They are process settings of the same names (``aggregator/README.md``, validated and defaulted
there); the app hands the stage this object, so ingest does not import the process configuration
above it (tests/test_import_graph.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IngestConfig"]


@dataclass(frozen=True)
class IngestConfig:
    """The settings of ``POST /v1/ingest`` and its journal; each field is the process setting of its name."""

    data_dir: str
    max_body_bytes: int
    ingest_queue_max_batches: int
    analysis_queue_max_rows: int
    max_anomalies_per_batch: int
    retry_after_s: int
    late_after_s: float
    max_future_skew_s: float
    clock_offset_warn_s: float
    dedup_window: int
    journal_retention_s: float
    journal_prune_interval_s: float
    tokens: list[str] = field(default_factory=list)
    sidecar_tokens: dict[str, Any] = field(default_factory=dict)
    sidecar_services: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: object) -> IngestConfig:
        """The fields of the same names read off ``settings`` (the process configuration, already validated)."""
        return cls(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(cls)})
