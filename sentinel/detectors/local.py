"""The sidecar's fast-path detection: per (service, model, operation) key, every batch.

:class:`LocalDetector` scores each metric of a :class:`~sentinel.model.FeatureBatch` against the
key's state from *before* the batch (rolling z-score, or MAD / IQR for heavy tails), filters the
result with k-of-n persistence, adds static thresholds and the error rate, then folds the batch
into the state. Its settings are the YAML ``detection:`` map (:class:`LocalDetectionConfig`).

>>> d = LocalDetector(LocalDetectionConfig.from_mapping({"thresholds": {"latency_ms": {"max": 100}}}))
>>> from sentinel.model import FeatureBatch
>>> d.process(FeatureBatch.empty())
[]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from sentinel.config import ConfigError, parse_duration
from sentinel.detectors.error_rate import (
    DEFAULT_ERROR_RATE_THRESHOLD,
    DEFAULT_ERROR_WINDOW_S,
    DEFAULT_MIN_CALLS,
    ErrorRateWindow,
)
from sentinel.detectors.persistence import (
    DEFAULT_EXTREME_SIGMA,
    DEFAULT_K,
    DEFAULT_N,
    MAX_N,
    PersistenceFilter,
)
from sentinel.detectors.robust import DEFAULT_IQR_K, DEFAULT_WINDOW, RobustWindow
from sentinel.detectors.rolling import (
    DEFAULT_ALPHA,
    DEFAULT_CLIP_SIGMA,
    DEFAULT_MIN_STD,
    DEFAULT_MIN_STD_RATIO,
    DEFAULT_WARMUP,
    DEFAULT_Z_THRESHOLD,
    FloatArray,
    IntArray,
    RollingStats,
)
from sentinel.model import KEY_COLUMNS, FeatureBatch, LocalAnomaly

__all__ = [
    "DEFAULT_MAX_ANOMALIES_PER_BATCH",
    "DEFAULT_MAX_KEYS",
    "DIRECTIONS",
    "METHODS",
    "METRICS",
    "ErrorRateConfig",
    "LocalDetectionConfig",
    "LocalDetector",
    "MetricConfig",
    "PersistenceConfig",
    "RobustConfig",
    "ThresholdConfig",
    "ZScoreConfig",
]

#: The per-call metrics scored, in the order anomalies of one row are listed.
METRICS: tuple[str, ...] = ("latency_ms", "ttft_ms", "tokens_per_s", "input_tokens", "output_tokens", "cost_usd")
METHODS: tuple[str, ...] = ("zscore", "mad", "iqr", "none")
DIRECTIONS: tuple[str, ...] = ("high", "low", "both")
#: A slow stream is the symptom for throughput; for everything else, too much is.
DEFAULT_DIRECTIONS: dict[str, str] = {"tokens_per_s": "low"}
DEFAULT_MAX_KEYS = 10_000
DEFAULT_MAX_ANOMALIES_PER_BATCH = 100
_INITIAL_CAPACITY = 64
_STATE_VERSION = 1

Key = tuple[str | None, str | None, str | None]


@dataclass
class ZScoreConfig:
    """``detection.zscore``: the exponentially weighted mean/std baseline."""

    threshold: float = DEFAULT_Z_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    clip_sigma: float = DEFAULT_CLIP_SIGMA


@dataclass
class RobustConfig:
    """``detection.robust``: the ring-buffer window behind ``mad`` and ``iqr``."""

    window: int = DEFAULT_WINDOW
    threshold: float = DEFAULT_Z_THRESHOLD
    iqr_k: float = DEFAULT_IQR_K


@dataclass
class PersistenceConfig:
    """``detection.persistence``: report when k of the last n values exceed, or one is extreme."""

    k: int = DEFAULT_K
    n: int = DEFAULT_N
    extreme_sigma: float = DEFAULT_EXTREME_SIGMA


@dataclass
class ErrorRateConfig:
    """``detection.error_rate``: the share of failed calls over a sliding window."""

    enabled: bool = True
    window: float = DEFAULT_ERROR_WINDOW_S
    threshold: float = DEFAULT_ERROR_RATE_THRESHOLD
    min_calls: int = DEFAULT_MIN_CALLS


@dataclass
class MetricConfig:
    """``detection.metrics.<metric>``: how one metric is scored."""

    method: str = "zscore"
    direction: str = "high"


@dataclass
class ThresholdConfig:
    """``detection.thresholds.<metric>``: fixed limits, applied from the first call."""

    min: float | None = None
    max: float | None = None


def _default_metrics() -> dict[str, MetricConfig]:
    return {m: MetricConfig(direction=DEFAULT_DIRECTIONS.get(m, "high")) for m in METRICS}


@dataclass
class LocalDetectionConfig:
    """The YAML ``detection:`` map. Build with :meth:`from_mapping`; :meth:`validate` names keys."""

    warmup: int = DEFAULT_WARMUP
    max_keys: int = DEFAULT_MAX_KEYS
    max_anomalies_per_batch: int = DEFAULT_MAX_ANOMALIES_PER_BATCH
    min_std_ratio: float = DEFAULT_MIN_STD_RATIO
    min_std: float = DEFAULT_MIN_STD
    zscore: ZScoreConfig = field(default_factory=ZScoreConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    error_rate: ErrorRateConfig = field(default_factory=ErrorRateConfig)
    metrics: dict[str, MetricConfig] = field(default_factory=_default_metrics)
    thresholds: dict[str, ThresholdConfig] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> LocalDetectionConfig:
        """Parse and validate the ``detection:`` map; unknown keys and bad values raise
        :class:`ConfigError` naming the key (``detection.zscore.threshold: ...``)."""
        d = _as_map("detection", {} if d is None else d)
        out = cls()
        for key, raw in d.items():
            name = f"detection.{key}"
            if key in ("zscore", "robust", "persistence", "error_rate"):
                setattr(out, key, _fill(type(getattr(out, key)), raw, name))
            elif key == "metrics":
                for metric, sub in _as_map(name, raw).items():
                    _known_metric(f"{name}.{metric}", metric)
                    out.metrics[metric] = _fill(MetricConfig, sub, f"{name}.{metric}", base=out.metrics[metric])
            elif key == "thresholds":
                for metric, sub in _as_map(name, raw).items():
                    _known_metric(f"{name}.{metric}", metric)
                    out.thresholds[metric] = _fill(ThresholdConfig, sub, f"{name}.{metric}")
            elif key in _SCALARS:
                setattr(out, key, _convert(name, raw, _SCALARS[key]))
            else:
                raise ConfigError(f"{name}: unknown setting")
        out.validate()
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key."""
        _check("detection.warmup", self.warmup >= 1, "must be at least 1")
        _check("detection.max_keys", self.max_keys >= 1, "must be at least 1")
        _check("detection.max_anomalies_per_batch", self.max_anomalies_per_batch >= 0, "must be 0 or more")
        _check("detection.min_std_ratio", self.min_std_ratio >= 0, "must be 0 or more")
        _check("detection.min_std", self.min_std > 0, "must be greater than 0")
        _check("detection.zscore.threshold", self.zscore.threshold > 0, "must be greater than 0")
        _check("detection.zscore.alpha", 0 < self.zscore.alpha < 1, "must be between 0 and 1 (exclusive)")
        _check("detection.zscore.clip_sigma", self.zscore.clip_sigma > 0, "must be greater than 0")
        _check("detection.robust.window", self.robust.window >= 3, "must be at least 3")
        _check("detection.robust.threshold", self.robust.threshold > 0, "must be greater than 0")
        _check("detection.robust.iqr_k", self.robust.iqr_k >= 0, "must be 0 or more")
        _check("detection.persistence.n", 1 <= self.persistence.n <= MAX_N, f"must be between 1 and {MAX_N}")
        _check(
            "detection.persistence.k",
            1 <= self.persistence.k <= self.persistence.n,
            f"must be between 1 and persistence.n ({self.persistence.n})",
        )
        _check("detection.persistence.extreme_sigma", self.persistence.extreme_sigma > 0, "must be greater than 0")
        w = self.error_rate.window
        _check("detection.error_rate.window", w >= 1 and float(w).is_integer(), "must be whole seconds >= 1")
        _check("detection.error_rate.threshold", 0 <= self.error_rate.threshold < 1, "must be in [0, 1)")
        _check("detection.error_rate.min_calls", self.error_rate.min_calls >= 1, "must be at least 1")
        for metric, mc in self.metrics.items():
            _known_metric(f"detection.metrics.{metric}", metric)
            _check(f"detection.metrics.{metric}.method", mc.method in METHODS, f"must be one of {', '.join(METHODS)}")
            _check(
                f"detection.metrics.{metric}.direction",
                mc.direction in DIRECTIONS,
                f"must be one of {', '.join(DIRECTIONS)}",
            )
        for metric, tc in self.thresholds.items():
            key = f"detection.thresholds.{metric}"
            _known_metric(key, metric)
            _check(key, tc.min is not None or tc.max is not None, "needs min or max")
            if tc.min is not None and tc.max is not None:
                _check(f"{key}.min", tc.min <= tc.max, "must not be above max")


