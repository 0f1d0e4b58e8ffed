"""Model swaps: a request model answered by a response model it has not been answered by before.

Per (service, request model) the response models of the first ``min_calls`` calls are learned as
*known* (a provider may answer ``gpt-4o`` with ``gpt-4o-2024-08-06``). After that, calls answered by
an unknown response model are counted; when one reaches ``min_new_calls`` a ``model_swap`` candidate
is emitted (once) and the model becomes known. At most ``max_models`` response models are kept per key.
Arrival order, not event time, decides what is "before": the known set does not depend on windows.

New request models, the same way one level up: per service the request models of its first
``min_service_calls`` calls are known; a request model the service has not called before that reaches
``min_new_calls`` calls is a ``model_swap`` candidate with method ``new_request_model`` (metric
``request_model``), raised when the model *appears* — a deploy that moved part of the traffic to
another model — rather than as a throughput drop of the new key when it goes away again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import KeyedState, group_by_key, top_rows_per_group
from aggregator.analysis.detectors.validation import check_min
from sentinel.model import FeatureBatch

__all__ = ["ModelSwapConfig", "ModelSwapDetector"]

NAME = "model_swap"
DEFAULT_MIN_CALLS = 50
DEFAULT_MIN_NEW_CALLS = 3
DEFAULT_MAX_MODELS = 16
DEFAULT_MAX_KEYS = 10_000
DEFAULT_MIN_SERVICE_CALLS = 500


@dataclass(frozen=True, kw_only=True)
class ModelSwapConfig:
    """Settings of ``detectors.model_swap``."""

    min_calls: int = DEFAULT_MIN_CALLS
    min_new_calls: int = DEFAULT_MIN_NEW_CALLS
    max_models: int = DEFAULT_MAX_MODELS
    min_service_calls: int = DEFAULT_MIN_SERVICE_CALLS
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> ModelSwapConfig:
        check_min(NAME, "min_calls", self.min_calls, 1)
        check_min(NAME, "min_new_calls", self.min_new_calls, 1)
        check_min(NAME, "max_models", self.max_models, 1)
        check_min(NAME, "min_service_calls", self.min_service_calls, 1)
        check_min(NAME, "max_keys", self.max_keys, 1)
        return self


class _KeyState:
    __slots__ = ("calls", "known", "pending")

    def __init__(self) -> None:
        self.calls = 0
        self.known: dict[str, int] = {}
        # response model -> [calls, first event time, last event time]
        self.pending: dict[str, list[int]] = {}


def _groups(batch: FeatureBatch, columns: tuple[str, ...]) -> tuple[list[Any], Any, Any, Any, list[list[int]]]:
    """The batch's groups by ``columns``: keys, calls, first and last event time, rows of the earliest calls."""
    codes, keys = group_by_key([batch.strings[c] for c in columns])
    t = batch.numeric["time_unix_nano"].astype(np.int64)
    first = np.full(len(keys), np.iinfo(np.int64).max, dtype=np.int64)
    last = np.full(len(keys), np.iinfo(np.int64).min, dtype=np.int64)
    np.minimum.at(first, codes, t)
    np.maximum.at(last, codes, t)
    return (list(keys), np.bincount(codes, minlength=len(keys)), first, last,
            top_rows_per_group(codes, -t.astype(np.float64), 3))


def _observe(st: _KeyState, name: str, n: int, first: int, last: int, learn: bool,
             c: ModelSwapConfig) -> list[int] | None:
    """Count ``n`` calls of category ``name``; its pending record once it is new with enough calls."""
    if name in st.known or (learn and len(st.known) < c.max_models):
        st.known[name] = st.known.get(name, 0) + n
        st.calls += n
        return None
    p = st.pending.setdefault(name, [0, first, last])
    p[0] += n
    p[1], p[2] = min(p[1], first), max(p[2], last)
    if p[0] < c.min_new_calls:
        return None
    del st.pending[name]
    return p


def _learn_new(st: _KeyState, name: str, calls: int, c: ModelSwapConfig) -> None:
    """A reported category becomes known (up to ``max_models``)."""
    if len(st.known) < c.max_models:
        st.known[name] = calls
    st.calls += calls


