"""Bandwidth mode ``forward: summaries``: per-minute per-key summaries instead of every row.

An edge node on a thin or metered link need not send every call. With ``forward: summaries`` the
sidecar still detects on every row, but forwards

* per event-time minute and key (:data:`sentinel.summary.KEY_COLUMNS`: not the pod) a
  :class:`~sentinel.summary.Summary`: calls, errors, calls per error type and finish reason, and per
  metric the moments and DDSketch bins the aggregator's baselines keep — with the same DDSketch
  mapping as its :class:`~aggregator.analysis.baselines.store.MetricBaseline`, so they merge into its baselines
  exactly (same relative accuracy: ``summaries.relative_accuracy`` must equal the aggregator's
  ``baselines.relative_accuracy``, both 0.01 by default);
* every row a local anomaly was raised on, with the anomaly (so confirmation, trace ids and edge
  alerts work as before), and a random ``summaries.sample_rate`` share of the other rows (for the
  Isolation Forest and for examples), all marked ``summarised`` (already counted in a summary).

Summaries are sealed into a batch of their own every ``summaries.flush_s`` (a minute still open is
sent as a partial; summaries of the same key and minute add up).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sentinel.config import ConfigError, setting
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
    """The sidecar's ``summaries:`` section, and its ``forward`` setting (:class:`sidecar.config.SidecarConfig`)."""

    #: The sidecar's top-level ``forward`` (rows or summaries), set by it: not a setting of the section.
    forward: str = setting("rows", "the sidecar's forward", config=False)
    sample_rate: float = setting(DEFAULT_SAMPLE_RATE, "forward: summaries: share of the other rows forwarded as "
                                 "rows")
    flush_s: float = setting(DEFAULT_FLUSH_S, "forward: summaries: how often the summaries held are sealed into a "
                             "batch")
    width_s: int = setting(DEFAULT_WIDTH_S, "width of one summary (a minute)", config=False)
    max_keys: int = setting(DEFAULT_MAX_KEYS, "forward: summaries: key-minutes held before they are sealed early")
    relative_accuracy: float = setting(DEFAULT_RELATIVE_ACCURACY, "forward: summaries: DDSketch relative accuracy; "
                                       "must equal the aggregator's baselines.relative_accuracy")

    def validate(self) -> None:
        if self.forward not in FORWARD_MODES:
            raise ConfigError(f"forward: {self.forward!r} is not one of {', '.join(FORWARD_MODES)}")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError("summaries.sample_rate: must be between 0 and 1")
        if not self.flush_s > 0:
            raise ConfigError("summaries.flush_s: must be greater than 0")
        if self.max_keys < 1:
            raise ConfigError("summaries.max_keys: must be greater than 0")
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ConfigError("summaries.relative_accuracy: must be between 0 and 1 (exclusive)")


