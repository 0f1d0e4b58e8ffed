"""Expensive prompts: calls whose input tokens are far above the key's recent p95, or above a limit.

Per (service, request model) the input tokens of the last ``sample_size`` calls that were not
flagged are kept in a ring (arrival order); their ``quantile`` (p95) is the key's baseline once at
least ``warmup_calls`` are in it. A call is *expensive* when its input tokens exceed
``factor`` × p95 **and** the heavy-tail-aware limit ``exp(median(log x) + robust_z · 1.4826 ·
MAD(log x))`` of the same ring (both only after the warm-up), or ``max_input_tokens`` (if set, from
the first call). Prompt sizes are log-normal-ish: a fixed multiple of p95 is ~3 log-sigmas past it
when prompts vary by a log-sigma of 0.9 and so is crossed several times an hour, while the robust
log-scale limit is as rare for a wide key as for a tight one (with ``robust_z`` 6, ~10⁻⁹ of a
log-normal key's calls).
The p95 of a batch is the one before the batch; flagged calls do not enter the ring, so a flood of
huge prompts does not raise the bar. Rather than one candidate per row, expensive calls are counted
per event-time window of ``window_s`` (tumbling, closed by the watermark, see
:mod:`aggregator.analysis.detectors.buckets`): a closed window with at least ``min_calls`` of them emits one
``expensive_prompt`` candidate with the count and the largest prompt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors.buckets import BucketedDetector
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import group_by_key
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["ExpensivePromptConfig", "ExpensivePromptDetector"]

NAME = "expensive_prompt"
DEFAULT_WINDOW_S = 60.0
DEFAULT_LATENESS_S = 30.0
DEFAULT_SAMPLE_SIZE = 500
DEFAULT_WARMUP_CALLS = 200
DEFAULT_QUANTILE = 0.95
DEFAULT_FACTOR = 4.0
#: Robust z (log tokens, MAD scale) an expensive prompt must also exceed; 0 turns the check off.
DEFAULT_ROBUST_Z = 6.0
MAD_TO_SIGMA = 1.4826
DEFAULT_MAX_INPUT_TOKENS: float | None = None
DEFAULT_MIN_CALLS = 1
DEFAULT_MAX_KEYS = 10_000
KEY_COLUMNS = ("service", "request_model")


@dataclass(frozen=True, kw_only=True)
class ExpensivePromptConfig:
    """Settings of ``detectors.expensive_prompt``."""

    window_s: float = DEFAULT_WINDOW_S
    lateness_s: float = DEFAULT_LATENESS_S
    sample_size: int = DEFAULT_SAMPLE_SIZE
    warmup_calls: int = DEFAULT_WARMUP_CALLS
    quantile: float = DEFAULT_QUANTILE
    factor: float = DEFAULT_FACTOR
    robust_z: float = DEFAULT_ROBUST_Z
    max_input_tokens: float | None = DEFAULT_MAX_INPUT_TOKENS
    min_calls: int = DEFAULT_MIN_CALLS
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> ExpensivePromptConfig:
        check_positive(NAME, "window_s", self.window_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "sample_size", self.sample_size, 10)
        check_min(NAME, "warmup_calls", self.warmup_calls, 1)
        check_min(NAME, "sample_size", self.sample_size, self.warmup_calls)
        check_fraction(NAME, "quantile", self.quantile, open_high=True)
        check_min(NAME, "factor", self.factor, 1)
        check_min(NAME, "robust_z", self.robust_z, 0)
        if self.max_input_tokens is not None:
            check_positive(NAME, "max_input_tokens", self.max_input_tokens)
        check_min(NAME, "min_calls", self.min_calls, 1)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("peaks", "pos", "ring")

    def __init__(self) -> None:
        # An array, not a list: the batch's statistics stack the rings of every key without a
        # conversion per key and batch (profile of loadtest/bench_aggregator.py).
        self.ring: npt.NDArray[np.float64] = np.empty(0, dtype=np.float64)
        self.pos = 0  # next slot to overwrite once the ring is full
        # window index -> [largest flagged input tokens, p95, threshold] at the time
        self.peaks: dict[int, list[float]] = {}

    def push(self, values: npt.NDArray[np.float64], size: int) -> None:
        """Append, then overwrite the oldest from ``pos`` on: what a value-by-value ring does."""
        values = values[-size:]
        room = size - self.ring.size
        if room > 0:
            self.ring = np.concatenate([self.ring, values[:room]])
            values = values[room:]
        if values.size:
            self.ring[(self.pos + np.arange(values.size)) % size] = values
            self.pos = (self.pos + values.size) % size

    def to_state(self) -> dict[str, Any]:
        peaks = [[i, [None if math.isnan(v) else v for v in p]] for i, p in sorted(self.peaks.items())]
        return {"ring": self.ring.tolist(), "pos": self.pos, "peaks": peaks}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.ring = np.asarray([float(v) for v in d["ring"]], dtype=np.float64)
        st.pos = int(d["pos"])
        st.peaks = {int(i): [math.nan if v is None else float(v) for v in p] for i, p in d["peaks"]}
        return st


def _robust_limit(ring: list[float] | npt.NDArray[np.float64], z: float) -> float:
    """``exp(median + z · 1.4826 · MAD)`` of the log of the ring's (positive) values; 0 if ``z`` is 0."""
    if z <= 0:
        return 0.0
    logs = np.log(np.maximum(np.asarray(ring, dtype=np.float64), 1.0))
    median = float(np.median(logs))
    mad = float(np.median(np.abs(logs - median)))
    return math.exp(median + z * MAD_TO_SIGMA * mad)


