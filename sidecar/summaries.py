"""Bandwidth mode ``forward: summaries``: per-minute per-key summaries instead of every row.

An edge node on a thin or metered link need not send every call. With ``forward: summaries`` the
sidecar still detects on every row, but forwards

* per event-time minute and key (:data:`sentinel.summary.KEY_COLUMNS`) a :class:`~sentinel.summary.Summary`:
  calls, errors, calls per error type and finish reason, and per metric the moments and DDSketch the
  aggregator's baselines keep — built with the aggregator's own :class:`~aggregator.baselines.MetricBaseline`,
  so they merge into its baselines exactly (same relative accuracy: ``summary_relative_accuracy`` must
  equal the aggregator's ``baseline_relative_accuracy``, both 0.01 by default);
* every row a local anomaly was raised on, with the anomaly (so confirmation, trace ids and edge
  alerts work as before), and a random ``summary_sample_rate`` share of the other rows (for the
  Isolation Forest and for examples), all marked ``summarised`` (already counted in a summary).

Summaries are sealed into a batch of their own every ``summary_flush_s`` (a minute still open is
sent as a partial; summaries of the same key and minute add up).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ddsketch.pb.proto import DDSketchProto

from aggregator.baselines import MetricBaseline
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch, LocalAnomaly
from sentinel.summary import KEY_COLUMNS, MAX_CATEGORIES, SUMMARY_METRICS, MetricSummary, Summary

__all__ = ["FORWARD_MODES", "Summariser", "SummaryConfig"]

FORWARD_MODES = ("rows", "summaries")
DEFAULT_SAMPLE_RATE = 0.01
DEFAULT_FLUSH_S = 10.0
DEFAULT_WIDTH_S = 60
DEFAULT_MAX_KEYS = 10_000
DEFAULT_RELATIVE_ACCURACY = 0.01
_OTHER = "(other)"


@dataclass(kw_only=True)
class SummaryConfig:
    """The ``forward`` and ``summary_*`` settings of :class:`sidecar.config.SidecarConfig`."""

    forward: str = "rows"
    sample_rate: float = DEFAULT_SAMPLE_RATE
    flush_s: float = DEFAULT_FLUSH_S
    width_s: int = DEFAULT_WIDTH_S
    max_keys: int = DEFAULT_MAX_KEYS
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY

    @classmethod
    def from_settings(cls, c: Any) -> SummaryConfig:
        return cls(forward=c.forward, sample_rate=c.summary_sample_rate, flush_s=c.summary_flush_s,
                   max_keys=c.summary_max_keys, relative_accuracy=c.summary_relative_accuracy)

    def validate(self) -> None:
        if self.forward not in FORWARD_MODES:
            raise ConfigError(f"forward: {self.forward!r} is not one of {', '.join(FORWARD_MODES)}")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError("summary_sample_rate: must be between 0 and 1")
        if not self.flush_s > 0:
            raise ConfigError("summary_flush_s: must be greater than 0")
        if self.max_keys < 1:
            raise ConfigError("summary_max_keys: must be greater than 0")
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ConfigError("summary_relative_accuracy: must be between 0 and 1 (exclusive)")


@dataclass
class _Open:
    n: int = 0
    errors: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    metrics: dict[str, MetricBaseline] = field(default_factory=dict)


def _count_into(counter: Counter[str], values: list[str | None]) -> None:
    for v, k in Counter(v for v in values if v is not None).items():
        if v not in counter and len(counter) >= MAX_CATEGORIES:
            v = _OTHER
        counter[v] += k


class Summariser:
    """Rows in (:meth:`add`), the rows still to forward out; summaries out with :meth:`take`."""

    def __init__(self, config: SummaryConfig, *, seed: int | None = None) -> None:
        config.validate()
        self.config = config
        self._rng = np.random.default_rng(seed)
        self._open: dict[tuple[Any, ...], _Open] = {}
        self.rows_summarised = 0

    @property
    def pending(self) -> int:
        """Summaries held (key-minutes)."""
        return len(self._open)

    @property
    def full(self) -> bool:
        return len(self._open) >= self.config.max_keys

    def add(self, batch: FeatureBatch, anomalies: list[LocalAnomaly]) -> FeatureBatch:
        """Count ``batch`` into the summaries; return its rows to forward (anomalous and sampled)."""
        if batch.n == 0:
            return batch
        self._summarise(batch)
        keep = self._rng.random(batch.n) < self.config.sample_rate
        flagged = {a.span_id for a in anomalies if a.span_id is not None}
        if flagged:
            keep |= np.fromiter((s in flagged for s in batch.strings["span_id"]), dtype=bool, count=batch.n)
        return batch.take(keep)

    def _summarise(self, batch: FeatureBatch) -> None:
        width_ns = self.config.width_s * 1_000_000_000
        starts = (np.asarray(batch.numeric["time_unix_nano"]) // width_ns * width_ns).tolist()
        keys = list(zip(starts, *(batch.strings[c] for c in KEY_COLUMNS), strict=True))
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        is_error = np.asarray(batch.numeric["is_error"])
        for k, rows in groups.items():
            idx = np.asarray(rows, dtype=np.intp)
            acc = self._open.get(k)
            if acc is None:
                acc = self._open[k] = _Open()
            acc.n += int(idx.size)
            acc.errors += int(np.count_nonzero(is_error[idx]))
            _count_into(acc.error_types, [batch.strings["error_type"][i] for i in rows])
            _count_into(acc.finish_reasons, [batch.strings["finish_reason"][i] for i in rows])
            for m in SUMMARY_METRICS:
                values = np.asarray(batch.numeric[m], dtype=np.float64)[idx]
                if not np.isnan(values).all():
                    acc.metrics.setdefault(m, MetricBaseline(self.config.relative_accuracy)).update(values)
        self.rows_summarised += batch.n

    def take(self) -> list[Summary]:
        """Every summary held (then forgotten): complete minutes and partial ones alike."""
        out = []
        for k, acc in self._open.items():
            out.append(Summary(
                start_unix_nano=int(k[0]), width_s=self.config.width_s,
                key=dict(zip(KEY_COLUMNS, k[1:], strict=True)), n=acc.n, errors=acc.errors,
                error_types=dict(acc.error_types), finish_reasons=dict(acc.finish_reasons),
                metrics={m: _metric_summary(b) for m, b in acc.metrics.items()}))
        self._open.clear()
        return out


def _metric_summary(b: MetricBaseline) -> MetricSummary:
    proto = DDSketchProto.to_proto(b.sketch)  # type: ignore[no-untyped-call]
    return MetricSummary(count=b.count, mean=b.mean, m2=b.m2, min=b.min if math.isfinite(b.min) else 0.0,
                         max=b.max if math.isfinite(b.max) else 0.0, sketch=proto.SerializeToString())
