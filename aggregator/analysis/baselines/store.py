"""Global baselines: streaming mean, variance and quantiles per key, per region and per hour of week.

A key is (service, model, operation, region); every row updates the key of its region *and* the global
key of the same service, model and operation (``region=None``). Quantiles come from DDSketch, a
mergeable sketch with a relative-error guarantee; the state is saved as plain JSON, never pickled.

>>> store = BaselineStore(BaselineConfig())
>>> store.update(batch)                                     # doctest: +SKIP
>>> store.query(service="chat", region=None)                # doctest: +SKIP
"""

from __future__ import annotations

import base64
import math
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from ddsketch import DDSketch
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.pb import ddsketch_pb2
from ddsketch.pb.proto import DDSketchProto

from aggregator.analysis.state import read_json, write_json
from sentinel.config import ConfigError, setting
from sentinel.grouping import Key, group_by_key
from sentinel.model import NUMERIC_COLUMNS, FeatureBatch

__all__ = [
    "ALL_REGIONS",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_METRICS",
    "DEFAULT_RELATIVE_ACCURACY",
    "FORMAT_VERSION",
    "QUANTILES",
    "BaselineConfig",
    "BaselineKey",
    "BaselineStore",
    "KeyBaseline",
    "MetricBaseline",
    "hour_of_week",
]

#: The metrics a baseline is kept for by default (columns of :class:`FeatureBatch`); error rate is always kept.
DEFAULT_METRICS: tuple[str, ...] = ("latency_ms", "ttft_ms", "input_tokens", "output_tokens", "tokens_per_s",
                                    "cost_usd")
#: Upper bound on stored baselines (global, regional and seasonal together); the least recently updated go first.
DEFAULT_MAX_KEYS = 2000
#: DDSketch's guarantee: every quantile is within this fraction of the true value.
DEFAULT_RELATIVE_ACCURACY = 0.01
#: The quantiles served for every metric.
QUANTILES: tuple[tuple[str, float], ...] = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99))
#: ``query(region=ALL_REGIONS)`` returns the global baselines and every region's.
ALL_REGIONS = "*"
#: Version of the saved file; :meth:`BaselineStore.load` refuses others.
FORMAT_VERSION = 1
#: Batches whose sketch bins wait before the store adds them together (``_add_parts``): a batch's
#: bins of a key mostly fall where the previous batches' did, and adding them bin by bin in Python,
#: for six metrics and two baselines per group and batch, was a third of the store's cost (issue 16).
#: Bounds what waits to this many batches' bins (their arrays are views of each batch's own).
PENDING_BATCHES = 16

_METRIC_COLUMNS = frozenset(k for k, v in NUMERIC_COLUMNS.items() if v == "<f8")
_NS_PER_HOUR = 3_600_000_000_000
# 1970-01-01 was a Thursday: shift so that hour 0 of the week is Monday 00:00 UTC.
_EPOCH_HOUR_OF_WEEK = 3 * 24


class BaselineKey(NamedTuple):
    """What a baseline is kept for; ``region=None`` is the global baseline across regions."""

    service: str | None
    model: str | None
    operation: str | None
    region: str | None = None


