"""k-of-n persistence: report a series' exceedance only when it is not alone.

One moderate outlier is routine in LLM traffic (a cold cache, a retried call); two out of five in
a row are not. Each series remembers whether each of its last ``n − 1`` values exceeded its limit
(a bit mask, bit 0 = the most recent); a value that exceeds is reported when at least ``k`` of the
last ``n`` values (itself included) did, or straight away when ``|sigma| ≥ extreme_sigma``.

Values are handed over grouped, as for :class:`sidecar.detectors.rolling.RollingStats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from sidecar.detectors.rolling import FloatArray, IntArray, resize_rows

__all__ = ["DEFAULT_EXTREME_SIGMA", "DEFAULT_K", "DEFAULT_N", "MAX_N", "PersistenceFilter"]

DEFAULT_K = 2
DEFAULT_N = 5
DEFAULT_EXTREME_SIGMA = 5.0
#: The history is an int64 bit mask of the last n − 1 flags.
MAX_N = 63

BoolArray = npt.NDArray[np.bool_]


class PersistenceFilter:
    """k-of-n filter per slot; ``hist_`` holds the last ``n − 1`` exceedance flags as bits."""

    def __init__(
        self,
        *,
        k: int = DEFAULT_K,
        n: int = DEFAULT_N,
        extreme_sigma: float = DEFAULT_EXTREME_SIGMA,
        capacity: int = 0,
    ) -> None:
        if not 1 <= k <= n <= MAX_N:
            raise ValueError(f"need 1 <= k <= n <= {MAX_N}, got k={k}, n={n}")
        self.k = k
        self.n = n
        self.extreme_sigma = extreme_sigma
        self.hist_: IntArray = np.zeros(capacity, dtype=np.int64)

    @property
    def capacity(self) -> int:
        return int(self.hist_.size)

    def resize(self, capacity: int) -> None:
        self.hist_ = resize_rows(self.hist_, capacity, 0)

    def reset(self, slots: IntArray) -> None:
        self.hist_[slots] = 0

    def filter(self, group: IntArray, slots: IntArray, exceeds: BoolArray, sigma: FloatArray) -> BoolArray:
        """Which of the grouped values to report; records ``exceeds`` in the slots' history.

        ``exceeds`` has one flag per value of the series (every non-missing value, in time order),
        so the window counts values, not exceedances.
        """
        n_groups = slots.size
        report = np.zeros(exceeds.size, dtype=np.bool_)
        if exceeds.size == 0 or n_groups == 0:
            return report
        counts = np.bincount(group, minlength=n_groups)
        starts = np.cumsum(counts) - counts
        hist = self.hist_[slots]
        if self.k == 1:
            report = exceeds.copy()
        elif exceeds.any():
            cs = np.concatenate(([0], np.cumsum(exceeds, dtype=np.int64)))
            cand = np.flatnonzero(exceeds)
            g = group[cand]
            # Flags inside the batch: from max(group start, i − n + 1) to i.
            first = np.maximum(starts[g], cand - self.n + 1)
            in_batch = cs[cand + 1] - cs[first]
            # Flags from before the batch: the most recent n − 1 − rank history bits.
            need = np.maximum(self.n - 1 - (cand - starts[g]), 0)
            mask = (np.int64(1) << need) - 1
            before = np.bitwise_count(hist[g] & mask).astype(np.int64)
            ok = (in_batch + before) >= self.k
            ok |= np.abs(sigma[cand]) >= self.extreme_sigma
            report[cand] = ok
        # New history: bit j = the flag j values back, from the batch where it reaches, else
        # from the old history shifted by the group's length.
        new = np.zeros(n_groups, dtype=np.int64)
        last = starts + counts - 1
        for j in range(self.n - 1):
            from_batch = counts > j
            bit_batch = exceeds[np.where(from_batch, last - j, 0)].astype(np.int64)
            shift = np.maximum(j - counts, 0)
            bit_old = np.where(shift < 63, (hist >> np.minimum(shift, 62)) & 1, 0)
            new |= np.where(from_batch, bit_batch, bit_old) << j
        self.hist_[slots] = new
        return report

    def to_state(self, n_slots: int) -> dict[str, Any]:
        return {"hist": self.hist_[:n_slots].tolist()}

    def load_state(self, state: dict[str, Any]) -> None:
        hist = np.asarray(state["hist"], dtype=np.int64)
        if hist.ndim != 1:
            raise ValueError("persistence state: hist must be a list of integers")
        self.hist_ = hist
