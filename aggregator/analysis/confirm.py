"""Local anomalies that sidecars forward, confirmed or dismissed against the global baselines.

A sidecar scores each call against its *own* recent traffic (:mod:`sidecar.detectors.local`)
and forwards what it finds with the batch (:attr:`sentinel.wire.WireBatch.anomalies`). One
sidecar sees a slice of the fleet: its "spike" may be ordinary for the service as a whole (a
replica that only ever gets the long prompts, a quiet sidecar whose window is all fast calls).
:class:`LocalAnomalyConfirmer` checks every forwarded :class:`~sentinel.model.LocalAnomaly`
against the *global* baseline of its (service, model, operation) — across all regions and
sidecars — and turns the confirmed ones into :class:`~aggregator.analysis.detectors.Candidate` s:

* **statistical methods** (``zscore``, ``mad``, ``iqr``): confirmed when the value lies beyond
  the global quantile ``quantile`` (default p99) in the anomaly's direction — above it for
  latency, TTFT, tokens and cost, below the global ``1 - quantile`` (p1) for ``tokens_per_s`` —
  *by a margin*: on a log scale, at least ``margin`` times as far past p99 as p99 lies past the
  median, i.e. ``value ≥ p99 · (p99/p50)^margin`` (low: ``value ≤ p1 · (p1/p50)^margin``).
  Without it every call of a heavy-tailed key's own tail would be confirmed: the sidecar's
  extreme single values are, by construction, past the fleet's p99 too (1 % of all calls are).
  The margin is scale-free (a tight key needs a smaller jump than a wide one); with the default
  1.0 a lognormal key needs ~4.7 log-sigmas, which clean traffic of ~10⁴ calls almost never
  reaches and a 10x spike always does. ``margin: 0`` is the plain p99 check. A long call whose
  tokens explain it (``TOKEN_CAUSES``: a TTFT whose prompt, a latency whose prompt or answer lies
  past the global ``quantile`` of its token count; the call found in the batch by span id) is
  dismissed: the huge prompt's ``token_spike`` is the alert, not the provider's latency. The limit used is
  the candidate's ``threshold`` (the global p99 itself is in ``context.global_quantile``);
  The direction is the side of the sidecar's own baseline the value fell on (so a metric
  configured ``direction: both`` is checked on the side it fired), else the metric's default.
  The detection method names the limit: ``local_zscore+global_p99`` (or ``+global_p1``);
* **``threshold``**: a limit the operator set is a statement of intent, not a statistic: always
  confirmed (the global check only raises or lowers the confidence);
* **``error_rate``**: confirmed when the global error rate of the key is lower than the sidecar's
  windowed rate (the burst is local to what this sidecar sees, not the key's normal level).

* **``level_shift``** (the sidecar's CUSUM: the *level* of a key's latency or TTFT moved and
  stayed, :mod:`sidecar.detectors.level_shift`): a shift is many values a little off, so the
  single value it was reported at is not far in the fleet's tail and the p99 check above would
  dismiss every one. It is judged against the fleet's *level* instead: confirmed when it is a
  shift up of ``latency_ms`` (``latency_spike``) or ``ttft_ms`` (``ttft_regression``) and the
  value lies above the global ``level_shift_quantile`` (default p90) — the sidecar's new level is
  high for the fleet too, not a sidecar whose baseline was low. Confidence ``0.8 + 0.2·g`` (the
  CUSUM's evidence counts as a full local strength); the method is ``local_level_shift+global_p90``;
  ``context.sustained = true`` tells the alert manager it is not a single call (no
  ``alerts.row_persistence``: the CUSUM already asked for a run of values). What moved is read from
  the batch's successful calls of the key (median log values against the baseline's medians), as in
  the aggregator's own ``level_shift`` detector: a TTFT shift whose calls' latency rose by at least
  half as much is a slow provider, not a late first token, and becomes ``latency_spike``; a latency
  shift whose calls' tokens/s did not fall by half as much is longer outputs taking longer, and is
  dismissed (one reported call's latency said neither: a drift's TTFT crossed first, a cost
  runaway's longer outputs raised latency). A TTFT shift is a late first token only when its calls'
  latency stayed that far below half TTFT's rise by twice the median's standard error (from the
  baseline's log spread); in between, too few calls to tell, it is dismissed and the aggregator's
  own ``level_shift`` judges the key's buckets. Shifts down and of
  other metrics are dismissed (a faster provider is no incident; tokens/s and cost have their own
  windowed detectors). Without enough global history a level shift is dismissed: a young sidecar
  baseline is not evidence enough on its own.

**Provider.** Each candidate names the ``provider`` (``gen_ai.system``) of its (service, model),
learned from the rows of the batches that carry anomalies, so a provider's error storm seen by
several sidecars joins the one provider-wide alert (``alerts.group_across``).

**Regional baselines.** When the anomaly's call is in its batch with a region (found by span id)
and that region's baseline holds ``min_global_count`` values of the metric (calls, for the error
rate), the region's baseline replaces the global one in every check below, and the candidate
carries ``context.region`` (its alert is regional) and ``context.baseline_scope = "region"``.

**Too little global history.** While the global baseline holds fewer than ``min_global_count``
values of the metric (calls, for the error rate) — a new key, a fresh aggregator, a metric not
kept in ``baselines.metrics`` — its p99 is not a trustworthy yardstick, so the sidecar is
trusted: the anomaly is confirmed with :data:`UNCHECKED_CONFIDENCE` and the detection method
``local_<method>`` (without ``+global_p99``) and ``context.global_checked = false`` — for a
statistical method only when the sidecar is sure, ``|sigma| ≥ unchecked_min_sigma`` (default 6,
one more than the sidecar's own single-value "extreme" level), else it is dismissed: with less
global evidence, more local evidence is asked for. Thresholds and error rates are trusted as
they are.

**Confidence** of a checked confirmation is ``0.6 + 0.2·g + 0.2·l`` in [0.6, 1.0]:
``g`` is how far past the global limit the value lies (``1 - limit/value`` above,
``1 - value/limit`` below, ``1 - global_rate/local_rate`` for errors), ``l`` how strongly the sidecar saw it
(``(|sigma| - 3) / 7`` clipped to [0, 1]; 1 for thresholds and error rates). Both agreeing
strongly gives ~1.0; a value just past both limits ~0.6. A threshold anomaly inside the global
range gets ``0.8`` (``g = 0``). A statistical anomaly is confirmed only at ``min_confidence``
(default 0.75, i.e. ``g + l ≥ 0.75``): a value *just* past the global limit that the sidecar
*just* flagged (its own single-value extreme level is 5 sigma) is how the far tail of a clean,
heavy-tailed key looks, not an incident.

**Ordering.** Give the confirmer the analysis' consumer list *before* the baseline service: a
batch's anomalies are then judged against the baselines as they were before that batch, so a
spike (or a burst of them) cannot inflate the p99 it is compared with. Both run on the single
analysis thread, which is also the baselines' only writer, so reads need no lock (an optional
``lock`` is taken when given, for use from elsewhere).

Dismissed anomalies are not emitted, only counted in
``sentinel_aggregator_local_anomalies_total{outcome="dismissed"}``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.analysis.baselines.store import BaselineKey, BaselineStore, KeyBaseline
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.level_shift import EXPLAINED_SHARE, shift_explained
from aggregator.analysis.detectors.providers import ProviderMap
from aggregator.analysis.state import StateFile
from sentinel.config import ConfigError, setting
from sentinel.edge_alerts import LOCAL_ANOMALY_TYPES
from sentinel.model import FeatureBatch, LocalAnomaly
from sentinel.wire import WireBatch

__all__ = [
    "ANOMALY_TYPES",
    "DEFAULT_LEVEL_SHIFT_QUANTILE",
    "DEFAULT_MARGIN",
    "DEFAULT_MIN_CONFIDENCE",
    "DEFAULT_MIN_GLOBAL_COUNT",
    "DEFAULT_QUANTILE",
    "DEFAULT_UNCHECKED_MIN_SIGMA",
    "LEVEL_SHIFT_TYPES",
    "LOW_METRICS",
    "UNCHECKED_CONFIDENCE",
    "ConfirmConfig",
    "LocalAnomalyConfirmer",
]

log = logging.getLogger(__name__)

#: Global values of a metric (calls, for the error rate) below which the sidecar is trusted.
DEFAULT_MIN_GLOBAL_COUNT = 200
#: The global quantile a high value must exceed (a low one must fall below ``1 - quantile``).
DEFAULT_QUANTILE = 0.99
#: How far past the global quantile a value must lie, in units of the quantile's own distance from
#: the median on a log scale (0: just past it).
DEFAULT_MARGIN = 1.0
#: |sigma| a statistical local anomaly needs to be trusted when the global history is too short.
DEFAULT_UNCHECKED_MIN_SIGMA = 6.0
#: Least confidence of a confirmed statistical anomaly (thresholds and error rates: no minimum).
DEFAULT_MIN_CONFIDENCE = 0.75
#: Confidence of an anomaly confirmed without a global check (too little global history).
UNCHECKED_CONFIDENCE = 0.5
#: Candidate anomaly type of each metric a sidecar scores.
ANOMALY_TYPES: dict[str, str] = LOCAL_ANOMALY_TYPES
#: The global quantile a local level shift's value must pass (see the module docstring).
DEFAULT_LEVEL_SHIFT_QUANTILE = 0.9
#: Local level shifts that are confirmed (up only), with their candidate anomaly type.
LEVEL_SHIFT_TYPES: dict[str, str] = {"latency_ms": "latency_spike", "ttft_ms": "ttft_regression"}
#: ``LocalAnomaly.method`` of the sidecar's level shifts (sidecar.detectors.local.LEVEL_SHIFT).
LEVEL_SHIFT = "level_shift"
#: The token counts whose extreme value explains a long call: TTFT is the prompt's prefill, latency both.
TOKEN_CAUSES: dict[str, tuple[str, ...]] = {"ttft_ms": ("input_tokens",),
                                            "latency_ms": ("input_tokens", "output_tokens")}
#: Metrics whose anomalous side is low by default (when the local baseline does not tell).
LOW_METRICS: frozenset[str] = frozenset({"tokens_per_s"})

Outcome = Callable[[str], None]


@dataclass(kw_only=True)
class ConfirmConfig:
    """The confirmer's settings: the aggregator's ``confirm:`` section; :meth:`validate` names the key at fault.

    >>> ConfirmConfig(min_global_count=50, quantile=0.995).validate()
    """

    enabled: bool = setting(True, "confirm or dismiss sidecars' local anomalies against the global baselines "
                            "(confirmed ones become candidates)")
    min_global_count: int = setting(DEFAULT_MIN_GLOBAL_COUNT, "global values a key needs before the check "
                                    "applies; below it the sidecar is trusted for |sigma| >= unchecked_min_sigma")
    quantile: float = setting(DEFAULT_QUANTILE, "global quantile a value must pass (p99 high, p1 low)")
    margin: float = setting(DEFAULT_MARGIN, "log-scale distance past the quantile, in units of quantile-to-median; "
                            "0 = the plain quantile")
    unchecked_min_sigma: float = setting(DEFAULT_UNCHECKED_MIN_SIGMA, "local |sigma| needed while the global "
                                         "history is too short")
    min_confidence: float = setting(DEFAULT_MIN_CONFIDENCE, "statistical confirmations below this confidence are "
                                    "dismissed")
    level_shift_quantile: float = setting(DEFAULT_LEVEL_SHIFT_QUANTILE, "global quantile a sidecar's latency/TTFT "
                                          "level shift (up) must pass to be confirmed")
    #: Anomalies of calls older than arrival minus this are late (a replayed spool, a clock hours
    #: behind): counted as ``late`` and not confirmed, so old incidents do not page as if they were now.
    #: The aggregator sets it to its late_after_s.
    late_after_s: float = setting(300.0, "the aggregator's late_after_s", config=False)

    def validate(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("confirm.enabled: must be true or false")
        if isinstance(self.min_global_count, bool) or not isinstance(self.min_global_count, int) \
                or self.min_global_count < 1:
            raise ConfigError("confirm.min_global_count: must be an integer greater than 0")
        if isinstance(self.quantile, bool) or not isinstance(self.quantile, int | float) \
                or not 0.5 < self.quantile < 1.0:
            raise ConfigError("confirm.quantile: must be between 0.5 and 1 (exclusive)")
        for name in ("margin", "unchecked_min_sigma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ConfigError(f"confirm.{name}: must be a number, 0 or more")
        lq = self.level_shift_quantile
        if isinstance(lq, bool) or not isinstance(lq, int | float) or not 0.5 <= lq < 1.0:
            raise ConfigError("confirm.level_shift_quantile: must be at least 0.5 and below 1")
        c = self.min_confidence
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0.0 <= c <= 1.0:
            raise ConfigError("confirm.min_confidence: must be between 0 and 1")


class LocalAnomalyConfirmer:
    """A :class:`~aggregator.analysis.pipeline.Consumer`: judges each batch's forwarded anomalies.

    ``outcome`` is called with ``"confirmed"`` or ``"dismissed"`` per anomaly (the metrics'
    counter); ``consume`` returns the confirmed candidates of a batch.
    """

    #: No state of its own: the baselines it reads are the baselines consumer's.
    state_file: StateFile | None = None

    def __init__(self, config: ConfirmConfig, store: BaselineStore, *,
                 outcome: Outcome | None = None, lock: contextlib.AbstractContextManager[Any] | None = None) -> None:
        config.validate()
        self.config = config
        self.store = store
        self._outcome = outcome
        self._lock: contextlib.AbstractContextManager[Any] = lock if lock is not None else contextlib.nullcontext()
        self.confirmed = 0
        self.dismissed = 0
        self._providers = ProviderMap()

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        if not self.config.enabled or not batch.anomalies:
            return []
        found: list[Candidate] = []
        oldest = arrival_ns - int(self.config.late_after_s * 1e9)
        self._providers.note(batch.batch)
        regions = _regions_of_spans(batch)
        with self._lock:
            for anomaly in batch.anomalies:
                if anomaly.time_unix_nano < oldest:
                    if self._outcome is not None:
                        self._outcome("late")
                    continue
                region = regions.get(anomaly.span_id) if anomaly.span_id is not None else None
                candidate = self.judge(anomaly, sidecar=batch.sidecar, batch=batch.batch, region=region)
                provider = self._providers.get(anomaly.service, anomaly.model)
                if candidate is not None and provider:
                    candidate.context["provider"] = provider
                outcome = "dismissed" if candidate is None else "confirmed"
                if candidate is None:
                    self.dismissed += 1
                else:
                    self.confirmed += 1
                    found.append(candidate)
                if self._outcome is not None:
                    self._outcome(outcome)
        return found

    def restore(self, state: object) -> None:
        """Nothing to restore."""

    def snapshot(self) -> None:
        """Nothing to keep."""

    def shutdown(self) -> None:
        """Nothing to stop."""

    def judge(self, a: LocalAnomaly, *, sidecar: str = "", batch: FeatureBatch | None = None,
              region: str | None = None) -> Candidate | None:
        """The candidate ``a`` becomes, or ``None`` when the baseline dismisses it.

        ``batch``: the rows ``a`` came with, where a level shift's call is looked up. ``region`` is
        the region of the anomaly's call: when that region's baseline of the metric has
        ``min_global_count`` values it is the yardstick (a region whose normal is slower than the
        fleet's is not an incident; a spike in a fast region is one even inside the fleet's range),
        and the candidate carries ``context.region`` (the alert is regional); otherwise the global one.
        """
        anomaly_type = ANOMALY_TYPES.get(a.metric)
        if anomaly_type is None or not math.isfinite(a.value):
            return None  # a metric this version does not know: nothing to say about it
        key = self.store.baseline(BaselineKey(a.service, a.model, a.operation, None))
        regional = self._regional(a, region)
        if regional is not None:
            key = regional
        if a.metric == "error_rate":
            return self._judge_error_rate(a, anomaly_type, key, sidecar, region if regional is not None else None)
        if a.method == LEVEL_SHIFT:
            return self._judge_level_shift(a, key, sidecar, batch, region if regional is not None else None)
        metric = None if key is None else key.metrics.get(a.metric)
        q = self.config.quantile
        low = _is_low(a)
        context = _context(a, sidecar, region if regional is not None else None)
        if metric is None or metric.count < self.config.min_global_count:
            if a.method != "threshold" and not abs(a.sigma) >= self.config.unchecked_min_sigma:
                return None
            context.update(global_checked=False, global_count=0 if metric is None else metric.count)
            return _candidate(a, anomaly_type, f"local_{a.method}", UNCHECKED_CONFIDENCE,
                              baseline=math.nan if metric is None or not metric.count else metric.quantile(0.5),
                              threshold=math.nan, sigma=math.nan, context=context)
        quantile, median = metric.quantile(1.0 - q if low else q), metric.quantile(0.5)
        limit = quantile
        if quantile > 0 and median > 0:
            limit = quantile * (quantile / median) ** self.config.margin
        beyond = a.value < limit if low else a.value > limit
        if not beyond and a.method != "threshold":
            return None
        g = 0.0
        if beyond:
            g = 1.0 - limit / a.value if not low else (1.0 - a.value / limit if limit > 0 else 1.0)
        confidence = _confidence(g, _local_strength(a))
        if a.method != "threshold" and confidence < self.config.min_confidence:
            return None
        if a.method != "threshold" and not low and self._tokens_explain(a, key, batch):
            return None  # a huge prompt (or answer) takes long: its token_spike is the alert, not the latency
        sigma = (a.value - metric.mean) / metric.std if metric.std > 0 else math.nan
        context.update(global_checked=True, global_count=metric.count, global_beyond=beyond,
                       global_quantile=quantile)
        method = f"local_{a.method}+global_p{_pct(1.0 - q if low else q)}"
        return _candidate(a, anomaly_type, method, confidence,
                          baseline=median, threshold=limit, sigma=sigma, context=context)

    def _judge_level_shift(self, a: LocalAnomaly, key: KeyBaseline | None, sidecar: str,
                           batch: FeatureBatch | None, region: str | None) -> Candidate | None:
        anomaly_type = LEVEL_SHIFT_TYPES.get(a.metric)
        metric = None if key is None else key.metrics.get(a.metric)
        if anomaly_type is None or _is_low(a) or metric is None or metric.count < self.config.min_global_count:
            return None
        q = self.config.level_shift_quantile
        limit = metric.quantile(q)
        if not a.value > limit:
            return None
        context = _context(a, sidecar, region)
        rise = self._batch_rises(a, key, batch, region) if key is not None and batch is not None else {}
        if a.metric == "ttft_ms" and _explained("ttft_ms", rise.get("ttft_ms"), rise.get("latency_ms")):
            anomaly_type = "latency_spike"  # the whole call is slow: a slow provider, not a late first token
            context["call_slow_too"] = True
        elif a.metric == "ttft_ms" and "latency_ms" in rise and "ttft_ms" in rise and \
                EXPLAINED_SHARE * rise["ttft_ms"] - rise["latency_ms"] < 2.0 * rise["latency_se"]:
            return None  # too few calls to tell a late first token from a slow call: level_shift's buckets will
        if anomaly_type == "latency_spike" and _explained("latency_ms", rise.get("latency_ms"),
                                                          rise.get("tokens_per_s")):
            return None  # longer outputs taking longer (tokens/s did not fall): not slower calls
        context.update(global_checked=True, global_count=metric.count, global_beyond=True, global_quantile=limit,
                       sustained=True)
        sigma = (a.value - metric.mean) / metric.std if metric.std > 0 else math.nan
        return _candidate(a, anomaly_type, f"local_level_shift+global_p{_pct(q)}",
                          _confidence(1.0 - limit / a.value if a.value > 0 else 0.0, 1.0),
                          baseline=metric.quantile(0.5), threshold=limit, sigma=sigma, context=context)

    def _tokens_explain(self, a: LocalAnomaly, key: KeyBaseline | None, batch: FeatureBatch | None) -> bool:
        """Whether the call of a high latency or TTFT value (found in ``batch`` by span id) had a prompt (or,
        for latency, an answer) above the baseline's ``quantile``: the tokens explain the time."""
        metrics = TOKEN_CAUSES.get(a.metric, ())
        if not metrics or key is None or batch is None or not batch.n or a.span_id is None:
            return False
        try:
            i = batch.strings["span_id"].index(a.span_id)
        except (KeyError, ValueError):
            return False
        for m in metrics:
            base = key.metrics.get(m)
            value = float(batch.numeric[m][i])
            if base is not None and base.count >= self.config.min_global_count and math.isfinite(value) \
                    and value > base.quantile(self.config.quantile):
                return True
        return False

    def _batch_rises(self, a: LocalAnomaly, key: KeyBaseline, batch: FeatureBatch,
                     region: str | None) -> dict[str, float]:
        """Metric -> how far the median of ``a``'s key's successful calls in ``batch`` (of ``region`` when
        the regional baseline is used) lies above the baseline's median, log scale: TTFT of the streamed
        ones, latency and tokens/s of all (more calls, less noise: a batch holds few of one key). Metrics
        without values or with too little global history are left out."""
        if not batch.n:
            return {}
        s, num = batch.strings, batch.numeric
        mask = (np.asarray(num["is_error"]) == 0) & _equals(s.get("service"), a.service) \
            & _equals(s.get("request_model"), a.model) & _equals(s.get("operation"), a.operation)
        if region is not None:
            mask &= _equals(s.get("region"), region)
        out: dict[str, float] = {}
        for m in ("latency_ms", "ttft_ms", "tokens_per_s"):
            base = key.metrics.get(m)
            x = np.asarray(num[m], dtype=np.float64)[mask]
            x = x[np.isfinite(x) & (x > 0)]
            if base is None or base.count < self.config.min_global_count or not x.size \
                    or not base.quantile(0.5) > 0:
                continue
            out[m] = float(np.median(np.log(x))) - math.log(base.quantile(0.5))
            if m == "latency_ms":  # the median's standard error, from the baseline's log spread
                spread = math.log(base.quantile(0.8413) / base.quantile(0.5)) if base.quantile(0.8413) > 0 else 0.0
                out["latency_se"] = 1.2533 * spread / math.sqrt(x.size)
        return out

    def _regional(self, a: LocalAnomaly, region: str | None) -> KeyBaseline | None:
        """The baseline of ``a``'s region when it has enough history of ``a``'s metric, else ``None``."""
        if region is None:
            return None
        key = self.store.baseline(BaselineKey(a.service, a.model, a.operation, region))
        if key is None:
            return None
        if a.metric == "error_rate":
            count = key.calls
        else:
            metric = key.metrics.get(a.metric)
            count = 0 if metric is None else metric.count
        return key if count >= self.config.min_global_count else None

    def _judge_error_rate(self, a: LocalAnomaly, anomaly_type: str, key: KeyBaseline | None,
                          sidecar: str, region: str | None = None) -> Candidate | None:
        context = _context(a, sidecar, region)
        calls = 0 if key is None else key.calls
        if key is None or calls < self.config.min_global_count:
            context.update(global_checked=False, global_count=calls)
            return _candidate(a, anomaly_type, "local_error_rate", UNCHECKED_CONFIDENCE,
                              baseline=math.nan, threshold=math.nan, sigma=math.nan, context=context)
        rate = key.error_rate
        if not rate < a.value:
            return None
        # A rate has no sigma worth the name here (the sidecar's window size is not forwarded).
        context.update(global_checked=True, global_count=calls, global_beyond=True)
        return _candidate(a, anomaly_type, "local_error_rate+global_rate", _confidence(1.0 - rate / a.value, 1.0),
                          baseline=rate, threshold=rate, sigma=math.nan, context=context)


