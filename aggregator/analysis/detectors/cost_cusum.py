"""Cost change detection: a one-sided CUSUM on the cost rate per (service, request model).

Cost is summed per event-time bucket (``bucket_s``) and key (see :mod:`aggregator.analysis.detectors.buckets`).
The first ``warmup_buckets`` closed buckets give the key's mean and standard deviation; after that
each bucket's standardised cost ``z = (x − mean)/std`` feeds Page's upper CUSUM
``S = min(max(0, S + z − k), 2h)``, which alarms once when ``S > h`` and re-arms when ``S`` is back
at 0. The baseline keeps learning (EWMA, weight ``alpha``, values clipped to mean ± ``clip_sigma``·std)
only while ``S <= h``, so a runaway does not become the new normal while it is being reported.

With ``per_call`` (the default) the value judged is the bucket's cost **per call** (its cost over
its calls): a diurnal ramp or a quiet hour changes how many calls there are, not what each costs,
so it is no cost anomaly, while dearer calls (longer prompts or outputs, a pricier model, a creep of
a few percent a minute) move it as they move the total. Off, the bucket's total cost is judged (a
spend rate: more calls at the same price count too).

Buckets without calls are skipped (neither scored nor learned): a key with no calls has no cost
*rate* to judge — a silent sidecar or a restart is the throughput detector's business — and learning
their zeros would drag the mean down so that the recovery reads as a cost rise.

References
----------
E. S. Page, "Continuous inspection schemes", Biometrika 41 (1/2), 1954, pp. 100–115.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.buckets import BucketedDetector
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.validation import check_min, check_positive
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch

__all__ = [
    "DEFAULT_BUCKET_S", "DEFAULT_H", "DEFAULT_K", "DEFAULT_WARMUP_BUCKETS", "CostCusumConfig", "CostCusumDetector",
]

NAME = "cost_cusum"
DEFAULT_BUCKET_S = 60.0
#: Rows may arrive this late (event time behind the newest row seen) and still count.
DEFAULT_LATENESS_S = 30.0
DEFAULT_WARMUP_BUCKETS = 30
#: Allowance (in std): shifts smaller than ~2k std are ignored.
DEFAULT_K = 0.5
#: Decision interval (in std). Page's ARL for in-control normal data is ~2·10⁴ buckets at k 0.5, h 8.
DEFAULT_H = 8.0
DEFAULT_ALPHA = 0.05
DEFAULT_CLIP_SIGMA = 4.0
#: Std floor relative to the mean: a key with steady spend must not alarm on cents.
DEFAULT_MIN_STD_RATIO = 0.1
DEFAULT_MIN_STD_USD = 1e-6
DEFAULT_MAX_KEYS = 10_000
DEFAULT_PER_CALL = True
KEY_COLUMNS = ("service", "request_model")


@dataclass(frozen=True, kw_only=True)
class CostCusumConfig:
    """Settings of ``detectors.cost_cusum``."""

    bucket_s: float = DEFAULT_BUCKET_S
    lateness_s: float = DEFAULT_LATENESS_S
    warmup_buckets: int = DEFAULT_WARMUP_BUCKETS
    k: float = DEFAULT_K
    h: float = DEFAULT_H
    alpha: float = DEFAULT_ALPHA
    clip_sigma: float = DEFAULT_CLIP_SIGMA
    min_std_ratio: float = DEFAULT_MIN_STD_RATIO
    min_std_usd: float = DEFAULT_MIN_STD_USD
    per_call: bool = DEFAULT_PER_CALL
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> CostCusumConfig:
        check_positive(NAME, "bucket_s", self.bucket_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "warmup_buckets", self.warmup_buckets, 2)
        check_min(NAME, "k", self.k, 0)
        check_positive(NAME, "h", self.h)
        check_positive(NAME, "alpha", self.alpha)
        check_min(NAME, "alpha", -self.alpha, -1)
        check_positive(NAME, "clip_sigma", self.clip_sigma)
        check_min(NAME, "min_std_ratio", self.min_std_ratio, 0)
        check_positive(NAME, "min_std_usd", self.min_std_usd)
        check_min(NAME, "max_keys", self.max_keys, 1)
        if not isinstance(self.per_call, bool):
            raise ConfigError(f"detectors.{NAME}.per_call: must be true or false, got {self.per_call!r}")
        return self


class _KeyState:
    __slots__ = ("armed", "mean", "n", "per_call", "s", "var")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.var = 0.0
        self.s = 0.0
        self.armed = True
        self.per_call: bool | None = None  # what mean and var are of (None: nothing learned yet)

    def to_state(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "var": self.var, "s": self.s, "armed": self.armed,
                "per_call": self.per_call}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.n, st.mean, st.var = int(d["n"]), float(d["mean"]), float(d["var"])
        st.s, st.armed = float(d["s"]), bool(d["armed"])
        st.per_call = d.get("per_call", False if st.n else None)  # saved before per_call: bucket totals
        return st


class CostCusumDetector(BucketedDetector[CostCusumConfig, _KeyState]):
    """Upper CUSUM of cost per bucket, per (service, request_model).

    >>> det = CostCusumDetector(CostCusumConfig(bucket_s=60))
    >>> det.update(batch)                                    # doctest: +SKIP
    [Candidate(anomaly_type='cost_anomaly', ...)]
    """

    NAME = NAME
    CONFIG = CostCusumConfig
    KEY_STATE = _KeyState
    N_FIELDS = 2

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        """Add the batch, then run the CUSUM over every bucket the watermark closed."""
        if batch.n:
            cost = batch.numeric["cost_usd"]
            self._keys.add(batch, KEY_COLUMNS, [cost, np.ones(batch.n)], cost)
        out: list[Candidate] = []
        c = self.config
        for key, st, idx, (total, calls), examples in self._keys.close():
            if calls <= 0:
                continue
            if st.per_call is not c.per_call:  # learned in the other unit (a changed setting): learn afresh
                st.n, st.mean, st.var, st.s, st.armed, st.per_call = 0, 0.0, 0.0, 0.0, True, c.per_call
            x = total / calls if c.per_call else total
            if st.n < c.warmup_buckets:
                st.n += 1
                d = x - st.mean
                st.mean += d / st.n
                st.var += (d * (x - st.mean) - st.var) / st.n
                continue
            sigma = max(math.sqrt(st.var), c.min_std_ratio * abs(st.mean), c.min_std_usd)
            z = (x - st.mean) / sigma
            st.s = min(max(0.0, st.s + z - c.k), 2 * c.h)
            if st.s > c.h and st.armed:
                st.armed = False
                start, end = self._keys.window(idx)
                out.append(Candidate(
                    anomaly_type="cost_anomaly", service=key[0], model=key[1], detection_method="cusum",
                    confidence=min(1.0, st.s / (2 * c.h)),
                    metric="cost_usd_per_call" if c.per_call else "cost_usd_per_bucket", value=x,
                    baseline=st.mean, threshold=st.mean + c.k * sigma, deviation_sigma=z,
                    window_start=start, window_end=end,
                    context={"trace_ids": examples, "cusum": st.s, "h": c.h, "k": c.k, "calls": int(calls),
                             "cost_usd": total, "bucket_s": c.bucket_s}))
            if st.s == 0.0:
                st.armed = True
            if st.s <= c.h:
                d = min(max(x, st.mean - c.clip_sigma * sigma), st.mean + c.clip_sigma * sigma) - st.mean
                st.mean += c.alpha * d
                st.var = (1 - c.alpha) * (st.var + c.alpha * d * d)
        return out
