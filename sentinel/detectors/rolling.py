"""Exponentially weighted rolling mean and variance for many series, updated a batch at a time.

Each series (one slot) keeps a count, a mean and a variance. The first ``warmup`` values are
averaged with equal weights (a plain running mean, so the baseline is not biased towards zero);
after that each new value has weight ``alpha``. A whole batch is folded in with the closed form
of the sequential update, so there is no Python loop over values.

Values are handed over *grouped*: ``group`` is a non-decreasing array of batch-local group ids
``0..G-1`` (one per value, values of a group in time order) and ``slots[g]`` is the series slot of
group ``g``. :func:`group_positions` gives each value's position inside its group.

>>> import numpy as np
>>> r = RollingStats(warmup=3, capacity=1)
>>> r.update(np.zeros(4, np.int64), np.array([0]), np.array([1.0, 2.0, 3.0, 4.0]))
>>> round(float(r.mean_[0]), 4)
2.02
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CLIP_SIGMA",
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
#: Weight of a new value once warm; the baseline's half-life is about 0.69 / alpha ≈ 69 values
#: (slow enough that a sudden slowdown is still reported before it becomes the new normal).
DEFAULT_ALPHA = 0.01
#: Values are winsorised to mean ± clip_sigma·std before they update the baseline.
DEFAULT_CLIP_SIGMA = 4.0
#: The std used for scoring is at least this fraction of |mean| ...
DEFAULT_MIN_STD_RATIO = 0.05
#: ... and at least this absolute value.
DEFAULT_MIN_STD = 1e-9


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
    """Exponentially weighted mean/variance per slot, with warm-up, clipping and a std floor.

    Learned state (``count_``, ``mean_``, ``var_``) is indexed by slot; ``var_`` is the population
    variance. Keyword-only parameters are stored untouched.
    """

    def __init__(
        self,
        *,
        warmup: int = DEFAULT_WARMUP,
        threshold: float = DEFAULT_Z_THRESHOLD,
        alpha: float = DEFAULT_ALPHA,
        clip_sigma: float = DEFAULT_CLIP_SIGMA,
        min_std_ratio: float = DEFAULT_MIN_STD_RATIO,
        min_std: float = DEFAULT_MIN_STD,
        capacity: int = 0,
    ) -> None:
        self.warmup = warmup
        self.threshold = threshold
        self.alpha = alpha
        self.clip_sigma = clip_sigma
        self.min_std_ratio = min_std_ratio
        self.min_std = min_std
        self.count_: IntArray = np.zeros(capacity, dtype=np.int64)
        self.mean_: FloatArray = np.zeros(capacity, dtype=np.float64)
        self.var_: FloatArray = np.zeros(capacity, dtype=np.float64)

    @property
    def capacity(self) -> int:
        return int(self.count_.size)

    def resize(self, capacity: int) -> None:
        """Grow (or shrink) the slot arrays; new slots start empty."""
        self.count_ = resize_rows(self.count_, capacity, 0)
        self.mean_ = resize_rows(self.mean_, capacity, 0.0)
        self.var_ = resize_rows(self.var_, capacity, 0.0)

    def reset(self, slots: IntArray) -> None:
        """Forget the series in ``slots`` (the slot is being reused for another key)."""
        self.count_[slots] = 0
        self.mean_[slots] = 0.0
        self.var_[slots] = 0.0

    def _std(self, slots: IntArray) -> FloatArray:
        mean = self.mean_[slots]
        # The floor keeps constant warm-up data (var 0) from turning any change into infinite z.
        return np.maximum(np.sqrt(self.var_[slots]), np.maximum(self.min_std_ratio * np.abs(mean), self.min_std))

    def score(self, group: IntArray, slots: IntArray, values: FloatArray) -> Scores:
        """Score ``values`` against each slot's state before this batch (no update)."""
        warm = self.count_[slots] >= self.warmup
        mean = np.where(warm, self.mean_[slots], np.nan)[group]
        std = np.where(warm, self._std(slots), np.nan)[group]
        lim = self.threshold * std
        return Scores(mean, std, (values - mean) / std, mean + lim, mean - lim)

    def update(self, group: IntArray, slots: IntArray, values: FloatArray) -> None:
        """Fold ``values`` (grouped, NaN-free) into the slots' state."""
        n_groups = slots.size
        if values.size == 0 or n_groups == 0:
            return
        counts = np.bincount(group, minlength=n_groups)
        ends = np.cumsum(counts) - 1  # index of each group's last value
        count0 = self.count_[slots]
        mean, var, count = self.mean_[slots], self.var_[slots], count0.astype(np.float64)
        warm0 = count0 >= self.warmup
        if warm0.any():
            # A spike is clipped so it cannot drag the baseline; a lasting shift still moves it,
            # by at most clip_sigma·std·alpha per value, and widens the variance as it goes.
            reach = self.clip_sigma * self._std(slots)
            lo = np.where(warm0, mean - reach, -np.inf)[group]
            hi = np.where(warm0, mean + reach, np.inf)[group]
            values = np.clip(values, lo, hi)

        # Values while the slot is still warming up: equal weights, merged with Chan's formula.
        if warm0.all():
            ew_group, ew_values, ew_index = group, values, np.arange(values.size)
        else:
            rank = np.arange(values.size) - (ends - counts + 1)[group]
            in_warmup = (count0[group] + rank) < self.warmup
            gw, xw = group[in_warmup], values[in_warmup]
            nb = np.bincount(gw, minlength=n_groups).astype(np.float64)
            has = nb > 0
            safe_nb = np.where(has, nb, 1.0)
            mean_b = np.bincount(gw, xw, minlength=n_groups) / safe_nb
            m2_b = np.bincount(gw, (xw - mean_b[gw]) ** 2, minlength=n_groups)
            n_new = count + nb
            safe_n = np.where(has, n_new, 1.0)
            delta = mean_b - mean
            mean = np.where(has, mean + delta * nb / safe_n, mean)
            var = np.where(has, (var * count + m2_b + delta**2 * count * nb / safe_n) / safe_n, var)
            count = n_new
            ew_index = np.flatnonzero(~in_warmup)
            ew_group, ew_values = group[ew_index], values[ew_index]

        # The rest: the closed form of k sequential EW updates, centred on the prior mean for
        # precision. Weights a(1-a)^(k-i) for the values and (1-a)^k for the prior mix to 1.
        if ew_values.size:
            k = np.bincount(ew_group, minlength=n_groups)
            # Warm-up values come first in a group, so the EW run ends at the group's end.
            from_end = ends[ew_group] - ew_index
            keep = 1.0 - self.alpha
            # A table of powers indexed by position is far cheaper than a power per value.
            powers = self.alpha * keep ** np.arange(int(from_end.max()) + 1, dtype=np.float64)
            d = ew_values - mean[ew_group]
            wd = powers[from_end] * d
            s1 = np.bincount(ew_group, wd, minlength=n_groups)
            s2 = np.bincount(ew_group, wd * d, minlength=n_groups)
            w0 = keep ** k.astype(np.float64)
            var = np.maximum(w0 * var + s2 - s1 * s1, 0.0)
            mean = mean + s1
            count = count + k
        self.mean_[slots] = mean
        self.var_[slots] = var
        self.count_[slots] = count.astype(np.int64)

    def to_state(self, n_slots: int) -> dict[str, Any]:
        """Plain lists for slots ``0..n_slots-1`` (JSON-able; no pickle)."""
        return {
            "count": self.count_[:n_slots].tolist(),
            "mean": self.mean_[:n_slots].tolist(),
            "var": self.var_[:n_slots].tolist(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`to_state` saved (the parameters come from the constructor)."""
        count = np.asarray(state["count"], dtype=np.int64)
        mean = np.asarray(state["mean"], dtype=np.float64)
        var = np.asarray(state["var"], dtype=np.float64)
        if not (count.shape == mean.shape == var.shape) or count.ndim != 1:
            raise ValueError("rolling state: count, mean and var must be lists of one length")
        self.count_, self.mean_, self.var_ = count, mean, var


def resize_rows(a: npt.NDArray[Any], capacity: int, fill: Any) -> npt.NDArray[Any]:
    """A copy of ``a`` with ``capacity`` rows: rows kept, new ones filled with ``fill``."""
    out = np.full((capacity, *a.shape[1:]), fill, dtype=a.dtype)
    n = min(capacity, a.shape[0])
    out[:n] = a[:n]
    return out
