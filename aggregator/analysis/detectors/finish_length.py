"""Truncation surges: the share of calls that stop at the output limit (finish_reason ``length``).

A prompt or ``max_tokens`` change, or a model that answers at greater length, shows first as
answers cut off at the limit — before cost or output-token distributions move enough for the
other detectors. Per (service, request model) and event-time bucket of ``bucket_s`` (tumbling,
closed by the watermark, see :mod:`aggregator.analysis.detectors.buckets`) the calls with a finish reason
and those that stopped at the limit (``length``; Anthropic's ``max_tokens``) are counted. The key's
baseline share is the pooled share of its first ``warmup_buckets`` buckets, then an EWMA (weight
``alpha``) of bucket shares. A bucket with at least ``min_calls`` such calls is *high* when its share
is at least ``ratio`` × the baseline and ``min_delta`` above it, and the excess is significant for a
binomial count: ``(k − n·p) / sqrt(n·p·(1 − p)) >= z_threshold``. ``min_buckets`` high buckets in a
row (one by default: an early warning) emit one ``finish_length`` candidate; high buckets do not
update the baseline; re-armed by a bucket that is not high.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.buckets import BucketedDetector, BucketSeries
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["FinishLengthConfig", "FinishLengthDetector"]

NAME = "finish_length"
DEFAULT_BUCKET_S = 60.0
DEFAULT_LATENESS_S = 30.0
DEFAULT_WARMUP_BUCKETS = 10
DEFAULT_MIN_CALLS = 30
DEFAULT_RATIO = 2.0
DEFAULT_MIN_DELTA = 0.1
DEFAULT_Z_THRESHOLD = 4.0
DEFAULT_MIN_BUCKETS = 1
DEFAULT_ALPHA = 0.05
DEFAULT_MAX_KEYS = 10_000
KEY_COLUMNS = ("service", "request_model")
#: Finish reasons that mean "stopped at the output-token limit".
LIMIT_REASONS = frozenset({"length", "max_tokens"})
#: Least baseline share used in the binomial test (a key that never truncated is not 0 %).
MIN_BASE_SHARE = 0.002


@dataclass(frozen=True, kw_only=True)
class FinishLengthConfig:
    """Settings of ``detectors.finish_length``."""

    bucket_s: float = DEFAULT_BUCKET_S
    lateness_s: float = DEFAULT_LATENESS_S
    warmup_buckets: int = DEFAULT_WARMUP_BUCKETS
    min_calls: int = DEFAULT_MIN_CALLS
    ratio: float = DEFAULT_RATIO
    min_delta: float = DEFAULT_MIN_DELTA
    z_threshold: float = DEFAULT_Z_THRESHOLD
    min_buckets: int = DEFAULT_MIN_BUCKETS
    alpha: float = DEFAULT_ALPHA
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> FinishLengthConfig:
        check_positive(NAME, "bucket_s", self.bucket_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "warmup_buckets", self.warmup_buckets, 1)
        check_min(NAME, "min_calls", self.min_calls, 1)
        check_min(NAME, "ratio", self.ratio, 1)
        check_fraction(NAME, "min_delta", self.min_delta, open_high=True)
        check_min(NAME, "z_threshold", self.z_threshold, 0)
        check_min(NAME, "min_buckets", self.min_buckets, 1)
        check_fraction(NAME, "alpha", self.alpha)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("armed", "buckets", "calls", "hits", "n", "run", "share")

    def __init__(self) -> None:
        self.buckets = BucketSeries()
        self.n = 0  # warm-up buckets seen
        self.calls = 0.0  # warm-up totals (pooled share)
        self.hits = 0.0
        self.share = 0.0
        self.run = 0
        self.armed = True

    def to_state(self) -> dict[str, Any]:
        return {"n": self.n, "calls": self.calls, "hits": self.hits, "share": self.share, "run": self.run,
                "armed": self.armed}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.n, st.calls, st.hits = int(d["n"]), float(d["calls"]), float(d["hits"])
        st.share, st.run, st.armed = float(d["share"]), int(d["run"]), bool(d["armed"])
        return st


def _at_limit(reasons: Any) -> np.ndarray[Any, np.dtype[np.float64]]:
    """1.0 where a finish reason (or one of a comma-separated list) means the output limit was hit."""
    out = np.zeros(len(reasons))
    for i, r in enumerate(reasons):
        if r is not None and any(p.strip().lower() in LIMIT_REASONS for p in str(r).split(",")):
            out[i] = 1.0
    return out


class FinishLengthDetector(BucketedDetector[FinishLengthConfig, _KeyState]):
    """Share of calls stopped at the output limit per bucket vs the key's baseline share."""

    NAME = NAME
    CONFIG = FinishLengthConfig
    KEY_STATE = _KeyState
    # fields: calls with a finish reason, calls at the limit
    N_FIELDS = 2

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        if batch.n:
            reasons = batch.strings["finish_reason"]
            has = np.array([r is not None for r in reasons], dtype=np.float64)
            hit = _at_limit(reasons)
            self._keys.add(batch, KEY_COLUMNS, [has, hit], hit)
        out: list[Candidate] = []
        c = self.config
        for key, st, idx, (n, k), examples in self._keys.close():
            if n < c.min_calls:
                continue
            if st.n < c.warmup_buckets:
                st.n += 1
                st.calls += n
                st.hits += k
                st.share = st.hits / st.calls
                continue
            share = k / n
            p = max(st.share, MIN_BASE_SHARE)
            z = (k - n * p) / math.sqrt(n * p * (1 - p))
            high = share >= c.ratio * p and share >= p + c.min_delta and z >= c.z_threshold
            st.run = st.run + 1 if high else 0
            if not high:
                st.armed = True
                st.share += c.alpha * (share - st.share)
                continue
            if st.run >= c.min_buckets and st.armed:
                st.armed = False
                start, _ = self._keys.window(idx - st.run + 1)
                _, end = self._keys.window(idx)
                out.append(Candidate(
                    anomaly_type="finish_length", service=key[0], model=key[1], detection_method="binomial_share",
                    confidence=min(1.0, 0.5 + (share - p)), metric="finish_length_share", value=share, baseline=p,
                    threshold=max(c.ratio * p, p + c.min_delta), deviation_sigma=z, window_start=start,
                    window_end=end, context={"trace_ids": examples, "calls": int(n), "at_limit": int(k),
                                             "bucket_s": c.bucket_s}))
        return out