def ring_limits(rings: list[npt.NDArray[np.float64]], quantile: float, factor: float, z: float
                ) -> tuple[list[float], list[float]]:
    """Per ring, its ``quantile`` and ``max(factor · quantile, robust limit)``.

    Equal to ``np.quantile`` and :func:`_robust_limit` ring by ring, bit for bit (the same numpy
    functions along an axis, the same scalar arithmetic after), but rings of one length (a key's
    ring is full after its first ``sample_size`` calls) are stacked and reduced in one call each:
    three numpy calls per key and batch were a sixth of the analysis (profile of the aggregator bench).
    """
    p95 = [math.nan] * len(rings)
    learned = [math.nan] * len(rings)
    by_size: dict[int, list[int]] = {}
    for i, r in enumerate(rings):
        by_size.setdefault(r.size, []).append(i)
    for members in by_size.values():
        stack = np.stack([rings[i] for i in members])
        qs = np.quantile(stack, quantile, axis=1).tolist()
        if z > 0:
            logs = np.log(np.maximum(stack, 1.0))
            medians = np.median(logs, axis=1)
            mads = np.median(np.abs(logs - medians[:, None]), axis=1).tolist()
            robust = [math.exp(m + z * MAD_TO_SIGMA * d) for m, d in zip(medians.tolist(), mads, strict=True)]
        else:
            robust = [0.0] * len(members)
        for i, q, lim in zip(members, qs, robust, strict=True):
            p95[i] = q
            learned[i] = max(factor * q, lim)
    return p95, learned


class ExpensivePromptDetector(BucketedDetector[ExpensivePromptConfig, _KeyState]):
    """Input tokens far above the key's p95 (or a fixed limit), per (service, request_model)."""

    NAME = NAME
    CONFIG = ExpensivePromptConfig
    KEY_STATE = _KeyState
    N_FIELDS = 2  # expensive calls, calls
    WIDTH = "window_s"

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        c = self.config
        if batch.n:
            x = np.asarray(batch.numeric["input_tokens"], dtype=np.float64)
            t = batch.numeric["time_unix_nano"].astype(np.int64)
            window = t // self._keys.width_ns
            codes, keys = group_by_key([batch.strings[k] for k in KEY_COLUMNS])
            states = [self._keys.keys.get(key) for key in keys]
            warm = [g for g, st in enumerate(states) if st.ring.size >= c.warmup_calls]
            key_p95 = [math.nan] * len(keys)
            limit = [math.nan] * len(keys)  # NaN: no limit yet (warm-up, no max_input_tokens)
            if warm:
                qs, learned = ring_limits([states[g].ring for g in warm], c.quantile, c.factor, c.robust_z)
                for g, q, lim in zip(warm, qs, learned, strict=True):
                    key_p95[g], limit[g] = q, lim
            if c.max_input_tokens is not None:
                limit = [c.max_input_tokens if math.isnan(t) else min(t, c.max_input_tokens) for t in limit]
            valid = ~np.isnan(x)
            with np.errstate(invalid="ignore"):
                flagged = valid & (x > np.asarray(limit, dtype=np.float64)[codes])  # NaN limit: never
            order = np.argsort(codes, kind="stable")
            bounds = np.searchsorted(codes[order], np.arange(len(keys) + 1)).tolist()
            kept = valid & ~flagged
            for g, st in enumerate(states):
                rows = order[bounds[g]:bounds[g + 1]]
                st.push(x[rows[kept[rows]]], c.sample_size)
            for r in np.flatnonzero(flagged).tolist():
                g = int(codes[r])
                peak = states[g].peaks.setdefault(int(window[r]), [0.0, key_p95[g], limit[g]])
                peak[0] = max(peak[0], float(x[r]))
            weight = np.where(flagged, x, -1.0)
            self._keys.add(batch, KEY_COLUMNS, [flagged.astype(np.float64), np.ones(batch.n)], weight)
        out: list[Candidate] = []
        for key, st, idx, (n_flagged, calls), examples in self._keys.close():
            peak = st.peaks.pop(idx, [])
            for i in [i for i in st.peaks if i < idx]:  # rows of windows closed before they came: late
                del st.peaks[i]
            if not peak or n_flagged < c.min_calls:
                continue
            largest, p95, threshold = peak
            start, end = self._keys.window(idx)
            out.append(Candidate(
                anomaly_type="expensive_prompt", service=key[0], model=key[1],
                detection_method="p95_factor" if threshold < (c.max_input_tokens or math.inf) else "absolute_limit",
                confidence=min(1.0, largest / (2 * threshold)), metric="input_tokens", value=largest,
                baseline=p95, threshold=threshold, deviation_sigma=float("nan"), window_start=start, window_end=end,
                context={"trace_ids": examples, "count": int(n_flagged), "calls": int(calls),
                         "max_input_tokens": largest, "p95": None if math.isnan(p95) else p95,
                         "factor": c.factor, "robust_z": c.robust_z, "limit": c.max_input_tokens,
                         "window_s": c.window_s}))
        return out
