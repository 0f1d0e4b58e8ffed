"""Error bursts: the error rate of an event-time window against the key's own baseline rate.

Calls and errors are counted per (service, request model) in tumbling windows of ``window_s``
(closed by the watermark, see :mod:`aggregator.analysis.detectors.buckets`). The baseline rate is
``p0 = (E + prior_rate·prior_calls) / (C + prior_calls)`` where ``E``, ``C`` are exponentially decayed
sums of the key's errors and calls over past windows (decay ``1 − alpha`` per window) — a new key
starts at ``prior_rate`` instead of needing a warm-up. A window is a burst when it has at least
``min_calls`` calls and ``min_errors`` errors, a rate of at least ``min_rate`` and a binomial z
``(rate − p0)/sqrt(p0(1 − p0)/calls)`` of at least ``z_threshold``. A key fires once per excursion
and re-arms after a window that is not a burst; burst windows do not update the baseline.

A candidate names the key's ``provider`` (``gen_ai.system``, the latest one its calls carried) in
its context, so a provider-wide storm on several services can be grouped into one alert
(``alerts.group_across``).
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
from aggregator.analysis.detectors.providers import ProviderMap
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.model import FeatureBatch

__all__ = ["ErrorBurstConfig", "ErrorBurstDetector"]

NAME = "error_burst"
DEFAULT_WINDOW_S = 60.0
DEFAULT_LATENESS_S = 10.0
DEFAULT_MIN_CALLS = 20
DEFAULT_MIN_ERRORS = 5
DEFAULT_MIN_RATE = 0.1
DEFAULT_Z_THRESHOLD = 4.0
DEFAULT_ALPHA = 0.1
DEFAULT_PRIOR_RATE = 0.01
DEFAULT_PRIOR_CALLS = 100.0
DEFAULT_MAX_KEYS = 10_000
KEY_COLUMNS = ("service", "request_model")


@dataclass(frozen=True, kw_only=True)
class ErrorBurstConfig:
    """Settings of ``detectors.error_burst``."""

    window_s: float = DEFAULT_WINDOW_S
    lateness_s: float = DEFAULT_LATENESS_S
    min_calls: int = DEFAULT_MIN_CALLS
    min_errors: int = DEFAULT_MIN_ERRORS
    min_rate: float = DEFAULT_MIN_RATE
    z_threshold: float = DEFAULT_Z_THRESHOLD
    alpha: float = DEFAULT_ALPHA
    prior_rate: float = DEFAULT_PRIOR_RATE
    prior_calls: float = DEFAULT_PRIOR_CALLS
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> ErrorBurstConfig:
        check_positive(NAME, "window_s", self.window_s)
        check_min(NAME, "lateness_s", self.lateness_s, 0)
        check_min(NAME, "min_calls", self.min_calls, 1)
        check_min(NAME, "min_errors", self.min_errors, 1)
        check_fraction(NAME, "min_rate", self.min_rate)
        check_positive(NAME, "z_threshold", self.z_threshold)
        check_fraction(NAME, "alpha", self.alpha)
        check_fraction(NAME, "prior_rate", self.prior_rate, open_high=True)
        check_positive(NAME, "prior_calls", self.prior_calls)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("armed", "calls", "errors")

    def __init__(self) -> None:
        self.calls = 0.0
        self.errors = 0.0
        self.armed = True

    def to_state(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors, "armed": self.armed}

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> _KeyState:
        st = cls()
        st.calls, st.errors, st.armed = float(d["calls"]), float(d["errors"]), bool(d["armed"])
        return st


class ErrorBurstDetector(BucketedDetector[ErrorBurstConfig, _KeyState]):
    """Windowed error rate vs the key's baseline rate, per (service, request_model)."""

    NAME = NAME
    CONFIG = ErrorBurstConfig
    KEY_STATE = _KeyState
    N_FIELDS = 2
    WIDTH = "window_s"

    def __init__(self, config: ErrorBurstConfig | None = None) -> None:
        super().__init__(config)
        # the provider each key's calls last named (not saved: the next batch tells)
        self._providers = ProviderMap(self.config.max_keys)

    def baseline_rate(self, st: _KeyState) -> float:
        c = self.config
        return (st.errors + c.prior_rate * c.prior_calls) / (st.calls + c.prior_calls)

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        if batch.n:
            err = batch.numeric["is_error"].astype(np.float64)
            self._keys.add(batch, KEY_COLUMNS, [np.ones(batch.n), err], err)
            self._providers.note(batch)
        out: list[Candidate] = []
        c = self.config
        for key, st, idx, (calls, errors), examples in self._keys.close():
            if calls == 0:
                continue
            p0 = self.baseline_rate(st)
            rate = errors / calls
            sd = math.sqrt(p0 * (1 - p0) / calls)
            z = (rate - p0) / sd
            burst = calls >= c.min_calls and errors >= c.min_errors and rate >= c.min_rate and z >= c.z_threshold
            if burst and st.armed:
                st.armed = False
                start, end = self._keys.window(idx)
                out.append(Candidate(
                    anomaly_type="error_burst", service=key[0], model=key[1], detection_method="binomial_z",
                    confidence=min(1.0, 0.5 + 0.5 * (z - c.z_threshold) / c.z_threshold), metric="error_rate",
                    value=rate, baseline=p0, threshold=max(c.min_rate, p0 + c.z_threshold * sd), deviation_sigma=z,
                    window_start=start, window_end=end,
                    context=self._context(key, examples, calls, errors)))
            if not burst:
                st.armed = True
                st.calls = (1 - c.alpha) * st.calls + calls
                st.errors = (1 - c.alpha) * st.errors + errors
        return out

    def _context(self, key: Key, examples: list[str], calls: float, errors: float) -> dict[str, Any]:
        context: dict[str, Any] = {"trace_ids": examples, "calls": int(calls), "errors": int(errors)}
        provider = self._providers.get(key[0], key[1])
        if provider:
            context["provider"] = provider
        return context
