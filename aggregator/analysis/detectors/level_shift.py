"""Level shifts of latency and time to first token: per (service, request model, region), log scale.

A slow provider, a slow region or a prefill regression moves the *level* of a key's latencies for
minutes; the sidecar's per-value baselines learn such a shift away within seconds at real call
rates, and a single slow call is not an incident. This detector watches the level itself.

Per key (service, request model, region: the most specific scope, so a regression in one region is
reported with its region) and event-time bucket of ``bucket_s`` (tumbling, closed by the watermark,
see :mod:`aggregator.analysis.detectors.buckets`), for each metric (``latency_ms`` of successful calls,
``ttft_ms`` of streamed ones) the mean and variance of ``log(value)`` of the bucket's calls are
summed. Buckets with fewer than ``min_calls`` values are skipped (neither high nor normal). The key's
baseline is the mean of its first ``warmup_buckets`` bucket means, then an EWMA (weight ``alpha``);
its scale is the larger of the EWMA spread of bucket means and the bucket's standard error (the
log-sigma of its calls over √n) — robust to heavy tails, since the log of a 60 s timeout among 3 s
calls moves a bucket mean by 3/n. A bucket is *high* when its mean is at least ``log(min_ratio)``
above the baseline **and** ``z_threshold`` scales above it; ``min_buckets`` high buckets in a row
emit one candidate: ``latency_spike`` for latency, ``ttft_regression`` for TTFT — unless the same
key's calls are slower in that bucket (latency high, tokens/s down with it: the first token is late
because everything is slow, and the latency candidate says so). High buckets do not update the
baseline (a shift stays flagged instead of being learned as the new normal); after ``relearn_buckets``
high buckets in a row the new level is accepted (the key warms up afresh; TTFT too when latency does).
Re-armed by a normal bucket.

A shift that another metric of the same calls explains is a symptom, not raised (and the metric is
disarmed until it is normal again, counted in ``explained``). The level of ``log(tokens_per_s)`` is kept
alongside (learned while latency is not high): a **latency** shift whose tokens/s did not fall by at least
``EXPLAINED_SHARE`` of the latency's rise (log scale) is longer outputs taking longer (a cost runaway, a
token spike), not slower calls — a slow provider's tokens/s falls as its latency rises. A **TTFT** shift
whose bucket's latency rose by at least ``EXPLAINED_SHARE`` of TTFT's rise is the whole call slower (a
slow provider, a latency drift): the latency candidate says so once latency is high itself, while a late
first token (a prefill regression) stays a ``ttft_regression``, also when it lifts the latency: its
tokens/s after the first token is unchanged, so that latency shift is explained and not raised.
Likewise the level of ``log(input_tokens)`` (learned while TTFT is not high): a **TTFT** shift whose
calls' prompts grew by at least ``EXPLAINED_SHARE`` of TTFT's rise is longer prompts taking longer to
prefill (a user sending 20x prompts: ``token_abuse`` reports them), not a slower first token.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.buckets import BucketedDetector
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import Key
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["EXPLAINED_SHARE", "LevelShiftConfig", "LevelShiftDetector", "shift_explained"]

NAME = "level_shift"
DEFAULT_BUCKET_S = 30.0
DEFAULT_LATENESS_S = 30.0
DEFAULT_WARMUP_BUCKETS = 10
DEFAULT_MIN_CALLS = 10
DEFAULT_MIN_RATIO = 1.5
DEFAULT_Z_THRESHOLD = 4.0
DEFAULT_MIN_BUCKETS = 2
DEFAULT_ALPHA = 0.05
DEFAULT_RELEARN_BUCKETS = 60
DEFAULT_MAX_KEYS = 10_000
KEY_COLUMNS = ("service", "request_model", "region")
#: metric -> anomaly type; the order matters: latency is judged first (see the module docstring).
METRICS: dict[str, str] = {"latency_ms": "latency_spike", "ttft_ms": "ttft_regression"}
#: The levels kept as evidence only: a latency rise without a tokens/s fall is longer outputs, a TTFT
#: rise with the prompts' rise is longer prompts (prefill), not a regression.
TOKENS_PER_S = "tokens_per_s"
INPUT_TOKENS = "input_tokens"
EVIDENCE = (TOKENS_PER_S, INPUT_TOKENS)
#: Share of a shift (log scale) that another metric of the same calls must move to explain it.
EXPLAINED_SHARE = 0.5


@dataclass(frozen=True, kw_only=True)
class LevelShiftConfig:
    """Settings of ``detectors.level_shift``."""

    bucket_s: float = DEFAULT_BUCKET_S
    lateness_s: float = DEFAULT_LATENESS_S
    warmup_buckets: int = DEFAULT_WARMUP_BUCKETS
    min_calls: int = DEFAULT_MIN_CALLS
    min_ratio: float = DEFAULT_MIN_RATIO
    z_threshold: float = DEFAULT_Z_THRESHOLD
    min_buckets: int = DEFAULT_MIN_BUCKETS
    alpha: float = DEFAULT_ALPHA
    relearn_buckets: int = DEFAULT_RELEARN_BUCKETS
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> LevelShiftConfig:
        check_positive(NAME, "bucket_s", self.bucket_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "warmup_buckets", self.warmup_buckets, 2)
        check_min(NAME, "min_calls", self.min_calls, 2)
        check_min(NAME, "min_ratio", self.min_ratio, 1)
        check_min(NAME, "z_threshold", self.z_threshold, 0)
        check_min(NAME, "min_buckets", self.min_buckets, 1)
        check_fraction(NAME, "alpha", self.alpha)
        check_min(NAME, "relearn_buckets", self.relearn_buckets, self.min_buckets)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _Level:
    """One metric of one key: [buckets learned, mean, variance of bucket means, high run, armed]."""

    __slots__ = ("armed", "mean", "n", "run", "var")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.var = 0.0
        self.run = 0
        self.armed = True

    def warm_up(self, m: float) -> None:
        """One more bucket mean ``m`` into the warm-up's mean and variance of bucket means."""
        self.n += 1
        d = m - self.mean
        self.mean += d / self.n
        self.var += (d * (m - self.mean) - self.var) / self.n

    def to_state(self) -> list[float]:
        return [self.n, self.mean, self.var, self.run, 1 if self.armed else 0]

    @classmethod
    def from_state(cls, v: list[float]) -> _Level:
        lv = cls()
        lv.n, lv.mean, lv.var, lv.run, lv.armed = int(v[0]), float(v[1]), float(v[2]), int(v[3]), bool(v[4])
        return lv