def hour_of_week(time_unix_nano: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Hour of the week, 0 (Monday 00:00–01:00 UTC) to 167, of each event time."""
    hours = np.floor_divide(time_unix_nano, _NS_PER_HOUR)
    return np.asarray((hours + _EPOCH_HOUR_OF_WEEK) % 168, dtype=np.int64)


@dataclass(kw_only=True)
class BaselineConfig:
    """The baseline store's settings: the aggregator's ``baselines:`` section; :meth:`validate` names the key.

    >>> BaselineConfig(seasonality=True, max_keys=50_000).validate()
    """

    metrics: tuple[str, ...] = setting(DEFAULT_METRICS, "metrics with global baselines (comma-separated in env)")
    seasonality: bool = setting(False, "also keep one baseline per hour of week (UTC) per key")
    max_keys: int = setting(DEFAULT_MAX_KEYS, "baselines kept (global, regional and seasonal each count); the least "
                            "recently updated are evicted beyond it (~55 KiB each)")
    relative_accuracy: float = setting(DEFAULT_RELATIVE_ACCURACY, "relative error bound of the baseline quantiles "
                                       "(DDSketch)")

    def validate(self) -> None:
        if not self.metrics:
            raise ConfigError("baselines.metrics: must name at least one metric")
        for name in self.metrics:
            if name not in _METRIC_COLUMNS:
                raise ConfigError(f"baselines.metrics: {name!r} is not one of {', '.join(sorted(_METRIC_COLUMNS))}")
        if len(set(self.metrics)) != len(self.metrics):
            raise ConfigError("baselines.metrics: names a metric twice")
        if self.max_keys < 1:
            raise ConfigError("baselines.max_keys: must be greater than 0")
        if not 0.0 < self.relative_accuracy < 1.0:
            raise ConfigError("baselines.relative_accuracy: must be between 0 and 1 (exclusive)")


class MetricBaseline:
    """Count, mean, variance, min, max and a DDSketch of one metric; NaN values are skipped.

    Mean and variance are merged with Chan et al.'s pairwise formula, so a batch update equals the
    values added one by one, and two baselines merge into the baseline of all their values.

    The sketch's bins of the last few batches may wait in ``_pending`` (:meth:`add_reduced` with
    ``defer``); :attr:`sketch` adds them before anyone reads it (:meth:`flush`).
    """

    __slots__ = ("_pending", "_sketch", "count", "m2", "max", "mean", "min", "relative_accuracy")

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        self.relative_accuracy = relative_accuracy
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.min = math.inf
        self.max = -math.inf
        self._sketch: BaseDDSketch = DDSketch(relative_accuracy)
        self._pending: list[_Reduced] = []

    @property
    def sketch(self) -> BaseDDSketch:
        """The DDSketch of every value added (pending bins added first)."""
        if self._pending:
            self.flush()
        return self._sketch

    def flush(self) -> None:
        """Add the pending bins to the sketch's stores (:func:`_add_parts`)."""
        parts, self._pending = self._pending, []
        _add_parts(self._sketch._store, [(p.keys, p.weights) for p in parts])
        _add_parts(self._sketch._negative_store, [(p.neg_keys, p.neg_weights) for p in parts])

    @classmethod
    def of(cls, values: npt.NDArray[np.float64], relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY
           ) -> MetricBaseline:
        """The baseline of ``values`` alone (NaN skipped)."""
        out = cls(relative_accuracy)
        out.update(values)
        return out

    def update(self, values: npt.NDArray[np.float64]) -> None:
        """Add a batch of values (NaN skipped), reduced with numpy (:func:`_reduce_groups`)."""
        values = np.asarray(values, dtype=np.float64)
        reduced = _reduce_groups(values, np.zeros(values.size, dtype=np.intp), 1, self.sketch)[0]
        if reduced is not None:
            self.add_reduced(reduced)

    def add_reduced(self, r: _Reduced, *, defer: bool = False) -> bool:
        """Fold in values already reduced to moments and sketch bins (the same as adding them one by one).

        With ``defer`` the bins wait for :meth:`flush` (or the next read of :attr:`sketch`); ``True``
        when they are the first to wait (the caller then has this baseline to flush).
        """
        self._merge_moments(r.n, r.mean, r.m2, r.lo, r.hi)
        sketch = self._sketch
        sketch._zero_count += r.zeros
        sketch._count += r.n
        sketch._sum += r.total
        sketch._min = min(sketch._min, r.lo)
        sketch._max = max(sketch._max, r.hi)
        self._pending.append(r)
        if not defer:
            self.flush()
        return defer and len(self._pending) == 1

    def merge(self, other: MetricBaseline) -> None:
        """Fold ``other`` into this baseline (``other`` is not changed)."""
        if other.count == 0:
            return
        self._merge_moments(other.count, other.mean, other.m2, other.min, other.max)
        self.sketch.merge(other.sketch)

    def _merge_moments(self, n: int, mean: float, m2: float, lo: float, hi: float) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    @property
    def variance(self) -> float:
        """Population variance (NaN when empty)."""
        return self.m2 / self.count if self.count else math.nan

    @property
    def std(self) -> float:
        return math.sqrt(self.variance) if self.count else math.nan

    def quantile(self, q: float) -> float:
        """The sketch's estimate of quantile ``q`` (NaN when empty), kept within the exact min and max."""
        value = self.sketch.get_quantile_value(q) if self.count else None
        return math.nan if value is None else min(max(float(value), self.min), self.max)

    def summary(self) -> dict[str, float | int | None]:
        """What the API serves: count, mean, std, min, max, p50, p95, p99 (``None`` when empty)."""
        if not self.count:
            return {"count": 0, **dict.fromkeys(("mean", "std", "min", "max", *(n for n, _ in QUANTILES)))}
        out: dict[str, float | int | None] = {"count": self.count, "mean": self.mean, "std": self.std,
                                              "min": self.min, "max": self.max}
        for name, q in QUANTILES:
            out[name] = self.quantile(q)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state; the sketch is DDSketch's protobuf message, base64-encoded."""
        proto = DDSketchProto.to_proto(self.sketch)  # type: ignore[no-untyped-call]
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "relative_accuracy": self.relative_accuracy,
                "min": None if not self.count else self.min, "max": None if not self.count else self.max,
                "sketch": base64.b64encode(proto.SerializeToString()).decode("ascii")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricBaseline:
        out = cls(float(data["relative_accuracy"]))
        out.count = int(data["count"])
        out.mean = float(data["mean"])
        out.m2 = float(data["m2"])
        out.min = math.inf if data["min"] is None else float(data["min"])
        out.max = -math.inf if data["max"] is None else float(data["max"])
        proto = ddsketch_pb2.DDSketch()
        proto.ParseFromString(base64.b64decode(data["sketch"]))
        # The decoded mapping is rebuilt from gamma and can differ from a fresh one in the last bits of its
        # multiplier; merging into a fresh sketch keeps the bins and the exact mapping new values will use.
        out.sketch.merge(DDSketchProto.from_proto(proto))  # type: ignore[no-untyped-call]
        return out


