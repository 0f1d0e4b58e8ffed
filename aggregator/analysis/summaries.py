"""Summaries from ``forward: summaries`` sidecars, fed to the analysis as the rows they stand for.

A sidecar in bandwidth mode (``sidecar/summaries.py``) sends per-minute per-key summaries, plus the
anomalous rows and a sample, marked ``summarised``. The analysis consumers take them so:

* **baselines** (:class:`SummaryBaselines`): each summary's moments and DDSketches merge into the
  baselines exactly (:meth:`aggregator.analysis.baselines.store.BaselineStore.merge_part`); summarised rows are not
  counted again;
* **windowed detectors, series, alert resolution** (:class:`FromSummaries`): they get *rows rebuilt
  from the summaries* (:func:`expand`) instead of the batch's own: per key-minute exactly ``n`` calls,
  ``errors`` of them failed, the error types and finish reasons in their counts, and per metric
  exactly the sketch's values — each bin's representative value (within the sketch's relative
  accuracy, 1 %, of the true values) as many times as the bin holds values, clipped to the exact min
  and max, in random order, spread evenly from the first to the last call's event time. Counts,
  error rates, quantiles and level shifts come out as with rows; sums (cost) within the sketch's
  accuracy. What a summary does not keep is missing from the rebuilt rows: the user and API key
  (``token_abuse`` and the per-user side of ``expensive_prompt`` need rows), trace ids, and which
  values belonged to the same call (metrics are rebuilt independently);
* **confirmer, Isolation Forest, edge alerts**: the batch's own rows (anomalous and sampled calls)
  and anomalies, as sent — the forest learns from the sample only.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from ddsketch.mapping import LogarithmicMapping

from aggregator.analysis.baselines.store import BaselineKey, BaselineStore, KeyBaseline, MetricBaseline, hour_of_week
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.pipeline import Consumer
from aggregator.analysis.state import StateFile
from sentinel.model import COLUMNS, NUMERIC_COLUMNS, FeatureBatch
from sentinel.summary import KEY_COLUMNS, MetricSummary, Summary
from sentinel.wire import WireBatch

__all__ = ["FromSummaries", "SummaryBaselines", "expand", "metric_baseline"]


class _Delegate:
    """Restored, snapshotted and shut down as ``inner`` is (a wrapper changes only what a batch shows it)."""

    def __init__(self, inner: Consumer) -> None:
        self.inner = inner

    @property
    def state_file(self) -> StateFile | None:
        return self.inner.state_file

    def restore(self, state: Any) -> None:
        self.inner.restore(state)

    def snapshot(self) -> Any:
        return self.inner.snapshot()

    def shutdown(self) -> None:
        self.inner.shutdown()


def metric_baseline(ms: MetricSummary, relative_accuracy: float) -> MetricBaseline:
    """The :class:`MetricBaseline` a summary's metric stands for (merges as the rows would have).

    At the same accuracy the bins are put back as they were (an exact merge); at another one each
    bin's representative value is added to a sketch of ``relative_accuracy`` (within both accuracies).
    """
    out = MetricBaseline(relative_accuracy)
    if not ms.count:
        return out
    out.count, out.mean, out.m2, out.min, out.max = ms.count, ms.mean, ms.m2, ms.min, ms.max
    sketch = out.sketch
    if ms.accuracy == relative_accuracy:
        # DDSketch has no public way to add to a bin; these are the fields its own add() keeps.
        for i, c in enumerate(ms.counts):
            if c:
                sketch._store.add(ms.offset + i, float(c))
        sketch._zero_count += float(ms.zeros)
        sketch._count += float(ms.count)
        sketch._sum += ms.mean * ms.count
        sketch._min, sketch._max = ms.min, ms.max
    else:
        source = LogarithmicMapping(ms.accuracy)
        for i, c in enumerate(ms.counts):
            if c:
                sketch.add(min(max(source.value(ms.offset + i), ms.min), ms.max), float(c))
        if ms.zeros:
            sketch.add(0.0, float(ms.zeros))
    return out


def _values(ms: MetricSummary) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The sketch's values: each bin's representative value, as often as the bin holds values."""
    mapping = LogarithmicMapping(ms.accuracy)
    values: list[float] = [0.0] * ms.zeros
    for i, c in enumerate(ms.counts):
        if c:
            values.extend([mapping.value(ms.offset + i)] * c)
    out = np.asarray(values, dtype=np.float64)
    return np.clip(out, ms.min, ms.max) if out.size else out


