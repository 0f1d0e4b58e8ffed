"""Error rate per series over a sliding event-time window, alerting once per excursion.

Calls and errors are counted in one-second buckets (a ring of ``window_s`` buckets per slot,
keyed by the calls' own timestamps, so replayed or late data lands in the right second). After
each batch the rate over the slot's last ``window_s`` seconds is checked: with at least
``min_calls`` calls and a rate above ``threshold`` it fires once, then stays quiet until the rate
is back at or below the threshold (re-armed).

Values are handed over grouped, as for :class:`sidecar.detectors.rolling.RollingStats`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from sidecar.detectors.rolling import FloatArray, IntArray, group_positions, resize_rows

__all__ = [
    "DEFAULT_ERROR_RATE_THRESHOLD",
    "DEFAULT_ERROR_WINDOW_S",
    "DEFAULT_MIN_CALLS",
    "ErrorRateResult",
    "ErrorRateWindow",
]

DEFAULT_ERROR_WINDOW_S = 60
DEFAULT_ERROR_RATE_THRESHOLD = 0.2
#: Fewer calls than this in the window say too little about the rate to alert on.
DEFAULT_MIN_CALLS = 20

_NS = 1_000_000_000


class ErrorRateResult(NamedTuple):
    """Per group, after the batch: did it fire, and the window's rate and number of calls."""

    fired: npt.NDArray[np.bool_]
    rate: FloatArray
    calls: IntArray


class ErrorRateWindow:
    """One-second buckets per slot: ``calls_``, ``errors_`` and ``sec_`` (the second a bucket
    holds, -1 if none) of shape slots × window, plus ``latest_`` second seen and ``armed_``."""

    def __init__(
        self,
        *,
        window_s: int = DEFAULT_ERROR_WINDOW_S,
        threshold: float = DEFAULT_ERROR_RATE_THRESHOLD,
        min_calls: int = DEFAULT_MIN_CALLS,
        capacity: int = 0,
    ) -> None:
        self.window_s = window_s
        self.threshold = threshold
        self.min_calls = min_calls
        self.calls_: IntArray = np.zeros((capacity, window_s), dtype=np.int64)
        self.errors_: IntArray = np.zeros((capacity, window_s), dtype=np.int64)
        self.sec_: IntArray = np.full((capacity, window_s), -1, dtype=np.int64)
        self.latest_: IntArray = np.full(capacity, -1, dtype=np.int64)
        self.armed_: npt.NDArray[np.bool_] = np.ones(capacity, dtype=np.bool_)

    @property
    def capacity(self) -> int:
        return int(self.latest_.size)

    def resize(self, capacity: int) -> None:
        self.calls_ = resize_rows(self.calls_, capacity, 0)
        self.errors_ = resize_rows(self.errors_, capacity, 0)
        self.sec_ = resize_rows(self.sec_, capacity, -1)
        self.latest_ = resize_rows(self.latest_, capacity, -1)
        self.armed_ = resize_rows(self.armed_, capacity, True)

    def reset(self, slots: IntArray) -> None:
        self.calls_[slots] = 0
        self.errors_[slots] = 0
        self.sec_[slots] = -1
        self.latest_[slots] = -1
        self.armed_[slots] = True

    def update(
        self, group: IntArray, slots: IntArray, time_unix_nano: IntArray, is_error: npt.NDArray[Any]
    ) -> ErrorRateResult:
        """Count the grouped calls, then check each group's window (every group must have a call)."""
        n_groups = slots.size
        w = self.window_s
        if n_groups == 0:
            return ErrorRateResult(np.zeros(0, np.bool_), np.zeros(0), np.zeros(0, np.int64))
        _counts, starts, _rank = group_positions(group, n_groups)
        sec = time_unix_nano // _NS
        latest = np.maximum(self.latest_[slots], np.maximum.reduceat(sec, starts))
        # Calls older than the window are dropped; what is left of a group spans < window_s
        # seconds, so each second has its own bucket and (group, sec % window) names it.
        live = sec > (latest - w)[group]
        key = group[live] * w + sec[live] % w
        uniq, inverse = np.unique(key, return_inverse=True)
        calls = np.bincount(inverse, minlength=uniq.size)
        errors = np.bincount(inverse, is_error[live].astype(np.float64), minlength=uniq.size).astype(np.int64)
        g, b = uniq // w, uniq % w
        s = latest[g] - (latest[g] - b) % w
        slot = slots[g]
        same = self.sec_[slot, b] == s
        self.calls_[slot, b] = np.where(same, self.calls_[slot, b] + calls, calls)
        self.errors_[slot, b] = np.where(same, self.errors_[slot, b] + errors, errors)
        self.sec_[slot, b] = s
        self.latest_[slots] = latest

        in_window = self.sec_[slots] > (latest - w)[:, None]
        total = (self.calls_[slots] * in_window).sum(axis=1)
        errs = (self.errors_[slots] * in_window).sum(axis=1)
        rate = errs / np.maximum(total, 1)
        above = rate > self.threshold
        armed = self.armed_[slots]
        fired = armed & above & (total >= self.min_calls)
        self.armed_[slots] = (armed & ~fired) | ~above
        return ErrorRateResult(fired, rate, total)

    def to_state(self, n_slots: int) -> dict[str, Any]:
        return {
            "calls": self.calls_[:n_slots].tolist(),
            "errors": self.errors_[:n_slots].tolist(),
            "sec": self.sec_[:n_slots].tolist(),
            "latest": self.latest_[:n_slots].tolist(),
            "armed": self.armed_[:n_slots].tolist(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        n = len(state["latest"])
        shape = (n, self.window_s)
        calls = np.asarray(state["calls"], dtype=np.int64).reshape(shape)
        errors = np.asarray(state["errors"], dtype=np.int64).reshape(shape)
        sec = np.asarray(state["sec"], dtype=np.int64).reshape(shape)
        latest = np.asarray(state["latest"], dtype=np.int64)
        armed = np.asarray(state["armed"], dtype=np.bool_)
        if armed.shape != (n,):
            raise ValueError("error-rate state: latest and armed must have one length")
        self.calls_, self.errors_, self.sec_, self.latest_, self.armed_ = calls, errors, sec, latest, armed