@dataclass
class KeyBaseline:
    """Every metric's baseline of one key (and hour of week, when seasonal), plus its error rate."""

    metrics: dict[str, MetricBaseline]
    calls: int = 0
    errors: int = 0

    @classmethod
    def new(cls, config: BaselineConfig) -> KeyBaseline:
        return cls({m: MetricBaseline(config.relative_accuracy) for m in config.metrics})

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else math.nan

    def merge(self, other: KeyBaseline) -> None:
        self.calls += other.calls
        self.errors += other.errors
        for name, metric in other.metrics.items():
            mine = self.metrics.get(name)
            if mine is None:  # only when stores kept different metrics: take a copy
                self.metrics[name] = MetricBaseline.from_dict(metric.to_dict())
            else:
                mine.merge(metric)

    def to_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors,
                "metrics": {name: m.to_dict() for name, m in self.metrics.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KeyBaseline:
        return cls({name: MetricBaseline.from_dict(m) for name, m in data["metrics"].items()},
                   calls=int(data["calls"]), errors=int(data["errors"]))


# A stored entry: the key and its hour of week (None for the all-week baseline).
_Entry = tuple[BaselineKey, int | None]


@dataclass
class BaselineStore:
    """Baselines of every key, bounded to ``config.max_keys`` entries by least-recent update.

    >>> store = BaselineStore(BaselineConfig())
    >>> store.update(FeatureBatch.empty())
    >>> store.query()
    []
    """

    config: BaselineConfig
    _entries: OrderedDict[_Entry, KeyBaseline] = field(default_factory=OrderedDict, init=False, repr=False)
    evicted: int = field(default=0, init=False)
    # Metric baselines whose sketch bins may wait (MetricBaseline.flush), and batches since the start.
    _pending: list[MetricBaseline] = field(default_factory=list, init=False, repr=False)
    _batches: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.config.validate()

    def __len__(self) -> int:
        return len(self._entries)

    def update(self, batch: FeatureBatch) -> None:
        """Fold a batch into the baselines of its keys, at the event time of each row."""
        if batch.n == 0:
            return
        hours = hour_of_week(batch.numeric["time_unix_nano"]) if self.config.seasonality else None
        labels, codes = _labels(batch, hours)
        g = len(labels)
        calls = np.bincount(codes, minlength=g).tolist()
        errors = np.bincount(codes, weights=batch.numeric["is_error"], minlength=g).astype(np.int64).tolist()
        # Each metric is reduced for every (key, region, hour) group at once, then each group's
        # moments and sketch bins are added to every baseline it belongs to.
        # All metrics in one reduction: group (metric j, label i) is j * g + i. Each group's values are
        # the same rows in the same order as in a reduction per metric, so every sum is the same to the
        # bit; one call instead of one per metric (numpy's per-call cost dominated on 1,024-row batches).
        template = DDSketch(self.config.relative_accuracy)
        metrics = self.config.metrics
        columns = np.concatenate([np.asarray(batch.numeric[m], dtype=np.float64) for m in metrics])
        all_codes = (np.arange(len(metrics), dtype=np.intp)[:, None] * g + codes).reshape(-1)
        flat = _reduce_groups(columns, all_codes, len(metrics) * g, template)
        reduced = {m: flat[j * g:(j + 1) * g] for j, m in enumerate(metrics)}
        for i, ((service, model, operation, region), hour) in enumerate(labels):
            keys = [BaselineKey(service, model, operation, None)]
            if region is not None:
                keys.append(BaselineKey(service, model, operation, region))
            for key in keys:
                targets = [self._entry(key, None)]
                if hour is not None:
                    targets.append(self._entry(key, hour))
                for entry in targets:
                    entry.calls += calls[i]
                    entry.errors += errors[i]
                    for m, per_group in reduced.items():
                        r = per_group[i]
                        if r is not None:
                            metric = entry.metrics.get(m)
                            if metric is None:
                                metric = entry.metrics[m] = MetricBaseline(self.config.relative_accuracy)
                            if metric.add_reduced(r, defer=True):
                                self._pending.append(metric)
        self._batches += 1
        if self._batches % PENDING_BATCHES == 0:
            self.flush()

    def flush(self) -> None:
        """Add every baseline's pending sketch bins now (a read of a sketch adds its own)."""
        for metric in self._pending:
            metric.flush()
        self._pending.clear()

    def merge_part(self, key: BaselineKey, part: KeyBaseline, hour: int | None = None) -> None:
        """Fold the baseline of some calls of ``key`` (and ``hour``) into its global and regional baselines.

        How a sidecar's summaries are added (``aggregator/analysis/summaries.py``; rows go through :meth:`update`):
        metrics this store does not keep are left out.
        """
        if set(part.metrics) - set(self.config.metrics):
            part = KeyBaseline({m: b for m, b in part.metrics.items() if m in self.config.metrics},
                               calls=part.calls, errors=part.errors)
        keys = [BaselineKey(key.service, key.model, key.operation, None)]
        if key.region is not None:
            keys.append(key)
        for k in keys:
            self._entry(k, None).merge(part)
            if hour is not None:
                self._entry(k, hour).merge(part)

    def merge(self, other: BaselineStore) -> None:
        """Fold another store's baselines into this one (``other`` is not changed)."""
        for (key, hour), baseline in other._entries.items():
            self._entry(key, hour).merge(baseline)

    def get(self, key: BaselineKey, hour: int | None = None) -> dict[str, Any] | None:
        """The served form of one baseline (``hour`` selects a seasonal one), or ``None``."""
        baseline = self._entries.get((key, hour))
        return None if baseline is None else _served(key, hour, baseline)

    def baseline(self, key: BaselineKey, hour: int | None = None) -> KeyBaseline | None:
        """The live baseline of a key, for detectors (no copy; do not change it)."""
        return self._entries.get((key, hour))

    def query(self, service: str | None = None, model: str | None = None, operation: str | None = None,
              region: str | None = ALL_REGIONS, hour: int | None = None) -> list[dict[str, Any]]:
        """What ``GET /api/v1/baselines`` serves, sorted by key.

        ``service``, ``model`` and ``operation`` filter when given; ``region=ALL_REGIONS`` (the default)
        keeps global and regional baselines, ``region=None`` the global ones only, a name that region's.
        ``hour`` (0–167) selects the seasonal baselines of that hour of week instead of the all-week ones.
        """
        out = []
        for (key, h), baseline in self._entries.items():
            if h != hour:
                continue
            if service is not None and key.service != service:
                continue
            if model is not None and key.model != model:
                continue
            if operation is not None and key.operation != operation:
                continue
            if region != ALL_REGIONS and key.region != region:
                continue
            out.append(_served(key, h, baseline))
        out.sort(key=lambda d: tuple((v is not None, v or "") for v in (d["service"], d["model"], d["operation"],
                                                                        d["region"])))
        return out

    def clear(self) -> None:
        """Forget every baseline."""
        self._entries.clear()

    def to_doc(self) -> dict[str, Any]:
        """Every baseline as a JSON document (:meth:`from_doc` reads it back)."""
        return {"version": FORMAT_VERSION,
                "config": {"metrics": list(self.config.metrics), "seasonality": self.config.seasonality,
                           "relative_accuracy": self.config.relative_accuracy},
                "baselines": [{"key": list(key), "hour_of_week": hour, **baseline.to_dict()}
                              for (key, hour), baseline in self._entries.items()]}

    def from_doc(self, doc: Mapping[str, Any]) -> None:
        """Replace the baselines with those of ``doc`` (kept in their saved LRU order)."""
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"baseline file version {doc.get('version')!r}, expected {FORMAT_VERSION}")
        entries: OrderedDict[_Entry, KeyBaseline] = OrderedDict()
        for item in doc["baselines"]:
            key = BaselineKey(*item["key"])
            entries[(key, item["hour_of_week"])] = KeyBaseline.from_dict(item)
        self._entries = entries
        self._evict()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write every baseline as JSON, atomically (:func:`aggregator.analysis.state.write_json`)."""
        write_json(Path(path), self.to_doc())

    def load(self, path: str | os.PathLike[str]) -> None:
        """Replace the baselines with those saved at ``path``."""
        doc = read_json(Path(path), version=FORMAT_VERSION)
        if doc is None:
            raise FileNotFoundError(os.fspath(path))
        self.from_doc(doc)

    def _entry(self, key: BaselineKey, hour: int | None) -> KeyBaseline:
        entry = (key, hour)
        baseline = self._entries.get(entry)
        if baseline is None:
            baseline = self._entries[entry] = KeyBaseline.new(self.config)
            self._evict()
        else:
            self._entries.move_to_end(entry)
        return baseline

    def _evict(self) -> None:
        while len(self._entries) > self.config.max_keys:
            self._entries.popitem(last=False)
            self.evicted += 1


def _labels(batch: FeatureBatch, hours: npt.NDArray[np.int64] | None
            ) -> tuple[list[tuple[Key, int | None]], npt.NDArray[np.intp]]:
    """The distinct ((service, model, operation, region), hour or None) of the rows in order of first
    appearance (the order baselines are touched in, so the LRU order), and each row's index into them.

    From :func:`sentinel.grouping.group_by_key`, which the detectors' grouping of the same batch
    shares, rather than a tuple and a dict probe per row (a sixth of the store's cost, issue 16).
    """
    s = batch.strings
    codes, keys = group_by_key([s["service"], s["request_model"], s["operation"], s["region"]])
    labels: list[tuple[Key, int | None]]
    if hours is None:
        labels = [(k, None) for k in keys]
    else:
        pairs, inverse = np.unique(codes * 168 + hours, return_inverse=True)
        labels = [(keys[p // 168], p % 168) for p in pairs.tolist()]
        codes = inverse.reshape(-1)
    first = np.full(len(labels), batch.n, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(batch.n))
    order = np.argsort(first)
    rank = np.empty(len(labels), dtype=np.intp)
    rank[order] = np.arange(len(labels))
    return [labels[i] for i in order.tolist()], rank[codes]


class _Reduced(NamedTuple):
    """One group's values of one metric: moments, exact extremes, and DDSketch bins.

    ``keys``/``weights`` are the positive store's bins (ascending keys), ``neg_keys``/``neg_weights``
    the negative store's; ``zeros`` the values DDSketch counts as zero.
    """

    n: int
    mean: float
    m2: float
    lo: float
    hi: float
    total: float
    keys: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float64]
    neg_keys: npt.NDArray[np.int64]
    neg_weights: npt.NDArray[np.float64]
    zeros: float


_LN2 = math.log(2.0)
# How near a whole number (relative to 1 + |scaled log|) a key is recomputed with math.log. The two
# logarithms differ by an ulp or two, so the scaled values by ~4.4e-16 of their size whatever the
# accuracy (the multiplier scales both): 1e-11 leaves a margin of over ten thousand.
_BOUNDARY = 1e-11


def _sketch_keys(mapping: LogarithmicMapping, v: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """``mapping.key(x)`` for every (positive) ``x``: ``ceil(log(x) / log(2) * multiplier) + offset``, the
    operations of ``LogarithmicMapping.key`` in the same order (``math.log(x, 2)`` is ``log(x) / log(2)``).

    numpy's ``np.log`` differs from the C library's ``math.log`` in the last bit for some values,
    which moves a value sitting on a bucket boundary into the next bucket (tests/test_baselines.py
    found one at 5 % accuracy). So ``np.log`` gives every key, and the few values whose scaled
    logarithm lies near a whole number (``_BOUNDARY``) (where one bit could matter) are redone
    with ``math.log``: the keys, and so the sketches, are exactly the library's, without a Python
    call per value (``math.log`` mapped over every value was a sixth of the store's cost, issue 16).
    """
    scaled = np.log(v) / _LN2 * mapping._multiplier
    near = np.abs(scaled - np.rint(scaled)) < _BOUNDARY * (1.0 + np.abs(scaled))
    if near.any():
        idx = np.flatnonzero(near)
        exact = np.fromiter(map(math.log, v[idx].tolist()), dtype=np.float64, count=idx.size)
        scaled[idx] = exact / _LN2 * mapping._multiplier
    return (np.ceil(scaled) + mapping._offset).astype(np.int64)


_NO_KEYS: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
_NO_WEIGHTS: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)


def _bins_by_group(codes: npt.NDArray[np.intp], keys: npt.NDArray[np.int64], n_groups: int
                   ) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]:
    """Per group, its distinct keys (ascending) and how many values each holds (views of two arrays)."""
    out: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = [(_NO_KEYS, _NO_WEIGHTS)] * n_groups
    if keys.size == 0:
        return out
    lo = int(keys.min())
    span = int(keys.max()) - lo + 1
    pairs, counts = np.unique(codes.astype(np.int64) * span + (keys - lo), return_counts=True)
    groups = pairs // span
    bounds = np.searchsorted(groups, np.arange(n_groups + 1)).tolist()
    key_array = pairs % span + lo
    count_array = counts.astype(np.float64)
    for i in np.flatnonzero(np.diff(bounds)).tolist():
        a, b = bounds[i], bounds[i + 1]
        out[i] = (key_array[a:b], count_array[a:b])
    return out


def _reduce_groups(values: npt.NDArray[np.float64], codes: npt.NDArray[np.intp], n_groups: int,
                   template: BaseDDSketch) -> list[_Reduced | None]:
    """Reduce one metric's column for every group at once (``None`` for a group with no value).

    Replaces ``DDSketch.add`` value by value (pure Python, ~1 µs each): the bins come from the
    sketch's own logarithmic mapping evaluated with numpy, then one store update per bin
    (:func:`_add_bins`). ``template`` is a sketch of the target accuracy (for its mapping).
    """
    out: list[_Reduced | None] = [None] * n_groups
    valid = ~np.isnan(values)
    v = values[valid]
    if v.size == 0:
        return out
    c = codes[valid]
    count = np.bincount(c, minlength=n_groups)
    total = np.bincount(c, weights=v, minlength=n_groups)
    mean = total / np.maximum(count, 1)
    dev = v - mean[c]
    m2 = np.bincount(c, weights=dev * dev, minlength=n_groups)
    order = np.argsort(c, kind="stable")
    present = np.flatnonzero(count)
    starts = np.concatenate(([0], np.cumsum(count)[:-1]))[present]
    lo = np.minimum.reduceat(v[order], starts)
    hi = np.maximum.reduceat(v[order], starts)
    mapping = template._mapping
    assert isinstance(mapping, LogarithmicMapping)
    tiny = mapping.min_possible
    pos, neg = v > tiny, v < -tiny
    bins = _bins_by_group(c[pos], _sketch_keys(mapping, v[pos]), n_groups)
    neg_bins = _bins_by_group(c[neg], _sketch_keys(mapping, -v[neg]), n_groups) if neg.any() else None
    zeros = np.bincount(c[~(pos | neg)], minlength=n_groups).tolist()
    count_l, mean_l, m2_l, total_l = count.tolist(), mean.tolist(), m2.tolist(), total.tolist()
    for j, i in enumerate(present.tolist()):
        neg_keys, neg_weights = neg_bins[i] if neg_bins is not None else (_NO_KEYS, _NO_WEIGHTS)
        out[i] = _Reduced(count_l[i], mean_l[i], m2_l[i], float(lo[j]), float(hi[j]), total_l[i],
                          bins[i][0], bins[i][1], neg_keys, neg_weights, float(zeros[i]))
    return out


def _add_parts(store: Any, parts: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]) -> None:
    """``store.add(key, weight)`` for each bin of each part, all parts' bins in a few numpy calls.

    The dense store's range is grown part by part to its first and last key exactly as adding the
    parts one after the other would (so its layout, and the saved sketch, are the same), then every
    bin is added at once to the slice the parts cover. The counts are whole numbers, so they sum
    exactly in any order: the bins equal those of ``DDSketch.add`` value by value.
    """
    parts = [p for p in parts if p[0].size]
    if not parts:
        return
    for keys, _ in parts:  # keys ascend in each part
        store.add(int(keys[0]), 0.0)
        store.add(int(keys[-1]), 0.0)
    keys = parts[0][0] if len(parts) == 1 else np.concatenate([k for k, _ in parts])
    weights = parts[0][1] if len(parts) == 1 else np.concatenate([w for _, w in parts])
    first = int(keys.min())
    added = np.bincount(keys - first, weights=weights)
    a = first - store.offset
    bins = store.bins
    bins[a:a + added.size] = (np.array(bins[a:a + added.size], dtype=np.float64) + added).tolist()
    store.count += float(weights.sum())


def _served(key: BaselineKey, hour: int | None, baseline: KeyBaseline) -> dict[str, Any]:
    rate = baseline.error_rate
    return {**key._asdict(), "hour_of_week": hour, "calls": baseline.calls, "errors": baseline.errors,
            "error_rate": None if math.isnan(rate) else rate,
            "metrics": {name: m.summary() for name, m in baseline.metrics.items()}}