def expand(summaries: list[Summary], *, relative_accuracy: float = 0.01, seed: int = 0) -> FeatureBatch:
    """Rows rebuilt from ``summaries`` (see the module docstring)."""
    if not summaries:
        return FeatureBatch.empty()
    rng = np.random.default_rng(seed)
    total = sum(s.n for s in summaries)
    numeric: dict[str, Any] = {name: np.full(total, np.nan) for name, dt in NUMERIC_COLUMNS.items() if dt == "<f8"}
    numeric["time_unix_nano"] = np.zeros(total, dtype=np.int64)
    numeric["is_error"] = np.zeros(total, dtype=np.uint8)
    strings: dict[str, list[str | None]] = {c: [None] * total for c in COLUMNS if c not in NUMERIC_COLUMNS}
    at = 0
    for s in summaries:
        n = s.n
        if not n:
            continue
        sl = slice(at, at + n)
        # Over the part of the window the calls came in (a partial minute, then its rest, must not
        # reach ahead of the calls still to come: detectors would take those as late).
        span = s.last_unix_nano - s.first_unix_nano
        numeric["time_unix_nano"][sl] = s.first_unix_nano + (np.arange(n) * span // max(n - 1, 1) if n > 1 else 0)
        numeric["is_error"][sl] = rng.permutation(np.arange(n) < s.errors).astype(np.uint8)
        for c in KEY_COLUMNS:
            strings[c][sl] = [s.key.get(c)] * n
        for column, counts in (("error_type", s.error_types), ("finish_reason", s.finish_reasons)):
            cats: list[str | None] = [v for v, k in counts.items() for _ in range(k)]
            cats += [None] * (n - len(cats))
            strings[column][sl] = [cats[i] for i in rng.permutation(n)]
        for m, ms in s.metrics.items():
            v = _values(ms)[:n]
            col = np.full(n, np.nan)
            col[:v.size] = v
            numeric[m][sl] = col[rng.permutation(n)]
        at += n
    return FeatureBatch(n=total, numeric=numeric, strings=strings)


class FromSummaries(_Delegate):
    """Gives ``inner`` the rows rebuilt from a batch's summaries instead of its summarised rows."""

    def __init__(self, inner: Consumer, *, relative_accuracy: float = 0.01) -> None:
        super().__init__(inner)
        self._accuracy = relative_accuracy

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        if not batch.summarised and not batch.summaries:
            return self.inner.consume(batch, arrival_ns=arrival_ns)
        rows = expand(batch.summaries, relative_accuracy=self._accuracy, seed=batch.seq & 0xFFFFFFFF)
        return self.inner.consume(WireBatch(sidecar=batch.sidecar, seq=batch.seq, batch=rows,
                                            created_unix_nano=batch.created_unix_nano), arrival_ns=arrival_ns)


class _Baselines(Consumer, Protocol):
    store: BaselineStore

    def merge_summaries(self, summaries: list[Summary]) -> None: ...


class SummaryBaselines(_Delegate):
    """The baseline consumer's view: summaries merged exactly, summarised rows not counted again."""

    def __init__(self, inner: _Baselines) -> None:
        super().__init__(inner)
        self.baselines = inner

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        if not batch.summarised and not batch.summaries:
            return self.inner.consume(batch, arrival_ns=arrival_ns)
        if batch.summaries:
            self.baselines.merge_summaries(batch.summaries)
        return []


def merge_into(store: BaselineStore, summaries: list[Summary]) -> None:
    """Fold ``summaries`` into ``store``'s baselines (at each summary's hour of week when seasonal)."""
    accuracy = store.config.relative_accuracy
    for s in summaries:
        part = KeyBaseline({m: metric_baseline(ms, accuracy) for m, ms in s.metrics.items()}, calls=s.n,
                           errors=s.errors)
        key = BaselineKey(s.key.get("service"), s.key.get("request_model"), s.key.get("operation"),
                          s.key.get("region"))
        hour = None
        if store.config.seasonality:
            hour = int(hour_of_week(np.asarray([s.start_unix_nano], dtype=np.int64))[0])
        store.merge_part(key, part, hour)
