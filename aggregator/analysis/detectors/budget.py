"""Spend budgets per service, user and API-key hash over calendar minute/hour/day/month windows.

Cost is added to the (scope, value, window, period) of each row's *event* time (UTC calendar periods:
a day is 00:00–24:00 UTC, a month the calendar month). When a period's spend reaches
``soft_ratio`` × limit a ``budget_warning`` is emitted, at 100 % a ``budget_exceeded`` — each once per
period. The current and the previous period are kept per (scope, value, window), so rows up to one
period late still count; older rows are dropped and counted in ``late_rows``.

Limits are per scope and window (``limits: {user: {day: 20.0}}`` applies to every user) with
``overrides`` for single values (``overrides: {user: {alice: {day: 100.0}}}``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.keys import KeyedState, group_by_key, top_rows_per_group
from aggregator.analysis.detectors.validation import check_fraction, check_min, check_positive
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch

__all__ = ["DEFAULT_SOFT_RATIO", "SCOPES", "WINDOWS", "BudgetConfig", "BudgetDetector", "period_bounds"]

NAME = "budget"
SCOPES: tuple[str, ...] = ("service", "user", "api_key_hash")
WINDOWS: tuple[str, ...] = ("minute", "hour", "day", "month")
_WINDOW_NS = {"minute": 60 * 10**9, "hour": 3600 * 10**9, "day": 86400 * 10**9}
DEFAULT_SOFT_RATIO = 0.8
DEFAULT_MAX_KEYS = 100_000
_LEVEL_SOFT, _LEVEL_HARD = 1, 2


def _period(t: npt.NDArray[np.int64], window: str) -> npt.NDArray[np.int64]:
    if window == "month":
        return t.astype("datetime64[ns]").astype("datetime64[M]").astype(np.int64)
    return t // _WINDOW_NS[window]


def period_bounds(period: int, window: str) -> tuple[int, int]:
    """Start and end (unix ns, end exclusive) of a period index of ``window``."""
    if window == "month":
        start = np.datetime64(period, "M").astype("datetime64[ns]").astype(np.int64)
        end = np.datetime64(period + 1, "M").astype("datetime64[ns]").astype(np.int64)
        return int(start), int(end)
    w = _WINDOW_NS[window]
    return period * w, (period + 1) * w


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """Settings of ``detectors.budget`` (limits in USD)."""

    limits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)
    soft_ratio: float = DEFAULT_SOFT_RATIO
    max_keys: int = DEFAULT_MAX_KEYS

    def validate(self) -> BudgetConfig:
        check_fraction(NAME, "soft_ratio", self.soft_ratio)
        check_min(NAME, "max_keys", self.max_keys, 1)
        for scope, windows in self.limits.items():
            self._check_windows(f"limits.{scope}", scope, windows)
        for scope, values in self.overrides.items():
            if scope not in SCOPES:
                raise ConfigError(f"detectors.{NAME}.overrides.{scope}: unknown scope (use one of {', '.join(SCOPES)})")
            for value, windows in values.items():
                self._check_windows(f"overrides.{scope}.{value}", scope, windows)
        return self

    @staticmethod
    def _check_windows(path: str, scope: str, windows: Mapping[str, float]) -> None:
        if scope not in SCOPES:
            raise ConfigError(f"detectors.{NAME}.{path}: unknown scope (use one of {', '.join(SCOPES)})")
        for window, limit in windows.items():
            if window not in WINDOWS:
                raise ConfigError(f"detectors.{NAME}.{path}.{window}: unknown window (use one of {', '.join(WINDOWS)})")
            check_positive(NAME, f"{path}.{window}", limit)

    def limit(self, scope: str, value: str, window: str) -> float | None:
        override = self.overrides.get(scope, {}).get(value, {}).get(window)
        return override if override is not None else self.limits.get(scope, {}).get(window)

    def windows(self, scope: str) -> list[str]:
        used = set(self.limits.get(scope, {}))
        for windows in self.overrides.get(scope, {}).values():
            used |= set(windows)
        return [w for w in WINDOWS if w in used]


class BudgetDetector:
    """Spend per (scope, value, window, period) against the configured limits."""

    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = (config or BudgetConfig()).validate()
        # (scope, value, window) -> {period: [spend, level]}, current and previous period only.
        self._spend: KeyedState[dict[int, list[float]]] = KeyedState(self.config.max_keys, dict)
        self.late_rows = 0

    def update(self, batch: FeatureBatch) -> list[Candidate]:
        out: list[Candidate] = []
        if batch.n == 0:
            return out
        t = batch.numeric["time_unix_nano"].astype(np.int64)
        cost = np.nan_to_num(batch.numeric["cost_usd"])
        trace, services = batch.strings["trace_id"], batch.strings["service"]
        for scope in SCOPES:
            windows = self.config.windows(scope)
            if not windows:
                continue
            codes, keys = group_by_key([batch.strings[scope]])
            for window in windows:
                pair, inv = np.unique(np.stack([codes, _period(t, window)], axis=1), axis=0, return_inverse=True)
                inv = inv.reshape(-1).astype(np.int64)
                spend = np.bincount(inv, weights=cost, minlength=len(pair))
                rows = np.bincount(inv, minlength=len(pair))
                examples = top_rows_per_group(inv, cost, 3)
                for p, (code, period) in enumerate(pair.tolist()):
                    value = keys[code][0]
                    limit = None if value is None else self.config.limit(scope, value, window)
                    if value is None or limit is None:
                        continue
                    periods = self._spend.get((scope, value, window))
                    if periods and period < max(periods) - 1:
                        self.late_rows += int(rows[p])
                        continue
                    entry = periods.setdefault(period, [0.0, 0])
                    entry[0] += float(spend[p])
                    for old in [q for q in periods if q < max(periods) - 1]:
                        del periods[old]
                    soft = entry[0] >= self.config.soft_ratio * limit
                    level = _LEVEL_HARD if entry[0] >= limit else _LEVEL_SOFT if soft else 0
                    if level <= entry[1]:
                        continue
                    entry[1] = level
                    ex = examples[p]
                    start, end = period_bounds(period, window)
                    context: dict[str, Any] = {
                        "trace_ids": [tid for r in ex if (tid := trace[r]) is not None],
                        "scope": scope, "scope_value": value, "window": window, "limit_usd": limit,
                        "soft_ratio": self.config.soft_ratio}
                    if scope != "service":
                        context[scope] = value
                    hard = level == _LEVEL_HARD
                    out.append(Candidate(
                        anomaly_type="budget_exceeded" if hard else "budget_warning",
                        service=value if scope == "service" else (services[ex[0]] if ex else None), model=None,
                        detection_method="budget", confidence=min(1.0, entry[0] / limit), metric="cost_usd",
                        value=entry[0], baseline=math.nan,
                        threshold=limit if hard else self.config.soft_ratio * limit, deviation_sigma=math.nan,
                        window_start=start, window_end=end, context=context))
        return out

    def to_state(self) -> dict[str, Any]:
        return {"detector": NAME, "version": 1, "late_rows": self.late_rows,
                "keys": [[list(k), [[p, e[0], int(e[1])] for p, e in sorted(v.items())]] for k, v in self._spend]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], config: BudgetConfig | None = None) -> BudgetDetector:
        if state.get("detector") != NAME or state.get("version") != 1:
            raise ValueError(f"not a {NAME} state (version 1)")
        det = cls(config)
        det.late_rows = int(state["late_rows"])
        for k, periods in state["keys"]:
            det._spend.items[tuple(k)] = {int(p): [float(s), int(lv)] for p, s, lv in periods}
        return det
