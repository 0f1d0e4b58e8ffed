"""Truncation surges: the share of calls that stop at the output limit (finish_reason ``length``).

A prompt or ``max_tokens`` change, or a model that answers at greater length, shows first as
answers cut off at the limit — before cost or output-token distributions move enough for the
other detectors. Per (service, request model) and event-time bucket of ``bucket_s`` (tumbling,
closed by the watermark, see :mod:`aggregator.analysis.detectors.buckets`) the calls with a finish reason
and those that stopped at the limit (``length``; Anthropic's ``max_tokens``) are counted. The key's
baseline share is the pooled share of its first ``warmup_buckets`` buckets, then an EWMA (weight
``alpha``) of bucket shares. A bucket with at least ``min_calls`` such calls is *high* when its share
is at least ``ratio`` × the baseline and ``min_delta`` above it, and the excess is significant for a
binomial count: the z of its exact tail ``P(X ≥ k)`` (:func:`~aggregator.analysis.detectors.binomial.binomial_z`;
the normal approximation ``(k − n·p) / sqrt(n·p·(1 − p))`` is far too bold at a few expected calls)
``>= z_threshold``. ``min_buckets`` high buckets in a
row (one by default: an early warning) emit one ``finish_length`` candidate; high buckets do not
update the baseline; re-armed by a bucket that is not high.

Buckets are 30 s (issue 13: a level shift alerted within 2 minutes of event time; a one-minute bucket
plus its lateness and the alert's group wait took 100 s, 140 s at a load test's 60 s lateness): a bucket
with fewer than ``min_calls`` calls is pooled with the next (a small key is judged per minute, as
before), over at most :data:`POOL_BUCKETS`, and a pooled share counts for the buckets it covers.
``warmup_buckets`` and ``alpha`` keep the one-minute defaults' durations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from aggregator.analysis.detectors.binomial import binomial_z
from aggregator.analysis.detectors.buckets import BucketedDetector
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["FinishLengthConfig", "FinishLengthDetector"]

NAME = "finish_length"
DEFAULT_BUCKET_S = 30.0
DEFAULT_LATENESS_S = 30.0
DEFAULT_WARMUP_BUCKETS = 20
DEFAULT_MIN_CALLS = 30
DEFAULT_RATIO = 2.0
DEFAULT_MIN_DELTA = 0.1
DEFAULT_Z_THRESHOLD = 4.0
DEFAULT_MIN_BUCKETS = 1
DEFAULT_ALPHA = 0.025
DEFAULT_MAX_KEYS = 10_000
KEY_COLUMNS = ("service", "request_model")
#: Finish reasons that mean "stopped at the output-token limit".
LIMIT_REASONS = frozenset({"length", "max_tokens"})
#: Least baseline share used in the binomial test (a key that never truncated is not 0 %).
MIN_BASE_SHARE = 0.002
#: Buckets a small key's calls are pooled over until they reach ``min_calls`` (then skipped, as before).
POOL_BUCKETS = 2


@dataclass(frozen=True, kw_only=True)
class FinishLengthConfig:
    """Settings of ``detectors.finish_length``."""

    section: ClassVar[str] = NAME  # the name validation errors give (subclasses: their own)

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
        check_positive(self.section, "bucket_s", self.bucket_s)
        check_min(self.section, "lateness_s", self.lateness_s, 0)
        check_min(self.section, "warmup_buckets", self.warmup_buckets, 1)
        check_min(self.section, "min_calls", self.min_calls, 1)
        check_min(self.section, "ratio", self.ratio, 1)
        check_fraction(self.section, "min_delta", self.min_delta, open_high=True)
        check_min(self.section, "z_threshold", self.z_threshold, 0)
        check_min(self.section, "min_buckets", self.min_buckets, 1)
        check_fraction(self.section, "alpha", self.alpha)
        check_min(self.section, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("armed", "calls", "carry", "hits", "n", "run", "share")

    def __init__(self) -> None:
        self.n = 0  # warm-up buckets seen
        self.calls = 0.0  # warm-up totals (pooled share)
        self.hits = 0.0
        self.share = 0.0
        self.run = 0
        self.armed = True
        self.carry = [0.0, 0.0, 0.0]  # calls, hits, buckets too small to judge, pooled with the next

    def to_state(self) -> dict[str, Any]:
        return {"n": self.n, "calls": self.calls, "hits": self.hits, "share": self.share, "run": self.run,
                "armed": self.armed, "carry": self.carry}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.n, st.calls, st.hits = int(d["n"]), float(d["calls"]), float(d["hits"])
        st.share, st.run, st.armed = float(d["share"]), int(d["run"]), bool(d["armed"])
        st.carry = [float(v) for v in d.get("carry", st.carry)]
        return st


#: Per row: 1.0 where the row counts, and 1.0 where it is a hit (what ``FinishLengthDetector.hits`` returns).
Hits = tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float64]]]


def reason_hits(reasons: Sequence[str | None], wanted: frozenset[str] = LIMIT_REASONS) -> Hits:
    """Per row: 1.0 where the call has a finish reason, and 1.0 where it (or one of a comma-separated
    list) is one of ``wanted`` (by default: the output limit was hit).

    A table of the distinct reasons (a batch holds a handful), each parsed once; the rows are codes
    into it, so no Python runs per row beyond one dictionary lookup.
    """
    distinct = list(dict.fromkeys(reasons))
    code = {r: i for i, r in enumerate(distinct)}
    rows = np.fromiter(map(code.__getitem__, reasons), dtype=np.intp, count=len(reasons))
    has = np.array([r is not None for r in distinct], dtype=np.float64)
    hit = np.array([r is not None and any(p.strip().lower() in wanted for p in str(r).split(","))
                    for r in distinct], dtype=np.float64)
    return has[rows], hit[rows]


class FinishLengthDetector(BucketedDetector[FinishLengthConfig, _KeyState]):
    """Share of calls stopped at the output limit per bucket vs the key's baseline share.

    The share test is shared: a subclass sets ``NAME`` (also its candidates' ``anomaly_type``; their
    metric is ``<NAME>_share``), ``CONFIG`` and ``hit_label`` (the context key of the hit count), and
    overrides :meth:`hits` (:mod:`aggregator.analysis.detectors.content_filter`,
    :mod:`aggregator.analysis.detectors.empty_answer`).
    """

    NAME = NAME
    CONFIG = FinishLengthConfig
    KEY_STATE = _KeyState
    # fields: calls with a finish reason, calls at the limit
    N_FIELDS = 2
    hit_label = "at_limit"
    #: Calls counted as hits since this detector was built (sentinel_aggregator_answer_signals_total).
    hit_rows = 0

    @property
    def anomaly_type(self) -> str:
        return self.NAME

    @property
    def metric(self) -> str:
        return f"{self.NAME}_share"

    def hits(self, batch: FeatureBatch) -> Hits:
        """Per row: 1.0 where the row counts (has a finish reason), and 1.0 where it is a hit."""
        return reason_hits(batch.strings["finish_reason"])

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        if batch.n:
            has, hit = self.hits(batch)
            self.hit_rows += int(np.count_nonzero(hit))
            self._keys.add(batch, KEY_COLUMNS, [has, hit], hit)
        out: list[Candidate] = []
        c = self.config
        for key, st, idx, (n, k), examples in self._keys.close():
            n, k, covered = n + st.carry[0], k + st.carry[1], int(st.carry[2]) + 1
            if n < c.min_calls and covered < POOL_BUCKETS:
                st.carry = [n, k, float(covered)]  # too few calls: pooled with the next bucket
                continue
            st.carry = [0.0, 0.0, 0.0]
            if n < c.min_calls:
                continue
            if st.n < c.warmup_buckets:
                st.n += 1
                st.calls += n
                st.hits += k
                st.share = st.hits / st.calls
                continue
            share = k / n
            p = min(max(st.share, MIN_BASE_SHARE), 1 - MIN_BASE_SHARE)  # a key always at the limit: no 0/0
            z = binomial_z(k, n, p)
            high = share >= c.ratio * p and share >= p + c.min_delta and z >= c.z_threshold
            st.run = st.run + covered if high else 0
            if not high:
                st.armed = True
                st.share += c.alpha * (share - st.share)
                continue
            if st.run >= c.min_buckets and st.armed:
                st.armed = False
                start, _ = self._keys.window(idx - st.run + 1)
                _, end = self._keys.window(idx)
                out.append(Candidate(
                    anomaly_type=self.anomaly_type, service=key[0], model=key[1], detection_method="binomial_share",
                    confidence=min(1.0, 0.5 + (share - p)), metric=self.metric, value=share, baseline=p,
                    threshold=max(c.ratio * p, p + c.min_delta), deviation_sigma=z, window_start=start,
                    window_end=end, context={"trace_ids": examples, "calls": int(n), self.hit_label: int(k),
                                             "bucket_s": c.bucket_s}))
        return out