class _KeyState:
    __slots__ = ("levels",)

    def __init__(self) -> None:
        self.levels = {m: _Level() for m in (*METRICS, *EVIDENCE)}

    def to_state(self) -> dict[str, Any]:
        return {m: lv.to_state() for m, lv in self.levels.items()}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        for m in st.levels:
            if m in d:
                st.levels[m] = _Level.from_state(d[m])
        return st


def _mark_regional(cand: Candidate, regions: dict[Any, bool]) -> None:
    """``context.regional``: the shift's region is the only one high in its bucket while others were judged
    normal (``context.normal_regions``) -- "latency x3 in ap-south-1 only", not a fleet-wide shift."""
    region = cand.context.get("region")
    normal = sorted(str(r) for r, high in regions.items() if r != region and r is not None and not high)
    others_high = any(high for r, high in regions.items() if r != region)
    cand.context["regional"] = region is not None and bool(normal) and not others_high
    cand.context["normal_regions"] = normal[:10]


def shift_explained(metric: str, rise: float, evidence: float | None) -> bool:
    """Whether ``evidence`` (the same calls' rise over their level, log scale: of tokens/s for a latency
    shift, of latency for a TTFT shift) explains a shift of ``metric`` by ``rise`` > 0 (module docstring)."""
    if evidence is None:
        return False
    if metric == "latency_ms":
        return evidence > -EXPLAINED_SHARE * rise  # tokens/s did not fall with it: longer outputs
    return evidence >= EXPLAINED_SHARE * rise  # latency rose with it: the whole call slower


