"""Two-sided CUSUM per series on robust-standardised values: sustained level shifts.

A z-score flags a value that is far out; a provider that becomes 40 % slower moves every value a
little and, with a time-decayed baseline, would only be *noticed* until the baseline caught up.
The CUSUM adds up evidence: with ``z`` the value's distance from the baseline in (robust) sigmas,
capped at ``±cap_sigma`` so one wild value counts like a few,

    S⁺ ← max(0, S⁺ + z − drift)        S⁻ ← max(0, S⁻ − z − drift)

and a shift is reported at the value where ``S⁺`` (up) or ``S⁻`` (down) first exceeds
``threshold``. From then on the series is **shifted** in that direction: the shift is not
reported again and point anomalies in that direction are left out (they are the same incident).
For ``relearn_after_s`` seconds of event time the baseline is frozen, so the shift is not learned
away while it is confirmed and alerted on; after that it is taken as the new normal and the
baseline learns it (at its half-life), still without a new report. The state ends when the
statistic (capped at ``threshold`` after each batch) falls to 0: the values came back or the
baseline caught up — about ``threshold/drift`` values near the baseline.
:meth:`LocalDetector.relearn` re-learns a key's baselines at once, on request.

Values are grouped as for :class:`sidecar.detectors.rolling.RollingStats`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from sidecar.detectors.rolling import FloatArray, IntArray, resize_rows

__all__ = [
    "DEFAULT_CAP_SIGMA",
    "DEFAULT_DRIFT",
    "DEFAULT_RELEARN_AFTER_S",
    "DEFAULT_SHIFT_THRESHOLD",
    "LevelShift",
    "Shifts",
]

#: Slack per value, in sigmas: shifts smaller than this are not accumulated.
DEFAULT_DRIFT = 1.0
#: Accumulated sigmas beyond the slack that make a shift: 10 values at 3 sigma, 20 at 2, 29 at
#: 1.7 (a ×1.4 latency on typical LLM spread): seconds at LLM call rates, and no single burst.
DEFAULT_SHIFT_THRESHOLD = 20.0
#: One value counts at most this many sigmas (a spike is a point anomaly, not a shift).
DEFAULT_CAP_SIGMA = 3.0
#: A shift that lasts this long (event time) is taken as the new normal and re-learned.
DEFAULT_RELEARN_AFTER_S = 3600.0

BoolArray = npt.NDArray[np.bool_]
#: A statistic this small is 0 (the vectorised sums leave rounding residue of ~1e-14).
_ZERO = 1e-9


class Shifts(NamedTuple):
    """Per value: +1/-1 where a shift up/down is reported, else 0; the series' shift state
    (+1/-1/0) the value was scored in (after a report on it, that report's direction); and
    whether the baseline may learn from it (not while a shift younger than ``relearn_after_s``)."""

    report: npt.NDArray[np.int8]
    state: npt.NDArray[np.int8]
    learn: BoolArray


class LevelShift:
    """Two-sided CUSUM per slot: ``up_``/``down_`` statistics, ``shifted_`` (+1/-1/0) and
    ``since_`` (event time in seconds the shift was reported, NaN when not shifted)."""

    def __init__(
        self,
        *,
        drift: float = DEFAULT_DRIFT,
        threshold: float = DEFAULT_SHIFT_THRESHOLD,
        cap_sigma: float = DEFAULT_CAP_SIGMA,
        relearn_after_s: float = DEFAULT_RELEARN_AFTER_S,
        capacity: int = 0,
    ) -> None:
        self.drift = drift
        self.threshold = threshold
        self.cap_sigma = cap_sigma
        self.relearn_after_s = relearn_after_s
        self.up_: FloatArray = np.zeros(capacity)
        self.down_: FloatArray = np.zeros(capacity)
        self.shifted_: npt.NDArray[np.int8] = np.zeros(capacity, dtype=np.int8)
        self.since_: FloatArray = np.full(capacity, np.nan)

    @property
    def capacity(self) -> int:
        return int(self.up_.size)

    def resize(self, capacity: int) -> None:
        self.up_ = resize_rows(self.up_, capacity, 0.0)
        self.down_ = resize_rows(self.down_, capacity, 0.0)
        self.shifted_ = resize_rows(self.shifted_, capacity, 0)
        self.since_ = resize_rows(self.since_, capacity, np.nan)

    def reset(self, slots: IntArray) -> None:
        self.up_[slots] = 0.0
        self.down_[slots] = 0.0
        self.shifted_[slots] = 0
        self.since_[slots] = np.nan

    def update(
        self, group: IntArray, slots: IntArray, z: FloatArray, times_s: FloatArray, up: BoolArray, down: BoolArray
    ) -> Shifts:
        """Run the CUSUM over the grouped ``z`` (NaN: not scored, skipped); ``up``/``down`` per
        group say which directions are watched. Returns the reports and states per value."""
        report = np.zeros(z.size, dtype=np.int8)
        n_groups = slots.size
        counts = np.bincount(group, minlength=n_groups)
        state = np.repeat(self.shifted_[slots], counts)
        idx = np.flatnonzero(~np.isnan(z))  # the scored values, still grouped
        g = group[idx]
        seen = np.bincount(g, minlength=n_groups) > 0
        last = np.full(n_groups, -1)
        last[g] = np.arange(idx.size)  # each group's last scored value (in idx)
        pos = np.arange(z.size)
        zc = np.clip(z[idx], -self.cap_sigma, self.cap_sigma)
        for sign, watch, stat in ((1, up, self.up_), (-1, down, self.down_)):
            use = watch & seen
            if not use.any():
                continue
            s = _grouped_cusum(stat[slots], g, sign * zc - self.drift)
            crossed = (s > self.threshold) & use[g] & (self.shifted_[slots] != sign)[g]
            first = np.full(n_groups, z.size)
            np.minimum.at(first, g[crossed], idx[crossed])
            hit = first < z.size
            if hit.any():
                report[first[hit]] = sign
                state = np.where(pos >= first[group], np.int8(sign), state)
                self.shifted_[slots[hit]] = sign
                self.since_[slots[hit]] = times_s[first[hit]]
            ends = np.minimum(s[last[use]], self.threshold)
            stat[slots[use]] = ends
        # The values are back (or the baseline caught up): the shift is over.
        sh = self.shifted_[slots]
        stat_now = np.where(sh > 0, self.up_[slots], self.down_[slots])
        over = (sh != 0) & (stat_now <= _ZERO)
        self.shifted_[slots[over]] = 0
        self.since_[slots[over]] = np.nan
        since = np.repeat(self.since_[slots], counts)
        with np.errstate(invalid="ignore"):
            learn = (state == 0) | ~(times_s - since < self.relearn_after_s)
        return Shifts(report, state, learn)

    def to_state(self, n_slots: int) -> dict[str, Any]:
        return {
            "up": self.up_[:n_slots].tolist(),
            "down": self.down_[:n_slots].tolist(),
            "shifted": self.shifted_[:n_slots].tolist(),
            "since": [None if np.isnan(t) else t for t in self.since_[:n_slots].tolist()],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        up = np.asarray(state["up"], dtype=np.float64)
        down = np.asarray(state["down"], dtype=np.float64)
        shifted = np.asarray(state["shifted"], dtype=np.int8)
        since = np.array([np.nan if t is None else float(t) for t in state["since"]], dtype=np.float64)
        if up.ndim != 1 or any(a.shape != up.shape for a in (down, shifted, since)):
            raise ValueError("level-shift state: up, down, shifted and since must be lists of one length")
        self.up_, self.down_, self.shifted_, self.since_ = up, down, shifted, since


def _grouped_cusum(s0: FloatArray, group: IntArray, steps: FloatArray) -> FloatArray:
    """:func:`_cusum` of each group's ``steps`` (grouped, non-decreasing ``group``) from ``s0[group]``.
    The running minimum restarts per group: each group is shifted below all earlier ones."""
    if steps.size == 0:
        return steps
    total = np.cumsum(steps)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    base = np.repeat(np.r_[0.0, total[starts[1:] - 1]], np.diff(np.r_[starts, steps.size]))
    c = total - base  # cumulative sum within the group
    span = float(c.max() - c.min()) + 1.0
    rank = np.repeat(np.arange(starts.size, dtype=np.float64), np.diff(np.r_[starts, steps.size]))
    low = np.minimum(np.minimum.accumulate(c - rank * 2 * span) + rank * 2 * span, 0.0)
    out: FloatArray = np.maximum(s0[group] + c, c - low)
    return out


def _cusum(s0: float, steps: FloatArray) -> FloatArray:
    """``s_i = max(0, s_{i-1} + steps_i)`` from ``s0``, without a Python loop:
    ``s_i = max(s0 + C_i, C_i − min_{j≤i} C_j)`` with ``C`` the cumulative sum (``C_0 = 0``)."""
    c = np.cumsum(steps)
    low = np.minimum(np.minimum.accumulate(c), 0.0)
    return np.maximum(s0 + c, c - low)