_SCALARS: dict[str, type] = {
    "warmup": int,
    "max_keys": int,
    "max_anomalies_per_batch": int,
    "min_std_ratio": float,
    "min_std": float,
}


def _check(key: str, ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _known_metric(key: str, metric: str) -> None:
    _check(key, metric in METRICS, f"unknown metric (one of {', '.join(METRICS)})")


def _as_map(key: str, raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a map, got {type(raw).__name__}")
    return raw


def _convert(key: str, raw: Any, tp: Any) -> Any:
    """One YAML scalar to ``tp`` (``int``, ``float``, ``str``, ``bool``, ``float | None``)."""
    bad = ConfigError(f"{key}: expected {getattr(tp, '__name__', str(tp))}, got {raw!r}")
    if tp == "float | None":
        return None if raw is None else _convert(key, raw, float)
    if isinstance(raw, bool) != (tp is bool) or isinstance(raw, Mapping | list):
        raise bad
    if tp is int:
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if not isinstance(raw, int):
            raise bad
        return raw
    if tp is float:
        try:
            value = float(raw)  # YAML reads "1e-9" (no dot) as a string
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value):
            raise bad
        return value
    if tp is str and not isinstance(raw, str):
        raise bad
    return raw


def _fill(cls: type[Any], raw: Any, prefix: str, base: Any = None) -> Any:
    """A ``cls`` dataclass from the map ``raw`` (over ``base`` or the defaults)."""
    values = dataclasses.asdict(base) if base is not None else {}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    for key, v in _as_map(prefix, raw).items():
        name = f"{prefix}.{key}"
        if key not in types:
            raise ConfigError(f"{name}: unknown setting (one of {', '.join(types)})")
        if cls is ErrorRateConfig and key == "window":
            try:
                values[key] = parse_duration(v)
            except ValueError as e:
                raise ConfigError(f"{name}: {e}") from None
        else:
            tp = {"int": int, "float": float, "str": str, "bool": bool}.get(str(types[key]), types[key])
            values[key] = _convert(name, v, tp)
    return cls(**values)


class _Stack:
    """The metrics scored by one method, held as one detector: series ``key_slot·m + j`` is
    metric ``j`` of the key in ``key_slot``, so a batch is one pass however many metrics."""

    def __init__(self, method: str, metrics: tuple[str, ...], config: LocalDetectionConfig) -> None:
        c = config
        self.method = method
        self.metrics = metrics
        self.rows = np.array([METRICS.index(m) for m in metrics], dtype=np.int64)
        directions = [c.metrics[m].direction for m in metrics]
        self.high = np.array([d != "low" for d in directions])
        self.low = np.array([d != "high" for d in directions])
        self.detector: RollingStats | RobustWindow
        if method == "zscore":
            self.detector = RollingStats(
                warmup=c.warmup,
                threshold=c.zscore.threshold,
                alpha=c.zscore.alpha,
                clip_sigma=c.zscore.clip_sigma,
                min_std_ratio=c.min_std_ratio,
                min_std=c.min_std,
            )
        else:
            self.detector = RobustWindow(
                method=method,
                window=c.robust.window,
                warmup=c.warmup,
                threshold=c.robust.threshold,
                iqr_k=c.robust.iqr_k,
                min_std_ratio=c.min_std_ratio,
                min_std=c.min_std,
            )
        p = c.persistence
        self.persistence = PersistenceFilter(k=p.k, n=p.n, extreme_sigma=p.extreme_sigma)

    def series(self, key_slots: IntArray) -> IntArray:
        """Series slots of ``key_slots``, metric-major: index ``j·len(key_slots) + g``."""
        m = len(self.metrics)
        return (key_slots[None, :] * m + np.arange(m)[:, None]).ravel()

    def resize(self, key_capacity: int) -> None:
        self.detector.resize(key_capacity * len(self.metrics))
        self.persistence.resize(key_capacity * len(self.metrics))

    def reset(self, key_slots: IntArray) -> None:
        s = self.series(key_slots)
        self.detector.reset(s)
        self.persistence.reset(s)

    @property
    def key_capacity(self) -> int:
        m = len(self.metrics)
        cap = self.detector.capacity
        return cap // m if cap == self.persistence.capacity and cap % m == 0 else -1


class LocalDetector:
    """Per-key streaming detection over feature batches; see the module docstring.

    Keys live in slots ``0..n_keys-1``; every sub-detector keeps state per slot. When
    ``max_keys`` are in use, the least recently seen key's slot is reused. ``dropped_anomalies``
    counts detections left out by ``max_anomalies_per_batch`` (and ``dropped_rows`` the rows of
    keys that found no slot) since the detector was made.
    """

    def __init__(self, config: LocalDetectionConfig | None = None) -> None:
        self.config = config if config is not None else LocalDetectionConfig()
        self.config.validate()
        c = self.config
        self.dropped_anomalies = 0
        self.dropped_rows = 0
        self._tick = 0
        self._keys: list[Key] = []
        self._slot_of: dict[Key, int] = {}
        self._last_seen: IntArray = np.zeros(0, dtype=np.int64)
        self._stacks = [
            _Stack(method, tuple(m for m in METRICS if c.metrics[m].method == method), c)
            for method in METHODS
            if method != "none" and any(c.metrics[m].method == method for m in METRICS)
        ]
        self._labels: list[tuple[str, str]] = [("error_rate", "error_rate")]
        self._labels += [(m, "threshold") for m in METRICS]
        self._labels += [(m, s.method) for s in self._stacks for m in s.metrics]
        self._label_ids = {lab: i for i, lab in enumerate(self._labels)}
        self._lo = np.array([_limit(c.thresholds.get(m), "min") for m in METRICS])
        self._hi = np.array([_limit(c.thresholds.get(m), "max") for m in METRICS])
        e = c.error_rate
        self._errors = (
            ErrorRateWindow(window_s=int(e.window), threshold=e.threshold, min_calls=e.min_calls) if e.enabled else None
        )
        self._resize(min(_INITIAL_CAPACITY, c.max_keys))

    @property
    def n_keys(self) -> int:
        return len(self._keys)

    @property
    def keys(self) -> list[Key]:
        """The keys held, by slot."""
        return list(self._keys)

    # -- slots -----------------------------------------------------------------------------

    def _resize(self, capacity: int) -> None:
        for stack in self._stacks:
            stack.resize(capacity)
        if self._errors is not None:
            self._errors.resize(capacity)
        last = np.zeros(capacity, dtype=np.int64)
        n = min(capacity, self._last_seen.size)
        last[:n] = self._last_seen[:n]
        self._last_seen = last

    def _assign_slots(self, batch_keys: list[Key]) -> IntArray:
        """Slot per distinct batch key (-1 if none could be had), evicting the least recently seen."""
        slots = np.array([self._slot_of.get(k, -1) for k in batch_keys], dtype=np.int64)
        new = np.flatnonzero(slots < 0)
        if new.size == 0:
            return slots
        n_held, max_keys = len(self._keys), self.config.max_keys
        free = list(range(n_held, min(n_held + new.size, max_keys)))
        if len(free) < new.size and n_held:
            # Evict among keys not in this batch, least recently seen first.
            candidates = np.ones(n_held, dtype=np.bool_)
            candidates[slots[slots >= 0]] = False
            pool = np.flatnonzero(candidates)
            take = min(new.size - len(free), pool.size)
            if take:
                reuse = np.sort(pool[np.argsort(self._last_seen[pool], kind="stable")[:take]])
                for slot in reuse.tolist():
                    del self._slot_of[self._keys[slot]]
                for stack in self._stacks:
                    stack.reset(reuse)
                if self._errors is not None:
                    self._errors.reset(reuse)
                free = reuse.tolist() + free
        needed = n_held + sum(1 for s in free if s >= n_held)
        if needed > self._last_seen.size:
            self._resize(min(max(needed, 2 * self._last_seen.size), max_keys))
        for i, slot in zip(new.tolist(), free, strict=False):
            key = batch_keys[i]
            if slot == len(self._keys):
                self._keys.append(key)
            else:
                self._keys[slot] = key
            self._slot_of[key] = slot
            slots[i] = slot
        return slots

    # -- detection -------------------------------------------------------------------------

    def process(self, batch: FeatureBatch) -> list[LocalAnomaly]:
        """Score ``batch`` against the state before it, update the state, return the detections."""
        if batch.n == 0:
            return []
        codes, batch_keys = _key_codes([batch.strings[c] for c in KEY_COLUMNS])
        slots = self._assign_slots(batch_keys)
        if (slots < 0).any():
            # More new keys in one batch than max_keys allows: their rows are not scored.
            ok = slots >= 0
            rows = np.flatnonzero(ok[codes])
            self.dropped_rows += batch.n - rows.size
            codes, slots = (np.cumsum(ok) - 1)[codes[rows]], slots[ok]
        else:
            rows = np.arange(batch.n)
        self._tick += 1
        self._last_seen[slots] = self._tick

        sort = np.argsort(codes, kind="stable")
        order = rows[sort]  # row indices grouped by key, in batch order within a key
        group = codes[sort]
        x = np.vstack([batch.numeric[m] for m in METRICS])[:, order]
        found = _Found()
        static = None
        if self.config.thresholds:
            static = (x > self._hi[:, None]) | (x < self._lo[:, None])  # NaN compares False
            scored = {int(r) for s in self._stacks for r in s.rows}
            for r in np.flatnonzero(static.any(axis=1)).tolist():
                if r not in scored:
                    i = np.flatnonzero(static[r])
                    nan = np.full(i.size, np.nan)
                    self._add_static(found, r, order[i], x[r, i], nan, nan)
        for stack in self._stacks:
            self._detect_stack(stack, x, static, order, group, slots, found)
        if self._errors is not None:
            self._detect_error_rate(batch, order, group, slots, found)
        return self._emit(batch, found)

    def _add_static(
        self, found: _Found, r: int, rows: IntArray, v: FloatArray, baseline: FloatArray, deviation: FloatArray
    ) -> None:
        hi = self._hi[r]
        label = np.full(rows.size, self._label_ids[(METRICS[r], "threshold")])
        threshold = np.where(v > hi, hi, self._lo[r])
        found.add(1, label, rows, v, baseline, deviation, threshold, np.full(rows.size, np.nan))

    def _detect_stack(
        self,
        stack: _Stack,
        x: FloatArray,
        static: npt.NDArray[np.bool_] | None,
        order: IntArray,
        group: IntArray,
        slots: IntArray,
        found: _Found,
    ) -> None:
        sub = x[stack.rows]
        valid = ~np.isnan(sub)
        v = sub[valid]
        if v.size == 0:
            return
        n_groups = slots.size
        m = len(stack.metrics)
        # Series group j·G + g = metric j of batch key g; metric-major, so still non-decreasing.
        sgroup = (np.arange(m)[:, None] * n_groups + group[None, :])[valid]
        sslots = stack.series(slots)
        rows = np.broadcast_to(order, sub.shape)[valid]
        j = sgroup // n_groups
        sc = stack.detector.score(sgroup, sslots, v)
        high = (v > sc.upper) & stack.high[j]
        low = (v < sc.lower) & stack.low[j]
        report = stack.persistence.filter(sgroup, sslots, high | low, sc.sigma)
        if static is not None:
            st = static[stack.rows][valid]
            if st.any():
                report &= ~st  # one report per value: the hard limit says it plainly
                i = np.flatnonzero(st)
                for r in np.unique(stack.rows[j[i]]).tolist():
                    ir = i[stack.rows[j[i]] == r]
                    self._add_static(found, r, rows[ir], v[ir], sc.baseline[ir], sc.deviation[ir])
        if report.any():
            i = np.flatnonzero(report)
            label = np.array([self._label_ids[(mt, stack.method)] for mt in stack.metrics])[j[i]]
            threshold = np.where(high[i], sc.upper[i], sc.lower[i])
            found.add(2, label, rows[i], v[i], sc.baseline[i], sc.deviation[i], threshold, sc.sigma[i])
        stack.detector.update(sgroup, sslots, v)

    def _detect_error_rate(
        self, batch: FeatureBatch, order: IntArray, group: IntArray, slots: IntArray, found: _Found
    ) -> None:
        assert self._errors is not None
        is_error = batch.numeric["is_error"][order]
        res = self._errors.update(group, slots, batch.numeric["time_unix_nano"][order], is_error)
        fired = np.flatnonzero(res.fired)
        if fired.size == 0:
            return
        # Point at the key's last failed call in this batch (its last call, if none failed).
        starts = np.searchsorted(group, fired)
        ends = np.searchsorted(group, fired, side="right")
        pos = []
        for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
            failed = np.flatnonzero(is_error[s:e])
            pos.append(s + int(failed[-1]) if failed.size else e - 1)
        n = fired.size
        nan = np.full(n, np.nan)
        found.add(0, np.zeros(n, np.int64), order[pos], res.rate[fired], nan, nan,
                  np.full(n, self._errors.threshold), nan)

    def _emit(self, batch: FeatureBatch, found: _Found) -> list[LocalAnomaly]:
        if not found.parts:
            return []
        prio, label, rows, value, baseline, deviation, threshold, sigma = (
            np.concatenate(c) for c in zip(*found.parts, strict=True)
        )
        cap = self.config.max_anomalies_per_batch
        keep = np.arange(rows.size)
        if rows.size > cap:
            # Keep error rates, then hard limits, then the statistically strongest.
            keep = np.lexsort((-np.abs(np.nan_to_num(sigma, nan=np.inf)), prio))[:cap]
            self.dropped_anomalies += int(rows.size - cap)
        keep = keep[np.lexsort((label[keep], rows[keep]))]
        s = batch.strings
        times = batch.numeric["time_unix_nano"]
        out = []
        for i in keep.tolist():
            r = int(rows[i])
            metric, method = self._labels[int(label[i])]
            out.append(
                LocalAnomaly(
                    metric=metric,
                    value=float(value[i]),
                    baseline=float(baseline[i]),
                    deviation=float(deviation[i]),
                    threshold=float(threshold[i]),
                    sigma=float(sigma[i]),
                    method=method,
                    service=s["service"][r],
                    model=s["request_model"][r],
                    operation=s["operation"][r],
                    trace_id=s["trace_id"][r],
                    span_id=s["span_id"][r],
                    time_unix_nano=int(times[r]),
                )
            )
        return out

    # -- state -----------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The whole detector state as plain JSON-able data (lists, numbers, strings, None)."""
        n = len(self._keys)
        return {
            "version": _STATE_VERSION,
            "tick": self._tick,
            "dropped_anomalies": self.dropped_anomalies,
            "dropped_rows": self.dropped_rows,
            "keys": [list(k) for k in self._keys],
            "last_seen": self._last_seen[:n].tolist(),
            "stacks": [
                {
                    "method": s.method,
                    "metrics": list(s.metrics),
                    "series": s.detector.to_state(n * len(s.metrics)),
                    "persistence": s.persistence.to_state(n * len(s.metrics)),
                }
                for s in self._stacks
            ],
            "error_rate": None if self._errors is None else self._errors.to_state(n),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: LocalDetectionConfig | None = None) -> LocalDetector:
        """A detector with ``config`` and the state :meth:`to_state` saved.

        Raises ``ValueError`` if the state is malformed or was made with other methods, metrics
        or window sizes (start afresh then: baselines re-learn within ``warmup`` calls).
        """
        det = cls(config)
        try:
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported state version {state.get('version')!r}")
            keys: list[Key] = [(k[0], k[1], k[2]) for k in state["keys"]]
            n = len(keys)
            saved = [(s["method"], tuple(s["metrics"])) for s in state["stacks"]]
            if saved != [(s.method, s.metrics) for s in det._stacks]:
                raise ValueError(f"state scores {saved}, the config differently")
            for stack, sub in zip(det._stacks, state["stacks"], strict=True):
                stack.detector.load_state(sub["series"])
                stack.persistence.load_state(sub["persistence"])
                if stack.key_capacity != n:
                    raise ValueError(f"{stack.method} state does not hold {n} keys")
            if (state["error_rate"] is None) != (det._errors is None):
                raise ValueError("state and config disagree on error_rate.enabled")
            if det._errors is not None:
                det._errors.load_state(state["error_rate"])
                if det._errors.capacity != n:
                    raise ValueError(f"error-rate state does not hold {n} keys")
            det._keys = keys
            det._slot_of = {k: i for i, k in enumerate(keys)}
            det._last_seen = np.asarray(state["last_seen"], dtype=np.int64)
            if len(det._slot_of) != n or det._last_seen.shape != (n,):
                raise ValueError("keys and last_seen disagree")
            det._tick = int(state["tick"])
            det.dropped_anomalies = int(state.get("dropped_anomalies", 0))
            det.dropped_rows = int(state.get("dropped_rows", 0))
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"malformed detector state: {e!r}") from None
        return det


