"""Throughput drops: calls per event-time bucket of a key against its recent rate.

Calls are counted per (service, request model) in tumbling buckets of ``bucket_s`` (closed by the
watermark, so a key that goes silent gets zero buckets, see :mod:`aggregator.analysis.detectors.buckets`).
The first ``warmup_buckets`` give the key's mean rate; after that it is an EWMA (weight ``alpha``).
A bucket is *low* when the baseline is at least ``min_baseline_calls``, the count is below
``drop_ratio`` × baseline, and the drop is significant for Poisson counts:
``(baseline − calls)/sqrt(baseline) >= z_threshold`` — or, for a key too small for one bucket to
tell, the bucket and the one before it together are (both below ``drop_ratio`` × baseline, their sum
significant against twice the baseline). Half-minute buckets with that pooled test see a large key's
drop half a bucket sooner than one-minute buckets and a small key's as soon: a drop is raised
``bucket_s + lateness_s`` after it began, plus the hold below unless the sidecars are past it (60 to
90 s with the defaults; issue 13 asks for level shifts within 2 minutes of event time, and one-minute
buckets took 150 s). After ``min_buckets`` buckets under the ratio in a row, the latest low, the key
fires once; it re-arms after a bucket that is not under ``drop_ratio`` × baseline. Those buckets do not
update the baseline (the drop is measured against the rate before it); after ``relearn_buckets`` low buckets in
a row the lower rate is taken as the new normal (the key warms up afresh). Nor do *high* buckets, as
far above the baseline as a low one is below it (above baseline / ``drop_ratio``, as significant): a
surge learned into the baseline made its own end a drop (budget.yaml's 20× calls for 5 minutes, then
a critical ``throughput_drop``); after ``relearn_buckets`` high buckets in a row the higher rate is
the new normal.

Tokens per second, the same way in the same buckets: the mean ``tokens_per_s`` of a bucket's calls
(buckets with fewer than ``tps_min_calls`` such calls are skipped) against the key's baseline (mean of
the first ``warmup_buckets`` such buckets, then EWMA ``alpha``; a bucket with fewer such calls is pooled
with the next, over at most ``ceil(sustain_s / bucket_s)`` buckets, so a small key's mean still covers
``sustain_s``). A bucket is low below
``tps_drop_ratio`` × baseline; ``ceil(sustain_s / bucket_s)`` low buckets in a row (the whole first
minute with the defaults) emit one ``throughput_drop`` candidate with metric ``tokens_per_s``.
A slow provider is not a throughput drop: the bucket's mean log latency of the same calls is kept
against its own baseline, and a tokens/s drop that the latency rise explains (latency ratio ×
tokens/s ratio ≥ ``SLOW_PROVIDER_SHARE``, 0.7: latency ×3 with tokens/s ÷3) is not raised (counted in
``slow_provider``; ``level_shift`` raises ``latency_spike``), while outputs collapsing at an unchanged
latency still are. Re-arming, baseline freeze and relearning as for calls; a bucket above baseline / ``tps_drop_ratio``
is not learned either (a TTFT regression makes generation after the first token look fast, and the
return to normal would read as a drop), and is accepted after ``relearn_buckets`` in a row.

Known loss and young keys. A key's rows that arrive after their bucket closed (a sidecar that fell
behind, a forward queue that filled up) are not traffic that stopped: every drop is held for
``hold_buckets`` more closed buckets, and dropped (counted in ``known_loss``) when late rows of that
key for the drop's window arrived meanwhile. A key needs ``min_history_buckets`` closed buckets
(warm-up included) of history before its drop began for the drop to be raised, so a model that appeared for ten
minutes (reported by ``model_swap`` when it appeared) is not reported as a drop when it goes away. A key
seen since the detector's first closed buckets (``START_GRACE_BUCKETS``) is exempt: it did not appear
while the detector was watching, its history is all the detector has, and without the exemption a fresh
aggregator could not report a whole service going down in its first ``min_history_buckets``.

What sidecars report (:mod:`aggregator.analysis.detectors.known_loss`, given as :attr:`ThroughputDropDetector.loss`):
a drop whose window overlaps a loss window of its service — a sidecar restart (spans sent while it
was down are gone), rows a sidecar dropped or exports it refused — is not raised either (counted
in ``known_loss``). A drop that begins as every sidecar carrying the service falls silent may be
a restart whose first batch is still to come: it is held up to ``silent_hold_buckets`` more
closed buckets while they stay silent, then raised unless a loss window turned up meanwhile (a
service whose only sidecar is down for longer is reported, that much later). So is a drop whose
service's sidecar is *behind* (its last batch said ``behind_queue_batches`` or more sealed batches
were queued): the drop's rows may be in that queue, and when they arrive late the drop is dropped
as known loss. The other way round, a drop is not held for late rows (``hold_buckets``) once every
sidecar carrying its service has sent rows ``lateness_s`` past the drop's window and none is behind
(:meth:`~aggregator.analysis.detectors.known_loss.KnownLoss.caught_up`): each has sent what it had of
the window, so no late rows can come and the hold would only delay the alert (by a bucket).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.buckets import BucketedKeys, same_width
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import Key
from aggregator.analysis.detectors.known_loss import KnownLoss
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["ThroughputDropConfig", "ThroughputDropDetector"]

NAME = "throughput_drop"
DEFAULT_BUCKET_S = 30.0
DEFAULT_LATENESS_S = 30.0
#: The counts of buckets below keep the durations of one-minute buckets (10, 30, 60 min; 5 min).
DEFAULT_WARMUP_BUCKETS = 20
DEFAULT_DROP_RATIO = 0.5
DEFAULT_Z_THRESHOLD = 4.0
DEFAULT_MIN_BASELINE_CALLS = 10.0
DEFAULT_MIN_BUCKETS = 1
DEFAULT_ALPHA = 0.05
DEFAULT_RELEARN_BUCKETS = 120
DEFAULT_TPS_DROP_RATIO = 0.5
DEFAULT_SUSTAIN_S = 60.0
DEFAULT_TPS_MIN_CALLS = 10
DEFAULT_MAX_KEYS = 10_000
DEFAULT_HOLD_BUCKETS = 1
DEFAULT_MIN_HISTORY_BUCKETS = 60
DEFAULT_SILENT_HOLD_BUCKETS = 10
#: A sidecar whose forward queue held this many sealed batches when it sealed one is behind (a
#: healthy one sends each batch within a batch timeout: 0 or 1 waiting).
DEFAULT_BEHIND_QUEUE_BATCHES = 4
KEY_COLUMNS = ("service", "request_model")
#: bucket sums: calls, tokens/s sum, calls with tokens/s, log latency sum, calls with both
N_FIELDS = 5
#: A tokens/s drop whose latency rise explains at least this share of it (latency ratio x tokens/s
#: ratio) is a slow provider, reported by level_shift as latency_spike, not a throughput drop.
SLOW_PROVIDER_SHARE = 0.7
#: A key whose first bucket is at most this many buckets after the detector's first is as old as the
#: detector (it was there when watching began, not new), so ``min_history_buckets`` does not apply to it.
START_GRACE_BUCKETS = 2
#: ``_first_bucket`` of a state saved before it was kept: no key is known to be as old as the detector.
_START_UNKNOWN = -(2**62)


@dataclass(frozen=True, kw_only=True)
class ThroughputDropConfig:
    """Settings of ``detectors.throughput_drop``."""

    bucket_s: float = DEFAULT_BUCKET_S
    lateness_s: float = DEFAULT_LATENESS_S
    warmup_buckets: int = DEFAULT_WARMUP_BUCKETS
    drop_ratio: float = DEFAULT_DROP_RATIO
    z_threshold: float = DEFAULT_Z_THRESHOLD
    min_baseline_calls: float = DEFAULT_MIN_BASELINE_CALLS
    min_buckets: int = DEFAULT_MIN_BUCKETS
    alpha: float = DEFAULT_ALPHA
    relearn_buckets: int = DEFAULT_RELEARN_BUCKETS
    tps_drop_ratio: float = DEFAULT_TPS_DROP_RATIO
    sustain_s: float = DEFAULT_SUSTAIN_S
    tps_min_calls: int = DEFAULT_TPS_MIN_CALLS
    hold_buckets: int = DEFAULT_HOLD_BUCKETS
    min_history_buckets: int = DEFAULT_MIN_HISTORY_BUCKETS
    silent_hold_buckets: int = DEFAULT_SILENT_HOLD_BUCKETS
    behind_queue_batches: int = DEFAULT_BEHIND_QUEUE_BATCHES
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> ThroughputDropConfig:
        check_positive(NAME, "bucket_s", self.bucket_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "warmup_buckets", self.warmup_buckets, 1)
        check_fraction(NAME, "drop_ratio", self.drop_ratio, open_high=True)
        check_min(NAME, "z_threshold", self.z_threshold, 0)
        check_positive(NAME, "min_baseline_calls", self.min_baseline_calls)
        check_min(NAME, "min_buckets", self.min_buckets, 1)
        check_fraction(NAME, "alpha", self.alpha)
        check_min(NAME, "relearn_buckets", self.relearn_buckets, self.min_buckets)
        check_fraction(NAME, "tps_drop_ratio", self.tps_drop_ratio, open_high=True)
        check_positive(NAME, "sustain_s", self.sustain_s)
        check_min(NAME, "relearn_buckets", self.relearn_buckets, self.tps_buckets)
        check_min(NAME, "tps_min_calls", self.tps_min_calls, 1)
        check_min(NAME, "hold_buckets", self.hold_buckets, 0)
        check_min(NAME, "min_history_buckets", self.min_history_buckets, 0)
        check_min(NAME, "silent_hold_buckets", self.silent_hold_buckets, 0)
        check_min(NAME, "behind_queue_batches", self.behind_queue_batches, 1)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self

    @property
    def tps_buckets(self) -> int:
        """Low tokens/s buckets in a row needed to cover ``sustain_s``."""
        return max(1, math.ceil(self.sustain_s / self.bucket_s - 1e-9))


class _KeyState:
    __slots__ = ("age", "armed", "carry", "high_run", "mean", "n", "prev", "run", "tps")

    def __init__(self) -> None:
        self.age = 0  # closed buckets seen
        self.n = 0
        self.mean = 0.0
        self.run = 0
        self.high_run = 0  # buckets in a row far above the baseline (not learned)
        self.armed = True
        self.prev = math.nan  # the previous bucket's calls when it was below drop_ratio x baseline (pooled test)
        # tokens/s: [buckets learned, mean, low run, armed (0/1), high run]
        self.tps: list[float] = [0, 0.0, 0, 1, 0]
        # tokens/s sums of buckets too small to judge, pooled with the next: [tokens/s sum, calls, log latency
        # sum, calls, buckets]
        self.carry: list[float] = [0.0] * 5

    def to_state(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.mean, "run": self.run, "armed": self.armed, "tps": self.tps,
                "age": self.age, "high_run": self.high_run, "prev": None if math.isnan(self.prev) else self.prev,
                "carry": self.carry}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.n, st.mean, st.run, st.armed = int(d["n"]), float(d["mean"]), int(d["run"]), bool(d["armed"])
        if "tps" in d:  # version 1 had calls only
            st.tps = [float(v) for v in d["tps"]]
        st.age = int(d.get("age", 10**9))  # saved before ages were kept: old enough
        st.high_run = int(d.get("high_run", 0))
        prev = d.get("prev")
        st.prev = math.nan if prev is None else float(prev)
        st.carry = [float(v) for v in d.get("carry", st.carry)]
        return st


class ThroughputDropDetector:
    """Calls per bucket vs the key's recent rate, per (service, request_model)."""

    def __init__(self, config: ThroughputDropConfig | None = None) -> None:
        self.config = (config or ThroughputDropConfig()).validate()
        c = self.config
        self._keys: BucketedKeys[_KeyState] = BucketedKeys(
            width_s=c.bucket_s, lateness_s=c.lateness_s, max_keys=c.max_keys, n_fields=N_FIELDS, factory=_KeyState)
        # drops held for hold_buckets (release bucket index, candidate); see the module docstring
        self._held: list[tuple[int, Candidate]] = []
        self.known_loss = 0  # drops not raised because the key's rows came late
        self.slow_provider = 0  # tokens/s drops not raised because the latency rise explains them
        #: What sidecars report about restarts and lost rows (set by the detector service; None: nothing)
        self.loss: KnownLoss | None = None
        #: The first bucket the detector closed (None: none yet; saved before it was kept: unknown)
        self._first_bucket: int | None = None

    @property
    def late_rows(self) -> int:
        return self._keys.late_rows

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        if batch.n:
            tps = np.asarray(batch.numeric["tokens_per_s"], dtype=np.float64)
            has = ~np.isnan(tps)
            lat = np.asarray(batch.numeric["latency_ms"], dtype=np.float64)
            ok = has & np.isfinite(lat) & (lat > 0)
            log_lat = np.where(ok, np.log(np.where(ok, lat, 1.0)), np.nan)
            # calls of the tokens/s mean whose latency is known: they say whether a drop is a slow provider
            self._keys.add(batch, KEY_COLUMNS, [np.ones(batch.n), np.where(has, tps, 0.0), has.astype(np.float64),
                                                np.nan_to_num(log_lat), ok.astype(np.float64)], np.zeros(batch.n))
        found: list[Candidate] = []
        c = self.config
        for key, st, idx, (calls, tps_sum, tps_calls, lat_sum, lat_calls), examples in self._keys.close():
            st.age += 1
            if self._first_bucket is None:
                self._first_bucket = idx
            tps_sum, tps_calls, lat_sum, lat_calls, covered = self._pool(st, tps_sum, tps_calls, lat_sum, lat_calls)
            if tps_calls >= c.tps_min_calls:
                mean_log_lat = lat_sum / lat_calls if lat_calls > 0 else math.nan
                found.extend(self._tps(key, st, idx, tps_sum / tps_calls, mean_log_lat, int(tps_calls), examples,
                                       covered))
            if st.n < c.warmup_buckets:
                st.n += 1
                st.mean += (calls - st.mean) / st.n
                continue
            base = st.mean
            z = (base - calls) / math.sqrt(base) if base > 0 else 0.0
            below = base >= c.min_baseline_calls and calls < c.drop_ratio * base
            low = below and z >= c.z_threshold
            if below and not low and not math.isnan(st.prev):
                # two buckets below the ratio, together significant: a small key's drop (module docstring)
                z2 = (2 * base - calls - st.prev) / math.sqrt(2 * base)
                if z2 >= c.z_threshold:
                    low, z = True, z2
            st.prev = calls if below else math.nan
            st.run = st.run + 1 if below else 0  # buckets under the ratio in a row (the latest significant: low)
            if not below:  # a bucket still under the ratio, if too small to be significant, does not re-arm
                st.armed = True
            # the history must precede the drop: a young key that goes silent does not age into a drop
            if low and st.run >= c.min_buckets and st.armed and (st.age - st.run >= c.min_history_buckets
                                                          or self._since_start(st, idx)):
                st.armed = False
                start, end = self._keys.window(idx - st.run + 1)
                _, end = self._keys.window(idx)
                found.append(Candidate(
                    anomaly_type="throughput_drop", service=key[0], model=key[1], detection_method="rate_ratio",
                    confidence=min(1.0, 1.0 - calls / base), metric="calls_per_bucket", value=calls, baseline=base,
                    threshold=c.drop_ratio * base, deviation_sigma=-z, window_start=start, window_end=end,
                    context={"trace_ids": examples, "bucket_s": c.bucket_s, "low_buckets": st.run}))
            # a surge is an excursion too: not learned, or its end reads as a drop (module docstring)
            high = base > 0 and calls * c.drop_ratio > base and (calls - base) / math.sqrt(base) >= c.z_threshold
            st.high_run = st.high_run + 1 if high else 0
            if not below and not high:  # a bucket under the ratio is not learned, significant or not
                st.mean += c.alpha * (calls - st.mean)
            elif st.run >= c.relearn_buckets or st.high_run >= c.relearn_buckets:
                st.n, st.mean, st.run, st.armed, st.high_run = 0, 0.0, 0, True, 0
        return self._release(found)

    def _since_start(self, st: _KeyState, idx: int) -> bool:
        """Whether the key (``st`` closing bucket ``idx``) has been seen since the detector's first buckets."""
        first = self._first_bucket
        return first is not None and idx - st.age + 1 <= first + START_GRACE_BUCKETS

    def _release(self, found: list[Candidate]) -> list[Candidate]:
        """Hold new drops; emit the held ones whose hold is over and that no known loss explains."""
        limit = self._keys.closed_limit
        width = self._keys.width_ns
        self._held += [(c.window_end // width - 1 + self.config.hold_buckets, c) for c in found]
        out: list[Candidate] = []
        keep: list[tuple[int, Candidate]] = []
        loss = self.loss
        lateness = self._keys.lateness_ns
        for release, cand in self._held:
            # a loss window touching the drop (a bucket either side: a restart cuts buckets in two)
            if loss is not None and loss.lost(cand.service, cand.window_start - width, cand.window_end + width):
                self.known_loss += 1
                continue
            # every sidecar of the service is past the drop by the lateness and none is behind: its rows
            # for the drop are in, so no late ones can cancel it (module docstring)
            if limit is not None and release >= limit and not (
                    loss is not None and loss.caught_up(cand.service, cand.window_end + lateness,
                                                        self.config.behind_queue_batches)):
                keep.append((release, cand))
                continue
            if (loss is not None and limit is not None and limit <= release + self.config.silent_hold_buckets
                    and (loss.silent(cand.service, cand.window_end)
                         or loss.behind(cand.service, self.config.behind_queue_batches))):
                # its sidecars fell silent (a restart may be reported yet) or one is behind (its rows are queued)
                keep.append((release, cand))
                continue
            late = self._keys.last_late.get((cand.service, cand.model))
            if late is not None and late >= cand.window_start // width:
                self.known_loss += 1
            else:
                out.append(cand)
        self._held = keep
        return out

    def _pool(self, st: _KeyState, tps_sum: float, tps_calls: float, lat_sum: float,
              lat_calls: float) -> tuple[float, float, float, float, int]:
        """The bucket's tokens/s sums pooled with the earlier buckets too small to judge, and how many
        buckets they cover; a bucket still too small is carried to the next (module docstring)."""
        c = self.config
        carry = st.carry
        pooled = [carry[0] + tps_sum, carry[1] + tps_calls, carry[2] + lat_sum, carry[3] + lat_calls]
        covered = int(carry[4]) + 1
        if pooled[1] >= c.tps_min_calls or covered >= c.tps_buckets:
            st.carry = [0.0] * 5  # judged now, or too few calls over sustain_s: skipped
        else:
            st.carry = [*pooled, float(covered)]
        return pooled[0], pooled[1], pooled[2], pooled[3], covered

    def _tps(self, key: Key, st: _KeyState, idx: int, tps: float, log_lat: float, n: int,
             examples: list[str], covered: int = 1) -> list[Candidate]:
        """Judge one (pooled) tokens/s mean covering ``covered`` buckets up to ``idx``."""
        c = self.config
        learned, base, run, armed = int(st.tps[0]), st.tps[1], int(st.tps[2]), st.tps[3] > 0
        high_run = int(st.tps[4]) if len(st.tps) > 4 else 0
        lat_base = st.tps[5] if len(st.tps) > 5 else math.nan  # mean log latency of those calls
        if not math.isfinite(log_lat):
            log_lat = lat_base
        out: list[Candidate] = []
        if learned < c.warmup_buckets:
            learned += 1
            base += (tps - base) / learned
            lat_base = log_lat if not math.isfinite(lat_base) else lat_base + (log_lat - lat_base) / learned
            st.tps = [learned, base, 0, 1, 0, lat_base]
            return out
        low = tps < c.tps_drop_ratio * base
        # A bucket as far above the baseline as a drop is below it (e.g. a TTFT regression: the same
        # latency with a late first token generates "faster") is an excursion too: not learned, else
        # the return to normal afterwards reads as a drop.
        high = tps * c.tps_drop_ratio > base
        run = run + covered if low else 0
        armed = armed or not low
        slow = (math.isfinite(log_lat) and math.isfinite(lat_base)
                and math.exp(log_lat - lat_base) * tps / base >= SLOW_PROVIDER_SHARE)
        if run >= c.tps_buckets and armed and slow:
            armed = False  # a slow provider: the latency rise explains the drop (level_shift reports it)
            self.slow_provider += 1
        elif run >= c.tps_buckets and armed:
            armed = False
            start, _ = self._keys.window(idx - run + 1)
            _, end = self._keys.window(idx)
            out.append(Candidate(
                anomaly_type="throughput_drop", service=key[0], model=key[1], detection_method="mean_ratio",
                confidence=min(1.0, max(0.0, 1.0 - tps / base)), metric="tokens_per_s", value=tps, baseline=base,
                threshold=c.tps_drop_ratio * base, deviation_sigma=float("nan"), window_start=start,
                window_end=end, context={"trace_ids": examples, "bucket_s": c.bucket_s, "low_buckets": run,
                                         "calls": n, "sustain_s": c.sustain_s}))
        high_run = high_run + 1 if high else 0
        if not low and not high:
            base += c.alpha * (tps - base)
            if math.isfinite(log_lat) and math.isfinite(lat_base):
                lat_base += c.alpha * (log_lat - lat_base)
        elif run >= c.relearn_buckets or high_run >= c.relearn_buckets:
            learned, base, run, armed, high_run, lat_base = 0, 0.0, 0, True, 0, math.nan
        st.tps = [learned, base, run, 1 if armed else 0, high_run, lat_base]
        return out

    def to_state(self) -> dict[str, Any]:
        return {"detector": NAME, "version": 2, **self._keys.to_state(lambda s: s.to_state()),
                "held": [[r, c.to_dict()] for r, c in self._held], "known_loss": self.known_loss,
                "first_bucket": self._first_bucket, "bucket_s": self.config.bucket_s}

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], config: ThroughputDropConfig | None = None
    ) -> ThroughputDropDetector:
        if state.get("detector") != NAME or state.get("version") not in (1, 2):
            raise ValueError(f"not a {NAME} state (version 1 or 2)")
        det = cls(config)
        if not same_width(state, det.config.bucket_s):
            return det  # other buckets (the default went from 60 to 30 s, issue 13): learned afresh
        det._keys.load_state(dict(state), _KeyState.from_state)
        det._held = [(int(r), Candidate.from_dict(d)) for r, d in state.get("held", [])]
        det.known_loss = int(state.get("known_loss", 0))
        first = state.get("first_bucket")
        det._first_bucket = None if first is None else int(first)
        if first is None and det._keys.watermark is not None:
            det._first_bucket = _START_UNKNOWN  # the first bucket closed after loading is not the detector's first
        # version 1's open buckets (calls only) and those from before latency sums (3 fields) are
        # padded with zeros by BucketedKeys.load_state
        return det
