"""Exponentially weighted rolling level and robust scale for many series, decayed by event time.

Each series (one slot) keeps a count of values, a weight, a mean, a mean absolute deviation and the
event time it was last updated. Weights decay **per second of event time**: a value ``half_life_s``
seconds older than another counts half as much, however many calls arrived in between, so the
baseline covers a span of time (a burst of a thousand calls in a second is one second of evidence,
not a thousand half-lives). So that a key seen rarely keeps a baseline of more than its last call,
the prior's weight never decays below ``warmup`` values' worth (at low rates the horizon is then
counted in values).

The scale is robust: the weighted mean absolute deviation (× √(π/2), the std for normal data) of
values winsorised to mean ± ``clip_sigma``·std, so one wild value moves it by a bounded amount.

Values are handed over *grouped*: ``group`` is a non-decreasing array of batch-local group ids
``0..G-1`` (one per value, values of a group in time order) and ``slots[g]`` is the series slot of
group ``g``. :func:`group_positions` gives each value's position inside its group. A batch is
folded in at once: each value weighted by its age at the group's newest time, the prior decayed to
it; the mean is exactly that of one-at-a-time updates, the deviation is measured from the mean
before the batch.

>>> import numpy as np
>>> r = RollingStats(warmup=3, half_life_s=60.0, capacity=1)
>>> r.update(np.zeros(4, np.int64), np.array([0]), np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(4))
>>> round(float(r.mean_[0]), 4), int(r.count_[0])
(2.5, 4)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_CLIP_SIGMA",
    "DEFAULT_HALF_LIFE_S",
    "DEFAULT_MIN_STD",
    "DEFAULT_MIN_STD_RATIO",
    "DEFAULT_WARMUP",
    "DEFAULT_Z_THRESHOLD",
    "FloatArray",
    "IntArray",
    "RollingStats",
    "Scores",
    "group_positions",
    "resize_rows",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_WARMUP = 30
#: |z| beyond this is anomalous. With log-scale metrics and k-of-n persistence, 3.5 keeps false
#: alarms on clean LLM traffic near 0.03 % of rows (see loadtest/detector_quality.py).
DEFAULT_Z_THRESHOLD = 3.5
#: Half-life of the baseline in seconds of event time: a day, so the baseline spans the daily
#: cycle (a diurnal ramp is within its spread) and a sustained shift is not learned away in
#: minutes; the level-shift CUSUM catches shifts the z-score alone would miss.
DEFAULT_HALF_LIFE_S = 86400.0
#: Values are winsorised to mean ± clip_sigma·std before they update the baseline.
DEFAULT_CLIP_SIGMA = 4.0
#: The std used for scoring is at least this fraction of |mean| ...
DEFAULT_MIN_STD_RATIO = 0.05
#: ... and at least this absolute value.
DEFAULT_MIN_STD = 1e-9
#: Mean absolute deviation → std for normal data.
MAD_TO_STD = math.sqrt(math.pi / 2.0)


class Scores(NamedTuple):
    """Per-value scores against the state before the batch; all ``NaN`` where not yet warm."""

    baseline: FloatArray  # mean or median
    deviation: FloatArray  # std or scaled MAD / IQR
    sigma: FloatArray  # (value - baseline) / deviation
    upper: FloatArray  # a value above this is anomalous (direction "high")
    lower: FloatArray  # a value below this is anomalous (direction "low")


def group_positions(group: IntArray, n_groups: int) -> tuple[IntArray, IntArray, IntArray]:
    """``(counts, starts, rank)``: values per group, index of each group's first value, and each
    value's 0-based position inside its group (``group`` must be non-decreasing)."""
    counts = np.bincount(group, minlength=n_groups).astype(np.int64)
    starts = np.zeros(n_groups, dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rank = np.arange(group.size, dtype=np.int64) - starts[group]
    return counts, starts, rank


class RollingStats:
    """Time-decayed mean and robust scale per slot, with warm-up, clipping and a std floor.

    Learned state is indexed by slot: ``count_`` (values seen), ``weight_`` (their decayed
    weight), ``mean_``, ``dev_`` (mean absolute deviation) and ``time_`` (event time of the last
    update, seconds; ``-inf`` when empty). Keyword-only parameters are stored untouched.
    """

    def __init__(
        self,
        *,
        warmup: int = DEFAULT_WARMUP,
        threshold: float = DEFAULT_Z_THRESHOLD,
        half_life_s: float = DEFAULT_HALF_LIFE_S,
        clip_sigma: float = DEFAULT_CLIP_SIGMA,
        min_std_ratio: float = DEFAULT_MIN_STD_RATIO,
        min_std: float = DEFAULT_MIN_STD,
        capacity: int = 0,
    ) -> None:
        self.warmup = warmup
        self.threshold = threshold
        self.half_life_s = half_life_s
        self.clip_sigma = clip_sigma
        self.min_std_ratio = min_std_ratio
        self.min_std = min_std
        self.decay_per_s = math.log(2.0) / half_life_s
        self.count_: IntArray = np.zeros(capacity, dtype=np.int64)
        self.weight_: FloatArray = np.zeros(capacity, dtype=np.float64)
        self.mean_: FloatArray = np.zeros(capacity, dtype=np.float64)
        self.dev_: FloatArray = np.zeros(capacity, dtype=np.float64)
        self.time_: FloatArray = np.full(capacity, -np.inf)

    @property
    def capacity(self) -> int:
        return int(self.count_.size)

    def resize(self, capacity: int) -> None:
        """Grow (or shrink) the slot arrays; new slots start empty."""
        self.count_ = resize_rows(self.count_, capacity, 0)
        self.weight_ = resize_rows(self.weight_, capacity, 0.0)
        self.mean_ = resize_rows(self.mean_, capacity, 0.0)
        self.dev_ = resize_rows(self.dev_, capacity, 0.0)
        self.time_ = resize_rows(self.time_, capacity, -np.inf)

    def reset(self, slots: IntArray) -> None:
        """Forget the series in ``slots`` (reused for another key, or re-learned on purpose)."""
        self.count_[slots] = 0
        self.weight_[slots] = 0.0
        self.mean_[slots] = 0.0
        self.dev_[slots] = 0.0
        self.time_[slots] = -np.inf

    def std(self, slots: IntArray) -> FloatArray:
        """The scale used for scoring: the robust std, floored."""
        mean = self.mean_[slots]
        # The floor keeps constant warm-up data (deviation 0) from turning any change into infinite z.
        floor = np.maximum(self.min_std_ratio * np.abs(mean), self.min_std)
        return np.maximum(self.dev_[slots] * MAD_TO_STD, floor)

    def warm(self, slots: IntArray) -> npt.NDArray[np.bool_]:
        return self.count_[slots] >= self.warmup

    def score(self, group: IntArray, slots: IntArray, values: FloatArray) -> Scores:
        """Score ``values`` against each slot's state before this batch (no update)."""
        warm = self.warm(slots)
        mean = np.where(warm, self.mean_[slots], np.nan)[group]
        std = np.where(warm, self.std(slots), np.nan)[group]
        lim = self.threshold * std
        return Scores(mean, std, (values - mean) / std, mean + lim, mean - lim)

    def update(self, group: IntArray, slots: IntArray, values: FloatArray, times_s: FloatArray) -> None:
        """Fold ``values`` (grouped, NaN-free; event times ``times_s`` in seconds) into the slots."""
        n_groups = slots.size
        if values.size == 0 or n_groups == 0:
            return
        counts = np.bincount(group, minlength=n_groups)
        has = counts > 0
        count0, w0, mean0, dev0, t0 = (a[slots] for a in (self.count_, self.weight_, self.mean_, self.dev_, self.time_))
        newest = np.full(n_groups, -np.inf)
        np.maximum.at(newest, group, times_s)
        t_ref = np.maximum(t0, newest)
        # The prior fades with the event time elapsed, but keeps at least `warmup` values' worth.
        with np.errstate(invalid="ignore"):
            fade = np.exp(-self.decay_per_s * np.where(np.isfinite(t0), t_ref - t0, 0.0))
        w0 = np.maximum(w0 * fade, np.minimum(w0, float(self.warmup)))
        warm0 = count0 >= self.warmup
        if warm0.any():
            # A spike is clipped so it cannot drag the baseline; a lasting shift still moves it.
            reach = self.clip_sigma * self.std(slots)
            lo = np.where(warm0, mean0 - reach, -np.inf)[group]
            hi = np.where(warm0, mean0 + reach, np.inf)[group]
            values = np.clip(values, lo, hi)
        w = np.exp(-self.decay_per_s * (t_ref[group] - times_s))
        sw = np.bincount(group, w, minlength=n_groups)
        sx = np.bincount(group, w * values, minlength=n_groups)
        total = w0 + sw
        safe = np.where(total > 0, total, 1.0)
        mean = (w0 * mean0 + sx) / safe
        # Deviations from the mean before the batch (from the batch's own mean for an empty slot).
        centre = np.where(count0 > 0, mean0, mean)
        sd = np.bincount(group, w * np.abs(values - centre[group]), minlength=n_groups)
        dev = (w0 * dev0 + sd) / safe
        self.count_[slots] = np.where(has, count0 + counts, count0)
        self.weight_[slots] = np.where(has, total, w0)
        self.mean_[slots] = np.where(has, mean, mean0)
        self.dev_[slots] = np.where(has, dev, dev0)
        self.time_[slots] = np.where(has, t_ref, t0)

    def to_state(self, n_slots: int) -> dict[str, Any]:
        """Plain lists for slots ``0..n_slots-1`` (JSON-able; no pickle; ``time`` None when empty)."""
        return {
            "count": self.count_[:n_slots].tolist(),
            "weight": self.weight_[:n_slots].tolist(),
            "mean": self.mean_[:n_slots].tolist(),
            "dev": self.dev_[:n_slots].tolist(),
            "time": [None if not math.isfinite(t) else t for t in self.time_[:n_slots].tolist()],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`to_state` saved (the parameters come from the constructor)."""
        count = np.asarray(state["count"], dtype=np.int64)
        arrays = [np.asarray(state[k], dtype=np.float64) for k in ("weight", "mean", "dev")]
        times = np.array([-np.inf if t is None else float(t) for t in state["time"]], dtype=np.float64)
        if count.ndim != 1 or any(a.shape != count.shape for a in (*arrays, times)):
            raise ValueError("rolling state: count, weight, mean, dev and time must be lists of one length")
        self.count_ = count
        self.weight_, self.mean_, self.dev_ = arrays
        self.time_ = times


def resize_rows(a: npt.NDArray[Any], capacity: int, fill: Any) -> npt.NDArray[Any]:
    """A copy of ``a`` with ``capacity`` rows: rows kept, new ones filled with ``fill``."""
    out = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
    n = min(capacity, a.shape[0])
    out[:n] = a[:n]
    return out