def _limit(tc: ThresholdConfig | None, which: str) -> float:
    value = None if tc is None else getattr(tc, which)
    if value is None:
        return -math.inf if which == "min" else math.inf
    return float(value)


def _key_codes(columns: list[list[str | None]]) -> tuple[IntArray, list[Key]]:
    """Compact key code per row (0..K-1) and the K distinct keys, from the key columns.

    Hashing a tuple per row is the slowest step of a batch, so each column is encoded on its own
    and a column holding one value throughout (a sidecar usually sees one service) is skipped.
    """
    n = len(columns[0])
    positions = range(n)
    code = np.zeros(n, dtype=np.int64)
    values: list[list[str | None]] = []
    for col in columns:
        if col.count(col[0]) == n:
            values.append([col[0]])
            continue
        seen: dict[str | None, int] = {}
        first = np.fromiter(map(seen.setdefault, col, positions), dtype=np.int64, count=n)
        uniq, inverse = np.unique(first, return_inverse=True)
        values.append([col[i] for i in uniq.tolist()])
        code = code * uniq.size + inverse
    uniq, inverse = np.unique(code, return_inverse=True)
    keys: list[Key] = []
    for c in uniq.tolist():
        parts: list[str | None] = []
        for vals in reversed(values):
            c, i = divmod(c, len(vals))
            parts.append(vals[i])
        keys.append((parts[2], parts[1], parts[0]))
    return inverse.astype(np.int64), keys


class _Found:
    """Detections gathered over one batch, as parallel arrays (priority, label id, row, ...)."""

    def __init__(self) -> None:
        self.parts: list[tuple[npt.NDArray[Any], ...]] = []

    def add(
        self,
        priority: int,
        label: IntArray,
        rows: IntArray,
        value: FloatArray,
        baseline: FloatArray,
        deviation: FloatArray,
        threshold: FloatArray,
        sigma: FloatArray,
    ) -> None:
        prio = np.full(rows.size, priority, dtype=np.int64)
        self.parts.append((prio, label, rows, value, baseline, deviation, threshold, sigma))