@dataclass
class _Moments:
    """Count, mean, sum of squared deviations (merged with Chan et al.'s formula), min, max; DDSketch bins."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    bins: Counter[int] = field(default_factory=Counter)
    zeros: int = 0

    def merge(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min, self.max = min(self.min, lo), max(self.max, hi)


@dataclass
class _Open:
    first: int = 2**63 - 1
    last: int = 0
    n: int = 0
    errors: int = 0
    error_types: Counter[str] = field(default_factory=Counter)
    finish_reasons: Counter[str] = field(default_factory=Counter)
    metrics: dict[str, _Moments] = field(default_factory=dict)


def _count_into(counter: Counter[str], values: list[str]) -> None:
    for v, k in Counter(values).items():
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
        # Imported here, as only `forward: summaries` needs it: ddsketch (and the six it brings) is
        # ~0.25 MiB a sidecar forwarding rows would hold for nothing (issue 16).
        from ddsketch import DDSketch

        # The mapping the aggregator's baselines use (DDSketch's default at this accuracy).
        self._mapping = DDSketch(config.relative_accuracy)._mapping
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
        # Vectorised per metric over the request's key-minutes (a request holds many keys of a few
        # rows each); only the sketch key of each value is computed one by one, with DDSketch's own
        # mapping, so the bins are exactly those the aggregator's baselines would make of the rows.
        width_ns = self.config.width_s * 1_000_000_000
        starts = (np.asarray(batch.numeric["time_unix_nano"]) // width_ns * width_ns).tolist()
        slot_of: dict[tuple[Any, ...], int] = {}
        codes_list = [slot_of.setdefault(k, len(slot_of))
                      for k in zip(starts, *(batch.strings[c] for c in KEY_COLUMNS), strict=True)]
        codes = np.asarray(codes_list, dtype=np.intp)
        slots = len(slot_of)
        accs = []
        for k in slot_of:
            acc = self._open.get(k)
            if acc is None:
                acc = self._open[k] = _Open()
            accs.append(acc)
        t = np.asarray(batch.numeric["time_unix_nano"], dtype=np.int64)
        first = np.full(slots, 2**63 - 1, dtype=np.int64)
        last = np.zeros(slots, dtype=np.int64)
        np.minimum.at(first, codes, t)
        np.maximum.at(last, codes, t)
        for acc, a, b in zip(accs, first.tolist(), last.tolist(), strict=True):
            acc.first, acc.last = min(acc.first, a), max(acc.last, b)
        calls = np.bincount(codes, minlength=slots)
        errors = np.bincount(codes, weights=np.asarray(batch.numeric["is_error"], dtype=np.float64), minlength=slots)
        for acc, n, e in zip(accs, calls.tolist(), errors.tolist(), strict=True):
            acc.n += n
            acc.errors += round(e)
        for column, attr in (("error_type", "error_types"), ("finish_reason", "finish_reasons")):
            values = batch.strings[column]
            if any(v is not None for v in values):
                for slot, cat in zip(codes_list, values, strict=True):
                    if cat is not None:
                        _count_into(getattr(accs[slot], attr), [cat])
        key = self._mapping.key
        smallest = self._mapping.min_possible
        for m in SUMMARY_METRICS:
            x = np.asarray(batch.numeric[m], dtype=np.float64)
            ok = x >= 0  # NaN (missing) too; a negative value is missing on the wire
            if not ok.any():
                continue
            v, c = x[ok], codes[ok]
            n = np.bincount(c, minlength=slots)
            mean = np.bincount(c, weights=v, minlength=slots) / np.maximum(n, 1)
            m2 = np.bincount(c, weights=np.square(v - mean[c]), minlength=slots)
            lo = np.full(slots, np.inf)
            hi = np.full(slots, -np.inf)
            np.minimum.at(lo, c, v)
            np.maximum.at(hi, c, v)
            for slot in np.flatnonzero(n).tolist():
                moments = accs[slot].metrics.get(m)
                if moments is None:
                    moments = accs[slot].metrics[m] = _Moments()
                moments.merge(int(n[slot]), float(mean[slot]), float(m2[slot]), float(lo[slot]), float(hi[slot]))
            for slot, value in zip(c.tolist(), v.tolist(), strict=True):
                moments = accs[slot].metrics[m]
                if value > smallest:
                    moments.bins[key(value)] += 1
                else:
                    moments.zeros += 1
        self.rows_summarised += batch.n

    def take(self) -> list[Summary]:
        """Every summary held (then forgotten): complete minutes and partial ones alike."""
        out = []
        for k, acc in self._open.items():
            out.append(Summary(
                start_unix_nano=int(k[0]), width_s=self.config.width_s, first_unix_nano=acc.first,
                last_unix_nano=acc.last,
                key=dict(zip(KEY_COLUMNS, k[1:], strict=True)), n=acc.n, errors=acc.errors,
                error_types=dict(acc.error_types), finish_reasons=dict(acc.finish_reasons),
                metrics={m: _metric_summary(b, self.config.relative_accuracy) for m, b in acc.metrics.items()}))
        self._open.clear()
        return out


def _metric_summary(m: _Moments, accuracy: float) -> MetricSummary:
    counts: list[int] = []
    offset = 0
    if m.bins:
        offset, top = min(m.bins), max(m.bins)
        counts = [m.bins.get(k, 0) for k in range(offset, top + 1)]
    return MetricSummary(count=m.count, mean=m.mean, m2=m.m2, min=m.min if math.isfinite(m.min) else 0.0,
                         max=m.max if math.isfinite(m.max) else 0.0, accuracy=accuracy, offset=offset,
                         counts=counts, zeros=m.zeros)
