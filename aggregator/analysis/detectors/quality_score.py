"""Answer quality: evaluation scores worse than their baseline, bad labels, and user satisfaction.

Fed :class:`sentinel.quality.QualityEvent` s (already joined to their LLM call's service and model),
not feature rows. Per (service, model, evaluation name) and event-time bucket of ``bucket_s``
(tumbling, closed by the watermark, :mod:`aggregator.analysis.detectors.buckets`):

- **score drop** (evaluations with a score): a one-sided CUSUM on the bucket's mean score,
  standardised by the baseline's per-event deviation (at least ``min_sd``) over sqrt(events),
  in the worse direction (up for names such as ``hallucination`` or ``toxicity``, see
  :func:`sentinel.quality.higher_is_worse`; down for groundedness, relevance, a judge's score):
  ``S = max(0, S + d - cusum_k)``, alerted once when ``S >= cusum_h`` and the mean is at least
  ``min_delta`` worse than the baseline; re-armed when ``S`` returns to 0;
- **bad labels** (evaluations with a label, :func:`sentinel.quality.label_is_bad`): the bucket's bad
  share against the baseline share, high when at least ``ratio`` × and ``min_delta`` above it and
  the binomial z of the exact tail >= ``z_threshold`` (as :mod:`aggregator.analysis.detectors.finish_length`);
- **satisfaction** (user feedback, name ``user_feedback``; bad = thumbs down, a low rating or
  score): satisfaction = 1 − bad share, alerted as ``satisfaction_drop`` when under ``floor`` (the
  plan's 85 %) from a baseline at least 0.03 above it, or — for a key whose baseline is already near
  or under the floor — ``min_delta`` under its own baseline, with the same binomial significance
  against the baseline and a binomial z of at least 2 against the threshold (one noisy bucket just
  under 85 % is not a drop).

Baselines: pooled over the first ``warmup_buckets`` buckets with at least ``min_events`` events,
then EWMAs (weight ``alpha``) of buckets that were not high. A bucket with fewer than ``min_events``
events is skipped.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.analysis.detectors.binomial import binomial_z
from aggregator.analysis.detectors.buckets import BucketedKeys
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch
from sentinel.quality import FEEDBACK_NAME, QualityEvent, higher_is_worse, label_is_bad

__all__ = ["QualityScoreConfig", "QualityScoreDetector"]

NAME = "quality"
KEY_COLUMNS = ("service", "model", "name")
MIN_BASE_SHARE = 0.01
#: Satisfaction baselines this close to the floor (or under it) are judged against themselves.
FLOOR_MARGIN = 0.03
#: How far (binomial z) a bucket's bad share must lie beyond the satisfaction threshold's.
THRESHOLD_Z = 2.0
_FIELDS = 5  # scored, score sum, score square sum, labelled, bad
#: Closed buckets kept per key for the page's chart (memory only).
HISTORY_BUCKETS = 180


@dataclass(frozen=True, kw_only=True)
class QualityScoreConfig:
    """Settings of ``quality.evaluations`` and ``quality.feedback`` (one detector each)."""

    bucket_s: float = 60.0
    lateness_s: float = 30.0
    warmup_buckets: int = 10
    min_events: int = 10
    cusum_k: float = 0.5
    cusum_h: float = 5.0
    min_sd: float = 0.02
    min_delta: float = 0.1
    ratio: float = 2.0
    z_threshold: float = 4.0
    alpha: float = 0.05
    floor: float = 0.85
    #: Extra evaluation-name fragments whose higher scores are worse (beside hallucination, toxicity, ...).
    higher_is_worse: tuple[str, ...] = field(default_factory=tuple)
    max_keys: int = 10_000

    def validate(self, section: str = "quality.evaluations") -> QualityScoreConfig:
        """Raise :class:`sentinel.config.ConfigError` naming ``<section>.<key>``."""
        s = section
        check_positive(s, "bucket_s", self.bucket_s)
        check_min(s, "lateness_s", self.lateness_s, 0)
        check_min(s, "warmup_buckets", self.warmup_buckets, 1)
        check_min(s, "min_events", self.min_events, 1)
        check_min(s, "cusum_k", self.cusum_k, 0)
        check_positive(s, "cusum_h", self.cusum_h)
        check_positive(s, "min_sd", self.min_sd)
        check_fraction(s, "min_delta", self.min_delta, open_high=True)
        check_min(s, "ratio", self.ratio, 1)
        check_min(s, "z_threshold", self.z_threshold, 0)
        check_fraction(s, "alpha", self.alpha)
        check_fraction(s, "floor", self.floor, open_high=True)
        check_min(s, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = (
        "armed_score",
        "armed_share",
        "bad",
        "cusum",
        "labelled",
        "mean",
        "n",
        "scored",
        "share",
        "sq",
        "total",
        "var",
    )

    def __init__(self) -> None:
        self.n = 0  # warm-up buckets seen
        self.scored = self.total = self.sq = 0.0  # warm-up score totals
        self.labelled = self.bad = 0.0  # warm-up label totals
        self.mean = self.var = self.share = math.nan
        self.cusum = 0.0
        self.armed_score = self.armed_share = True

    def to_state(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__slots__}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}  # JSON: no NaN

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        for k in cls.__slots__:
            v = d[k]
            setattr(st, k, math.nan if v is None else v)
        return st


def _batch(events: Sequence[QualityEvent]) -> FeatureBatch:
    """The events as the columns :class:`BucketedKeys` reads (time, key, trace id)."""
    return FeatureBatch(
        n=len(events), numeric={"time_unix_nano": np.array([e.time_unix_nano for e in events], dtype=np.int64)},
        strings={"service": [e.service for e in events], "model": [e.model for e in events],
                 "name": [e.name for e in events], "trace_id": [e.trace_id for e in events]})


def _binomial_z(k: float, n: float, p: float) -> float:
    return binomial_z(k, n, min(max(p, MIN_BASE_SHARE), 1 - MIN_BASE_SHARE))


class QualityScoreDetector:
    """Score drops, bad-label surges and satisfaction drops per (service, model, evaluation name)."""

    def __init__(self, config: QualityScoreConfig | None = None) -> None:
        self.config = config or QualityScoreConfig()
        c = self.config
        self._keys: BucketedKeys[_KeyState] = BucketedKeys(
            width_s=c.bucket_s, lateness_s=c.lateness_s, max_keys=c.max_keys, n_fields=_FIELDS, factory=_KeyState)
        self._history: OrderedDict[tuple[Any, ...], deque[list[Any]]] = OrderedDict()

    def history(self, service: str) -> list[dict[str, Any]]:
        """Recent closed buckets of ``service``'s keys: ``[start_s, mean score, bad share, events]`` each."""
        return [{"model": k[1], "eval_name": k[2], "bucket_s": self.config.bucket_s,
                 "baseline": (None if math.isnan(st.mean) else st.mean) if (st := self._keys.keys.items.get(k))
                 else None, "points": list(h)}
                for k, h in self._history.items() if k[0] == service]

    def _remember(self, key: tuple[Any, ...], idx: int, sums: list[float]) -> None:
        n_sc, total, _, n_lab, k_bad = sums
        h = self._history.get(key)
        if h is None:
            h = self._history[key] = deque(maxlen=HISTORY_BUCKETS)
            if len(self._history) > self.config.max_keys:
                self._history.popitem(last=False)
        self._history.move_to_end(key)
        h.append([idx * self.config.bucket_s, total / n_sc if n_sc else None, k_bad / n_lab if n_lab else None,
                  int(max(n_sc, n_lab))])

    @property
    def late_events(self) -> int:
        return self._keys.late_rows

    def update(self, events: Sequence[QualityEvent]) -> list[Candidate]:
        if events:
            scored = np.array([e.score is not None for e in events], dtype=np.float64)
            score = np.array([e.score if e.score is not None else 0.0 for e in events])
            bad_flags = [e.is_bad(self.config.higher_is_worse) if e.kind == "feedback" else label_is_bad(e.label)
                         for e in events]
            labelled = np.array([b is not None for b in bad_flags], dtype=np.float64)
            bad = np.array([b is True for b in bad_flags], dtype=np.float64)
            self._keys.add(_batch(events), KEY_COLUMNS, [scored, score, score * score, labelled, bad], bad + 0.5)
        out: list[Candidate] = []
        for key, st, idx, sums, examples in self._keys.close():
            if sums[0] or sums[3]:
                self._remember(key, idx, sums)
            out.extend(self._bucket(key, st, idx, sums, examples))
        return out

    def _bucket(self, key: tuple[Any, ...], st: _KeyState, idx: int, sums: list[float], examples: list[str]
                ) -> list[Candidate]:
        c = self.config
        n_sc, total, sq, n_lab, k_bad = sums
        enough_sc, enough_lab = n_sc >= c.min_events, n_lab >= c.min_events
        if not (enough_sc or enough_lab):
            return []
        if st.n < c.warmup_buckets:
            st.n += 1
            st.scored += n_sc
            st.total += total
            st.sq += sq
            st.labelled += n_lab
            st.bad += k_bad
            if st.scored:
                st.mean = st.total / st.scored
                st.var = max(st.sq / st.scored - st.mean ** 2, 0.0)
            if st.labelled:
                st.share = st.bad / st.labelled
            return []
        service, model, name = key
        start, end = self._keys.window(idx)
        ctx = {"trace_ids": examples, "eval_name": name, "bucket_s": c.bucket_s}
        out: list[Candidate] = []
        if enough_sc and not math.isnan(st.mean):
            mean = total / n_sc
            worse_up = higher_is_worse(name, c.higher_is_worse)
            sd = max(math.sqrt(st.var), c.min_sd)
            d = (mean - st.mean if worse_up else st.mean - mean) / (sd / math.sqrt(n_sc))
            st.cusum = max(0.0, st.cusum + d - c.cusum_k)
            worse_by = mean - st.mean if worse_up else st.mean - mean
            if st.cusum >= c.cusum_h and worse_by >= c.min_delta and st.armed_score:
                st.armed_score = False
                out.append(Candidate(
                    anomaly_type="quality_regression", service=service, model=model, detection_method="cusum",
                    confidence=min(1.0, 0.6 + 0.4 * worse_by / max(c.min_delta, 1e-9) / 4), metric=f"eval.{name}",
                    value=mean, baseline=st.mean, threshold=st.mean + (c.min_delta if worse_up else -c.min_delta),
                    deviation_sigma=d, window_start=start, window_end=end,
                    context={**ctx, "events": int(n_sc), "cusum": st.cusum,
                             "direction": "higher_is_worse" if worse_up else "lower_is_worse"}))
            if st.cusum == 0.0:
                st.armed_score = True
            if d <= c.cusum_k:  # not part of an excursion: the baseline follows slow change
                st.mean += c.alpha * (mean - st.mean)
                st.var += c.alpha * (max(sq / n_sc - mean ** 2, 0.0) - st.var)
        if enough_lab and not math.isnan(st.share):
            share = k_bad / n_lab
            p = st.share
            z = _binomial_z(k_bad, n_lab, p)
            if name == FEEDBACK_NAME:
                base_sat = 1.0 - p
                threshold = c.floor if base_sat - c.floor >= FLOOR_MARGIN else base_sat - c.min_delta
                # Significant against the baseline, and under the threshold beyond the bucket's noise.
                high = (1.0 - share < threshold and z >= c.z_threshold
                        and _binomial_z(k_bad, n_lab, 1.0 - threshold) >= THRESHOLD_Z)
            else:
                threshold = max(c.ratio * p, p + c.min_delta)
                high = share >= threshold and z >= c.z_threshold
            if high and st.armed_share:
                st.armed_share = False
                if name == FEEDBACK_NAME:
                    out.append(Candidate(
                        anomaly_type="satisfaction_drop", service=service, model=model,
                        detection_method="binomial_share", confidence=min(1.0, 0.6 + (base_sat - (1 - share))),
                        metric="satisfaction_rate", value=1.0 - share, baseline=base_sat, threshold=threshold,
                        deviation_sigma=-z, window_start=start, window_end=end,
                        context={**ctx, "feedback": int(n_lab), "negative": int(k_bad)}))
                else:
                    out.append(Candidate(
                        anomaly_type="quality_regression", service=service, model=model,
                        detection_method="binomial_share", confidence=min(1.0, 0.5 + (share - p)),
                        metric=f"eval.{name}.bad_share", value=share, baseline=p, threshold=threshold,
                        deviation_sigma=z, window_start=start, window_end=end,
                        context={**ctx, "labelled": int(n_lab), "bad": int(k_bad)}))
            elif not high:
                st.armed_share = True
                st.share += c.alpha * (share - st.share)
        return out

    def to_state(self) -> dict[str, Any]:
        return {"detector": NAME, "version": 1, **self._keys.to_state(lambda s: s.to_state())}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: QualityScoreConfig | None = None) -> QualityScoreDetector:
        if state.get("detector") != NAME or state.get("version") != 1:
            raise ValueError(f"not a {NAME} state (version 1)")
        det = cls(config)
        det._keys.load_state(dict(state), _KeyState.from_state)
        return det