def _explained(metric: str, rise: float | None, evidence: float | None) -> bool:
    """:func:`~aggregator.analysis.detectors.level_shift.shift_explained` of the batch's rises; a batch whose
    calls do not show the shift explains nothing."""
    return rise is not None and rise > 0 and shift_explained(metric, rise, evidence)


def _equals(column: list[Any] | None, value: Any) -> npt.NDArray[np.bool_]:
    """Rows of a string column equal to ``value`` (every row when the batch has no such column)."""
    if column is None:
        return np.ones(1, dtype=bool)
    return np.asarray([v == value for v in column], dtype=bool)


def _is_low(a: LocalAnomaly) -> bool:
    if math.isfinite(a.baseline) and a.value != a.baseline:
        return a.value < a.baseline
    return a.metric in LOW_METRICS


def _local_strength(a: LocalAnomaly) -> float:
    if a.method == "threshold" or not math.isfinite(a.sigma):
        return 1.0
    return min(1.0, max(0.0, (abs(a.sigma) - 3.0) / 7.0))


def _confidence(g: float, local: float) -> float:
    return round(min(1.0, max(0.6, 0.6 + 0.2 * min(1.0, max(0.0, g)) + 0.2 * local)), 4)


def _pct(q: float) -> str:
    """``0.99`` → ``"99"``, ``0.995`` → ``"99.5"``, ``0.01`` → ``"1"``."""
    return f"{round(q * 100, 6):g}"


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _regions_of_spans(batch: WireBatch) -> dict[str, str]:
    """span id -> region of the batch's rows, when it has anomalies and regions (to find an anomaly's region)."""
    if not batch.anomalies:
        return {}
    regions = batch.batch.strings.get("region") or []
    if not any(r is not None for r in regions):
        return {}
    spans = batch.batch.strings.get("span_id") or []
    wanted = {a.span_id for a in batch.anomalies if a.span_id is not None}
    return {s: r for s, r in zip(spans, regions, strict=False) if s in wanted and r is not None}


def _context(a: LocalAnomaly, sidecar: str, region: str | None = None) -> dict[str, Any]:
    scope = {} if region is None else {"region": region, "baseline_scope": "region"}
    return {
        **scope,
        "trace_ids": [a.trace_id] if a.trace_id is not None else [],
        "span_id": a.span_id,
        "operation": a.operation,
        "sidecar": sidecar,
        "local": {"method": a.method, "baseline": _num(a.baseline), "deviation": _num(a.deviation),
                  "threshold": _num(a.threshold), "sigma": _num(a.sigma)},
    }


def _candidate(a: LocalAnomaly, anomaly_type: str, method: str, confidence: float, *, baseline: float,
               threshold: float, sigma: float, context: dict[str, Any]) -> Candidate:
    t = int(a.time_unix_nano)
    return Candidate(
        anomaly_type=anomaly_type, service=a.service, model=a.model, detection_method=method,
        confidence=confidence, metric=a.metric, value=float(a.value), baseline=float(baseline),
        threshold=float(threshold), deviation_sigma=float(sigma) if math.isfinite(sigma) else math.nan,
        window_start=t, window_end=t + 1, context=context)