class LevelShiftDetector(BucketedDetector[LevelShiftConfig, _KeyState]):
    """Sustained shifts of log latency and log TTFT per (service, request_model, region)."""

    NAME = NAME
    CONFIG = LevelShiftConfig
    KEY_STATE = _KeyState
    # fields per metric (then tokens/s, then input tokens): values, sum of logs, sum of squared logs
    N_FIELDS = 3 * (len(METRICS) + len(EVIDENCE))

    def __init__(self, config: LevelShiftConfig | None = None) -> None:
        super().__init__(config)
        self.explained = 0  # shifts not raised because another metric of the same calls explains them

    # Open buckets saved before tokens/s (6 fields) or input tokens (9) were kept are read back with
    # zeros for them: BucketedKeys.load_state pads short ones.

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        if batch.n:
            ok = np.asarray(batch.numeric["is_error"]) == 0
            fields: list[np.ndarray[Any, np.dtype[np.float64]]] = []
            weight = np.zeros(batch.n)
            for m in (*METRICS, *EVIDENCE):
                x = np.asarray(batch.numeric[m], dtype=np.float64)
                has = ok & np.isfinite(x) & (x > 0)
                lx = np.where(has, np.log(np.where(has, x, 1.0)), 0.0)
                fields += [has.astype(np.float64), lx, lx * lx]
                if m in METRICS:
                    weight = np.maximum(weight, lx)
            self._keys.add(batch, KEY_COLUMNS, fields, weight)
        found: list[tuple[int, Candidate]] = []
        # (service, model, bucket, metric) -> region -> high: tells a one-region shift from a wider one
        judged: dict[tuple[Any, Any, int, str], dict[Any, bool]] = {}
        for key, st, idx, sums, examples in self._keys.close():
            latency_high = slow_calls = False
            latency_d: float | None = None  # the bucket's latency rise (log) over its level, when judged
            tps, prompt = st.levels[TOKENS_PER_S], st.levels[INPUT_TOKENS]
            ev = 3 * len(METRICS)  # the evidence levels' fields follow the metrics'
            tps_sums, prompt_sums = sums[ev:ev + 3], sums[ev + 3:ev + 6]
            tps_d = self._rise(tps, tps_sums[0], tps_sums[1])
            prompt_d = self._rise(prompt, prompt_sums[0], prompt_sums[1])
            ttft_high = False
            for i, (metric, anomaly_type) in enumerate(METRICS.items()):
                n, s1, s2 = sums[3 * i:3 * i + 3]
                if n < self.config.min_calls:
                    continue
                evidence = tps_d if metric == "latency_ms" else latency_d
                high, cand, d = self._judge(key, st.levels[metric], idx, metric, anomaly_type, n, s1, s2, examples,
                                            suppress=slow_calls, evidence=evidence,
                                            prompt=prompt_d if metric == "ttft_ms" else None)
                judged.setdefault((key[0], key[1], idx, metric), {})[key[2]] = high
                if metric == "latency_ms":
                    latency_high, latency_d = high, d
                    # slower calls, not longer outputs (nor a late first token at an unchanged generation speed)
                    slow_calls = high and not (d is not None and shift_explained(metric, d, tps_d))
                    if high and st.levels[metric].n == 0:
                        # latency accepted its new level: so does TTFT, whose rise it explained meanwhile
                        st.levels["ttft_ms"] = _Level()
                else:
                    ttft_high = high
                if cand is not None:
                    found.append((idx, cand))
            if not latency_high:  # tokens/s is learned while latency is normal (a slow provider's is frozen)
                self._learn(tps, *tps_sums)
            if not ttft_high:  # prompt sizes while TTFT is normal (longer prompts' TTFT rise stays explained)
                self._learn(prompt, *prompt_sums)
        for idx, cand in found:
            _mark_regional(cand, judged.get((cand.service, cand.model, idx, cand.metric), {}))
        return [cand for _, cand in found]

    def _rise(self, lv: _Level, n: float, s1: float) -> float | None:
        """The bucket's mean log over the warmed-up level ``lv`` (None: too few values or not warmed up)."""
        if n < self.config.min_calls or lv.n < self.config.warmup_buckets:
            return None
        return s1 / n - lv.mean

    def _learn(self, lv: _Level, n: float, s1: float, s2: float) -> None:
        """Learn a bucket into an evidence level: warm-up mean, then a clipped EWMA either way."""
        c = self.config
        if n < c.min_calls:
            return
        m = s1 / n
        if lv.n < c.warmup_buckets:
            lv.warm_up(m)
            return
        scale = max(math.sqrt(lv.var), math.sqrt(max(s2 / n - m * m, 0.0) / n), 1e-6)
        u = max(-3 * scale, min(m - lv.mean, 3 * scale))
        lv.mean += c.alpha * u
        lv.var = (1 - c.alpha) * (lv.var + c.alpha * u * u)

    def _judge(self, key: Key, lv: _Level, idx: int, metric: str, anomaly_type: str, n: float, s1: float,
               s2: float, examples: list[str], *, suppress: bool, evidence: float | None,
               prompt: float | None = None) -> tuple[bool, Candidate | None, float | None]:
        """Judge one metric's bucket: (high, the candidate it emits, its rise over the level; None in warm-up).

        ``prompt``: the same calls' rise of log input tokens over their level (a TTFT shift's prefill)."""
        c = self.config
        m = s1 / n
        within_var = max(s2 / n - m * m, 0.0)
        if lv.n < c.warmup_buckets:
            lv.warm_up(m)
            return False, None, None
        scale = max(math.sqrt(lv.var), math.sqrt(within_var / n), 1e-6)
        d = m - lv.mean
        z = d / scale
        high = d >= math.log(c.min_ratio) and z >= c.z_threshold
        lv.run = lv.run + 1 if high else 0
        cand: Candidate | None = None
        if not high:
            lv.armed = True
            u = min(d, 3 * scale)  # clipped: one odd bucket does not drag the level
            lv.mean += c.alpha * u
            lv.var = (1 - c.alpha) * (lv.var + c.alpha * u * u)
        elif lv.run >= c.relearn_buckets:
            lv.n, lv.mean, lv.var, lv.run, lv.armed = 0, 0.0, 0.0, 0, True
        elif lv.run >= c.min_buckets and lv.armed and not suppress and (
                shift_explained(metric, d, evidence) or (prompt is not None and prompt >= EXPLAINED_SHARE * d)):
            lv.armed = False  # a symptom of another metric's change (module docstring): not raised
            self.explained += 1
        elif lv.run >= c.min_buckets and lv.armed and not suppress:
            lv.armed = False
            start, _ = self._keys.window(idx - lv.run + 1)
            _, end = self._keys.window(idx)
            value, base = math.exp(m), math.exp(lv.mean)
            cand = Candidate(
                anomaly_type=anomaly_type, service=key[0], model=key[1], detection_method="log_level_shift",
                confidence=min(1.0, 0.5 + d / 4), metric=metric, value=value, baseline=base,
                threshold=base * max(c.min_ratio, math.exp(c.z_threshold * scale)), deviation_sigma=z,
                window_start=start, window_end=end,
                context={"trace_ids": examples, "region": key[2], "calls": int(n), "ratio": value / base,
                         "bucket_s": c.bucket_s, "high_buckets": lv.run})
        return high, cand, d