class ModelSwapDetector:
    """New response models per (service, request_model)."""

    def __init__(self, config: ModelSwapConfig | None = None) -> None:
        self.config = (config or ModelSwapConfig()).validate()
        self._keys: KeyedState[_KeyState] = KeyedState(self.config.max_keys, _KeyState)
        # per (service,): the request models it calls (same bookkeeping as response models per key)
        self._services: KeyedState[_KeyState] = KeyedState(self.config.max_keys, _KeyState)

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        out: list[Candidate] = []
        if batch.n == 0:
            return out
        out.extend(self._new_request_models(batch))
        c = self.config
        s = batch.strings
        keys, counts, first, last, examples = _groups(batch, ("service", "request_model", "response_model"))
        # A key still learning (fewer than min_calls before this batch) learns the whole batch.
        learning: dict[tuple[str | None, str], bool] = {}
        for g in sorted(range(len(keys)), key=lambda g: -int(counts[g])):
            service, request_model, response_model = keys[g]
            if response_model is None or request_model is None:
                continue
            st = self._keys.get((service, request_model))
            learn = learning.setdefault((service, request_model), st.calls < c.min_calls)
            p = _observe(st, response_model, int(counts[g]), int(first[g]), int(last[g]), learn, c)
            if p is None:
                continue
            top = sorted(st.known, key=lambda m: -st.known[m])[:3]
            share = p[0] / (p[0] + st.calls)
            out.append(Candidate(
                anomaly_type="model_swap", service=service, model=request_model, detection_method="new_category",
                confidence=min(1.0, 0.5 + share), metric="response_model", value=float(p[0]),
                baseline=0.0, threshold=float(c.min_new_calls), deviation_sigma=float("nan"),
                window_start=p[1], window_end=p[2] + 1,
                context={"trace_ids": [tid for r in examples[g] if (tid := s["trace_id"][r]) is not None],
                         "response_model": response_model, "known_response_models": top,
                         "region": s["region"][examples[g][0]] if examples[g] else None}))
            _learn_new(st, response_model, p[0], c)
        return out

    def _new_request_models(self, batch: FeatureBatch) -> list[Candidate]:
        """Request models new to their service (module docstring)."""
        c = self.config
        s = batch.strings
        keys, counts, first, last, examples = _groups(batch, ("service", "request_model"))
        out: list[Candidate] = []
        learning: dict[str | None, bool] = {}
        for g in sorted(range(len(keys)), key=lambda g: -int(counts[g])):
            service, request_model = keys[g]
            if request_model is None:
                continue
            st = self._services.get((service,))
            learn = learning.setdefault(service, st.calls < c.min_service_calls)
            p = _observe(st, request_model, int(counts[g]), int(first[g]), int(last[g]), learn, c)
            if p is None:
                continue
            top = sorted(st.known, key=lambda m: -st.known[m])[:3]
            out.append(Candidate(
                anomaly_type="model_swap", service=service, model=request_model,
                detection_method="new_request_model", confidence=min(1.0, 0.5 + p[0] / (p[0] + st.calls)),
                metric="request_model", value=float(p[0]), baseline=0.0, threshold=float(c.min_new_calls),
                deviation_sigma=float("nan"), window_start=p[1], window_end=p[2] + 1,
                context={"trace_ids": [tid for r in examples[g] if (tid := s["trace_id"][r]) is not None],
                         "request_model": request_model, "known_request_models": top}))
            _learn_new(st, request_model, p[0], c)
        return out

    def to_state(self) -> dict[str, Any]:
        return {"detector": NAME, "version": 1,
                "keys": [[list(k), st.calls, st.known, st.pending] for k, st in self._keys],
                "services": [[list(k), st.calls, st.known, st.pending] for k, st in self._services]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: ModelSwapConfig | None = None) -> ModelSwapDetector:
        if state.get("detector") != NAME or state.get("version") != 1:
            raise ValueError(f"not a {NAME} state (version 1)")
        det = cls(config)
        for field, target in (("keys", det._keys), ("services", det._services)):
            for k, calls, known, pending in state.get(field, []):
                st = _KeyState()
                st.calls = int(calls)
                st.known = {str(m): int(n) for m, n in known.items()}
                st.pending = {str(m): [int(x) for x in v] for m, v in pending.items()}
                target.items[tuple(k)] = st
        return det
