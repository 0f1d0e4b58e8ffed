"""Median-based scoring (MAD or IQR) over a fixed-size window per series, for heavy-tailed metrics.

A mean and standard deviation are dragged around by the long tail of latencies and token counts;
the median and the median absolute deviation (or the interquartile range) are not. Each series
keeps its last ``window`` values in a ring buffer (one numpy row per slot).

* ``mad``: robust z = 0.6745·(x − median)/MAD; anomalous beyond ``threshold``.
* ``iqr``: anomalous above Q3 + k·IQR (or below Q1 − k·IQR).

Values are handed over grouped, as for :class:`sidecar.detectors.rolling.RollingStats`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sidecar.detectors.rolling import (
    DEFAULT_MIN_STD,
    DEFAULT_MIN_STD_RATIO,
    DEFAULT_WARMUP,
    FloatArray,
    IntArray,
    Scores,
    group_positions,
    resize_rows,
)

__all__ = ["DEFAULT_IQR_K", "DEFAULT_ROBUST_THRESHOLD", "DEFAULT_WINDOW", "MAD_SCALE", "RobustWindow"]

DEFAULT_WINDOW = 128
#: Robust |z| beyond this is anomalous (mad).
DEFAULT_ROBUST_THRESHOLD = 4.0
#: Tukey's "far out" fence; 1.5 flags too much of a heavy tail.
DEFAULT_IQR_K = 3.0
#: MAD / MAD_SCALE estimates the standard deviation of normal data (0.6745 = Φ⁻¹(0.75)).
MAD_SCALE = 0.6745
#: IQR / IQR_SCALE estimates the standard deviation of normal data.
IQR_SCALE = 1.349


class RobustWindow:
    """Ring buffer of the last ``window`` values per slot, scored by MAD or IQR.

    Learned state: ``buf_`` (slots × window, NaN where empty), ``pos_`` (next write index) and
    ``count_`` (values seen in total).
    """

    def __init__(
        self,
        *,
        method: str = "mad",
        window: int = DEFAULT_WINDOW,
        warmup: int = DEFAULT_WARMUP,
        threshold: float = DEFAULT_ROBUST_THRESHOLD,
        iqr_k: float = DEFAULT_IQR_K,
        min_std_ratio: float = DEFAULT_MIN_STD_RATIO,
        min_std: float = DEFAULT_MIN_STD,
        capacity: int = 0,
    ) -> None:
        if method not in ("mad", "iqr"):
            raise ValueError(f"method must be 'mad' or 'iqr', not {method!r}")
        self.method = method
        self.window = window
        self.warmup = warmup
        self.threshold = threshold
        self.iqr_k = iqr_k
        self.min_std_ratio = min_std_ratio
        self.min_std = min_std
        self.buf_: FloatArray = np.full((capacity, window), np.nan)
        self.pos_: IntArray = np.zeros(capacity, dtype=np.int64)
        self.count_: IntArray = np.zeros(capacity, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return int(self.buf_.shape[0])

    def resize(self, capacity: int) -> None:
        self.buf_ = resize_rows(self.buf_, capacity, np.nan)
        self.pos_ = resize_rows(self.pos_, capacity, 0)
        self.count_ = resize_rows(self.count_, capacity, 0)

    def reset(self, slots: IntArray) -> None:
        self.buf_[slots] = np.nan
        self.pos_[slots] = 0
        self.count_[slots] = 0

    def score(self, group: IntArray, slots: IntArray, values: FloatArray) -> Scores:
        """Score ``values`` against each slot's window before this batch (no update)."""
        n_groups = slots.size
        warm = self.count_[slots] >= max(self.warmup, 1)
        med = np.full(n_groups, np.nan)
        dev = np.full(n_groups, np.nan)
        upper = np.full(n_groups, np.nan)
        lower = np.full(n_groups, np.nan)
        if warm.any():
            ws = slots[warm]
            b = self.buf_[ws]
            full = bool((self.count_[ws] >= self.window).all())
            # np.median is several times faster than nanmedian; windows are usually full.
            median = np.median if full else np.nanmedian
            m = median(b, axis=1)
            floor = np.maximum(self.min_std_ratio * np.abs(m), self.min_std)
            if self.method == "mad":
                d = np.maximum(median(np.abs(b - m[:, None]), axis=1) / MAD_SCALE, floor)
                up, lo = m + self.threshold * d, m - self.threshold * d
            else:
                pct = np.percentile if full else np.nanpercentile
                q1, q3 = pct(b, [25.0, 75.0], axis=1)
                iqr = np.maximum(q3 - q1, IQR_SCALE * floor)
                d = iqr / IQR_SCALE
                up, lo = q3 + self.iqr_k * iqr, q1 - self.iqr_k * iqr
            med[warm], dev[warm], upper[warm], lower[warm] = m, d, up, lo
        base, devv = med[group], dev[group]
        return Scores(base, devv, (values - base) / devv, upper[group], lower[group])

    def update(self, group: IntArray, slots: IntArray, values: FloatArray) -> None:
        """Append ``values`` (grouped, NaN-free) to the slots' windows."""
        n_groups = slots.size
        if values.size == 0 or n_groups == 0:
            return
        counts, _starts, rank = group_positions(group, n_groups)
        # Only a group's last `window` values survive; writing just those keeps the targets unique.
        keep = rank >= (counts - self.window)[group]
        slot_of_value = slots[group[keep]]
        col = (self.pos_[slot_of_value] + rank[keep]) % self.window
        self.buf_[slot_of_value, col] = values[keep]
        self.pos_[slots] = (self.pos_[slots] + counts) % self.window
        self.count_[slots] += counts

    def to_state(self, n_slots: int) -> dict[str, Any]:
        """Plain lists for slots ``0..n_slots-1``; empty buffer cells are ``None`` (strict JSON)."""
        return {
            "buf": [[None if math.isnan(v) else v for v in row] for row in self.buf_[:n_slots].tolist()],
            "pos": self.pos_[:n_slots].tolist(),
            "count": self.count_[:n_slots].tolist(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        pos = np.asarray(state["pos"], dtype=np.int64)
        count = np.asarray(state["count"], dtype=np.int64)
        rows = state["buf"]
        buf = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)
        buf = buf.reshape(len(rows), self.window)  # also raises if a row has the wrong length
        if not (pos.shape == count.shape == (len(rows),)):
            raise ValueError("robust state: buf, pos and count must have one length")
        self.buf_, self.pos_, self.count_ = buf, pos, count
