"""The sidecar's fast-path detection: per (service, model, operation) key, every batch.

:class:`LocalDetector` scores each metric of a :class:`~sentinel.model.FeatureBatch` against the
key's state from *before* the batch (a z-score against a time-decayed baseline, or MAD / IQR for
heavy tails), filters the result with k-of-n persistence, reports sustained level shifts (a CUSUM
on the z-scores), adds static thresholds and the error rate, then folds the batch into the state.
Its settings are the YAML ``detection:`` map (:class:`LocalDetectionConfig`).

>>> d = LocalDetector(LocalDetectionConfig.from_mapping({"thresholds": {"latency_ms": {"max": 100}}}))
>>> from sentinel.model import FeatureBatch
>>> d.process(FeatureBatch.empty())
[]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from sentinel.grouping import group_by_key
from sentinel.model import KEY_COLUMNS, FeatureBatch, LocalAnomaly
from sidecar.detectors.error_rate import ErrorRateWindow
from sidecar.detectors.level_shift import LevelShift
from sidecar.detectors.local_config import (
    DEFAULT_DIRECTIONS,
    DEFAULT_MAX_ANOMALIES_PER_BATCH,
    DEFAULT_MAX_KEYS,
    DEFAULT_TRANSFORMS,
    DIRECTIONS,
    LOG_UNITS,
    METHODS,
    METRICS,
    TRANSFORMS,
    ErrorRateConfig,
    LevelShiftConfig,
    LocalDetectionConfig,
    MetricConfig,
    PersistenceConfig,
    RobustConfig,
    ThresholdConfig,
    ZScoreConfig,
)
from sidecar.detectors.persistence import PersistenceFilter
from sidecar.detectors.robust import RobustWindow
from sidecar.detectors.rolling import FloatArray, IntArray, RollingStats

__all__ = [
    "DEFAULT_DIRECTIONS",
    "DEFAULT_MAX_ANOMALIES_PER_BATCH",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_TRANSFORMS",
    "DIRECTIONS",
    "LEVEL_SHIFT",
    "LOG_UNITS",
    "METHODS",
    "METRICS",
    "TRANSFORMS",
    "ErrorRateConfig",
    "LevelShiftConfig",
    "LocalDetectionConfig",
    "LocalDetector",
    "MetricConfig",
    "PersistenceConfig",
    "RobustConfig",
    "ThresholdConfig",
    "ZScoreConfig",
]

_INITIAL_CAPACITY = 64
_STATE_VERSION = 3  # 2: stacks are per (method, transform); 3: time-decayed baseline, level shifts
#: ``LocalAnomaly.method`` of a sustained shift reported by the CUSUM.
LEVEL_SHIFT = "level_shift"

Key = tuple[str | None, str | None, str | None]


class _Stack:
    """The metrics scored by one method on one scale, held as one detector: series
    ``key_slot·m + j`` is metric ``j`` of the key in ``key_slot``, so a batch is one pass however
    many metrics.

    With ``transform == "log"`` the detector sees ``log1p(max(value, 0) / unit)`` (``unit`` from
    :data:`LOG_UNITS`, per metric); its relative std floor
    ``min_std_ratio`` then becomes the absolute floor ``log1p(min_std_ratio)`` in log units (the
    same "at least that share of the level" in original units, whatever the level).
    """

    def __init__(self, method: str, transform: str, metrics: tuple[str, ...], config: LocalDetectionConfig) -> None:
        c = config
        self.method = method
        self.transform = transform
        self.log = transform == "log"
        self.metrics = metrics
        self.rows = np.array([METRICS.index(m) for m in metrics], dtype=np.int64)
        self.unit = np.array([LOG_UNITS.get(m, 1.0) for m in metrics])
        self.scaled = bool((self.unit != 1.0).any())
        directions = [c.metrics[m].direction for m in metrics]
        self.high = np.array([d != "low" for d in directions])
        self.low = np.array([d != "high" for d in directions])
        min_std_ratio, min_std = c.min_std_ratio, c.min_std
        if self.log:
            min_std_ratio, min_std = 0.0, max(c.min_std, math.log1p(c.min_std_ratio))
        self.detector: RollingStats | RobustWindow
        self.shift: LevelShift | None = None
        if method == "zscore":
            self.detector = RollingStats(
                warmup=c.warmup,
                threshold=c.zscore.threshold,
                half_life_s=c.zscore.half_life,
                clip_sigma=c.zscore.clip_sigma,
                min_std_ratio=min_std_ratio,
                min_std=min_std,
            )
            ls = c.level_shift
            if ls.enabled:
                self.shift = LevelShift(drift=ls.drift, threshold=ls.threshold, cap_sigma=ls.cap_sigma,
                                        relearn_after_s=ls.relearn_after)
        else:
            self.detector = RobustWindow(
                method=method,
                window=c.robust.window,
                warmup=c.warmup,
                threshold=c.robust.threshold,
                iqr_k=c.robust.iqr_k,
                min_std_ratio=min_std_ratio,
                min_std=min_std,
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
        if self.shift is not None:
            self.shift.resize(key_capacity * len(self.metrics))

    def reset(self, key_slots: IntArray) -> None:
        self.reset_series(self.series(key_slots))

    def reset_series(self, s: IntArray) -> None:
        self.detector.reset(s)
        self.persistence.reset(s)
        if self.shift is not None:
            self.shift.reset(s)

    @property
    def key_capacity(self) -> int:
        m = len(self.metrics)
        cap = self.detector.capacity
        ok = cap == self.persistence.capacity and cap % m == 0
        if self.shift is not None:
            ok = ok and self.shift.capacity == cap
        return cap // m if ok else -1


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
        # One stack per (method, transform) in use: one vectorised pass each per batch.
        self._stacks = []
        for method in METHODS:
            for transform in TRANSFORMS:
                ms = tuple(m for m in METRICS if (c.metrics[m].method, c.metrics[m].transform) == (method, transform))
                if method != "none" and ms:
                    self._stacks.append(_Stack(method, transform, ms, c))
        self._labels: list[tuple[str, str]] = [("error_rate", "error_rate")]
        self._labels += [(m, "threshold") for m in METRICS]
        # Scored labels in METRICS order, so a row's anomalies are listed in that order.
        self._labels += [(m, c.metrics[m].method) for m in METRICS if c.metrics[m].method != "none"]
        if c.level_shift.enabled:
            self._labels += [(m, LEVEL_SHIFT) for m in METRICS if c.metrics[m].method == "zscore"]
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
        codes, batch_keys = group_by_key([batch.strings[c] for c in KEY_COLUMNS])
        # Three key columns in, so every key is a (service, model, operation) triple.
        slots = self._assign_slots(cast("list[Key]", batch_keys))
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
        times_s = batch.numeric["time_unix_nano"][order].astype(np.float64) / 1e9
        for stack in self._stacks:
            self._detect_stack(stack, x, static, order, group, slots, times_s, found)
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
        times_s: FloatArray,
        found: _Found,
    ) -> None:
        sub = x[stack.rows]
        valid = ~np.isnan(sub)
        v = sub[valid]  # original units: what anomalies report as value
        if v.size == 0:
            return
        n_groups = slots.size
        m = len(stack.metrics)
        # Series group j·G + g = metric j of batch key g; metric-major, so still non-decreasing.
        sgroup = (np.arange(m)[:, None] * n_groups + group[None, :])[valid]
        sslots = stack.series(slots)
        rows = np.broadcast_to(order, sub.shape)[valid]
        t = np.broadcast_to(times_s, sub.shape)[valid]
        j = sgroup // n_groups
        # The detector works on the stack's scale; baseline and threshold are mapped back below.
        u = v
        if stack.log:
            u = np.log1p(np.maximum(v, 0.0) / stack.unit[j] if stack.scaled else np.maximum(v, 0.0))
        sc = stack.detector.score(sgroup, sslots, u)
        high = (u > sc.upper) & stack.high[j]
        low = (u < sc.lower) & stack.low[j]
        report = stack.persistence.filter(sgroup, sslots, high | low, sc.sigma)
        learn: npt.NDArray[np.bool_] | None = None
        shift_at = np.zeros(0, dtype=np.int64)
        shift_limit = sc.baseline
        if stack.shift is not None:
            series_metric = np.arange(sslots.size) // n_groups
            sh = stack.shift.update(sgroup, sslots, sc.sigma, t, stack.high[series_metric], stack.low[series_metric])
            # While shifted, the point anomalies on that side are the same incident, and for
            # relearn_after the baseline is frozen so the shift is not learned away.
            report &= ~((sh.state > 0) & high) & ~((sh.state < 0) & low)
            learn = sh.learn
            shift_at = np.flatnonzero(sh.report)
            shift_limit = sc.baseline + np.sign(sh.report) * stack.shift.drift * sc.deviation
        baseline, upper, lower = sc.baseline, sc.upper, sc.lower
        if stack.log:
            # Back to original units (expm1 is monotone, so the limit crossed maps to a limit);
            # deviation and sigma stay on the log scale, where they were measured.
            unit = stack.unit[j] if stack.scaled else 1.0
            baseline, upper, lower, shift_limit = (np.expm1(a) * unit for a in (baseline, upper, lower, shift_limit))
        if static is not None:
            st = static[stack.rows][valid]
            if st.any():
                report &= ~st  # one report per value: the hard limit says it plainly
                i = np.flatnonzero(st)
                for r in np.unique(stack.rows[j[i]]).tolist():
                    ir = i[stack.rows[j[i]] == r]
                    self._add_static(found, r, rows[ir], v[ir], baseline[ir], sc.deviation[ir])
        if report.any():
            i = np.flatnonzero(report)
            label = np.array([self._label_ids[(mt, stack.method)] for mt in stack.metrics])[j[i]]
            threshold = np.where(high[i], upper[i], lower[i])
            found.add(2, label, rows[i], v[i], baseline[i], sc.deviation[i], threshold, sc.sigma[i])
        if shift_at.size:
            i = shift_at
            label = np.array([self._label_ids[(mt, LEVEL_SHIFT)] for mt in stack.metrics])[j[i]]
            found.add(1, label, rows[i], v[i], baseline[i], sc.deviation[i], shift_limit[i], sc.sigma[i])
        if not isinstance(stack.detector, RollingStats):
            stack.detector.update(sgroup, sslots, u)
        elif learn is None:
            stack.detector.update(sgroup, sslots, u, t)
        else:
            stack.detector.update(sgroup[learn], sslots, u[learn], t[learn])


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

    # -- level shifts ----------------------------------------------------------------------

    def shifts(self) -> list[tuple[Key, str, int, float]]:
        """The series now in a reported level shift: (key, metric, +1 up / -1 down, event time
        in unix seconds it was reported), by key slot and metric."""
        out = []
        for stack in self._stacks:
            if stack.shift is None:
                continue
            m = len(stack.metrics)
            for s in np.flatnonzero(stack.shift.shifted_[: len(self._keys) * m]).tolist():
                out.append((self._keys[s // m], stack.metrics[s % m], int(stack.shift.shifted_[s]),
                            float(stack.shift.since_[s])))
        return out

    def relearn(self, key: Key | None = None) -> int:
        """Forget the z-score baselines and level-shift state of ``key`` (every key if None), on
        purpose: after an operator accepted a shift as the new normal. They re-learn within
        ``warmup`` values. Returns the number of keys reset."""
        slots = np.arange(len(self._keys)) if key is None else np.array(
            [self._slot_of[key]] if key in self._slot_of else [], dtype=np.int64)
        if slots.size:
            for stack in self._stacks:
                if stack.shift is not None:
                    stack.reset(slots)
        return int(slots.size)

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
                    "transform": s.transform,
                    "metrics": list(s.metrics),
                    "series": s.detector.to_state(n * len(s.metrics)),
                    "persistence": s.persistence.to_state(n * len(s.metrics)),
                    "shift": None if s.shift is None else s.shift.to_state(n * len(s.metrics)),
                }
                for s in self._stacks
            ],
            "error_rate": None if self._errors is None else self._errors.to_state(n),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: LocalDetectionConfig | None = None) -> LocalDetector:
        """A detector with ``config`` and the state :meth:`to_state` saved.

        Raises ``ValueError`` if the state is malformed or was made with other methods, metrics,
        transforms or window sizes (start afresh then: baselines re-learn within ``warmup`` calls).
        """
        det = cls(config)
        try:
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported state version {state.get('version')!r}")
            keys: list[Key] = [(k[0], k[1], k[2]) for k in state["keys"]]
            n = len(keys)
            saved = [(s["method"], s["transform"], tuple(s["metrics"])) for s in state["stacks"]]
            if saved != [(s.method, s.transform, s.metrics) for s in det._stacks]:
                raise ValueError(f"state scores {saved}, the config differently")
            for stack, sub in zip(det._stacks, state["stacks"], strict=True):
                stack.detector.load_state(sub["series"])
                stack.persistence.load_state(sub["persistence"])
                if (sub["shift"] is None) != (stack.shift is None):
                    raise ValueError("state and config disagree on level_shift.enabled")
                if stack.shift is not None:
                    stack.shift.load_state(sub["shift"])
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
