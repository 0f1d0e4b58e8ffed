"""The aggregator's detectors as one analysis consumer: built from config, fed, saved, restored.

Runs every detector of :mod:`aggregator.analysis.detectors` on each accepted batch (in event time, on the
analysis thread) and hands what they find to ``emit``. Settings are the YAML ``detectors:`` map,
one entry per detector (``detectors: {budget: {limits: {service: {day: 50}}}}``); a detector can
be turned off with ``enabled: false``. State is saved as JSON in ``data_dir/detectors.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aggregator.analysis.detectors import (
    BudgetConfig,
    BudgetDetector,
    Candidate,
    CostCusumConfig,
    CostCusumDetector,
    DriftConfig,
    DriftDetector,
    ErrorBurstConfig,
    ErrorBurstDetector,
    ExpensivePromptConfig,
    ExpensivePromptDetector,
    FinishLengthConfig,
    FinishLengthDetector,
    LevelShiftConfig,
    LevelShiftDetector,
    ModelSwapConfig,
    ModelSwapDetector,
    ThroughputDropConfig,
    ThroughputDropDetector,
    TokenAbuseConfig,
    TokenAbuseDetector,
)
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch
from sentinel.wire import WireBatch

__all__ = ["DETECTORS", "FILE_NAME", "DetectorService", "parse_detector_settings"]

log = logging.getLogger(__name__)

FILE_NAME = "detectors.json"


class _Detector(Protocol):
    def update(self, batch: FeatureBatch) -> list[Candidate]: ...

    def to_state(self) -> dict[str, Any]: ...


#: name -> (config class, detector class); the order is the order they run in.
DETECTORS: dict[str, tuple[Any, Any]] = {
    "cost_cusum": (CostCusumConfig, CostCusumDetector),
    "budget": (BudgetConfig, BudgetDetector),
    "error_burst": (ErrorBurstConfig, ErrorBurstDetector),
    "throughput_drop": (ThroughputDropConfig, ThroughputDropDetector),
    "level_shift": (LevelShiftConfig, LevelShiftDetector),
    "finish_length": (FinishLengthConfig, FinishLengthDetector),
    "drift": (DriftConfig, DriftDetector),
    "model_swap": (ModelSwapConfig, ModelSwapDetector),
    "expensive_prompt": (ExpensivePromptConfig, ExpensivePromptDetector),
    "token_abuse": (TokenAbuseConfig, TokenAbuseDetector),
}


def parse_detector_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Validated config objects of the enabled detectors; errors name ``detectors.<name>.<key>``."""
    if not isinstance(settings, Mapping):
        raise ConfigError("detectors: must be a map of detector name to settings")
    for name in settings:
        if name not in DETECTORS:
            raise ConfigError(f"detectors.{name}: unknown detector (use one of {', '.join(DETECTORS)})")
    out: dict[str, Any] = {}
    for name, (config_cls, _) in DETECTORS.items():
        raw = dict(settings.get(name) or {})
        if not isinstance(settings.get(name) or {}, Mapping):
            raise ConfigError(f"detectors.{name}: must be a map")
        if raw.pop("enabled", True) is False:
            continue
        known = {f.name for f in dataclasses.fields(config_cls)}
        for key in raw:
            if key not in known:
                raise ConfigError(f"detectors.{name}.{key}: unknown setting")
        try:
            config = config_cls(**raw)
        except TypeError as e:
            raise ConfigError(f"detectors.{name}: {e}") from None
        out[name] = config.validate()
    return out


class DetectorService:
    def __init__(self, settings: Mapping[str, Any], data_dir: str | Path,
                 emit: Callable[[list[Candidate]], None], *, late_after_s: float | None = None,
                 max_future_skew_s: float | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        self._configs = parse_detector_settings(settings)
        # Rows older than arrival minus this (a replayed spool, a clock hours behind) are not shown
        # to the detectors: late data must not page as if it were happening now. None: all rows.
        self._late_after_ns = None if late_after_s is None else int(late_after_s * 1e9)
        self.detectors: dict[str, _Detector] = {
            name: DETECTORS[name][1](config) for name, config in self._configs.items()}
        self.path = Path(data_dir) / FILE_NAME
        self._max_future_ns = None if max_future_skew_s is None else int(max_future_skew_s * 1e9)
        self._clock = clock
        self._emit = emit
        self._dirty = False

    def restore(self) -> None:
        """Load saved detector state; a damaged file is set aside (detectors start afresh)."""
        if not self.path.exists():
            return
        try:
            saved = json.loads(self.path.read_text())
            for name, state in saved.get("detectors", {}).items():
                if name not in self.detectors:
                    continue
                if self._from_the_future(state):
                    # Saved by a version that did not clamp event time: one span dated 2200 moved this
                    # watermark and would blind the detector until then, across restarts.
                    log.warning("detector %s: saved watermark is in the future (a clock far ahead before "
                                "event time was clamped); starting it afresh", name)
                    continue
                self.detectors[name] = DETECTORS[name][1].from_state(state, self._configs[name])
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = self.path.with_suffix(".damaged")
            self.path.replace(aside)
            log.error("detector state in %s could not be restored (%s); moved to %s", self.path, e, aside)
            self.detectors = {name: DETECTORS[name][1](c) for name, c in self._configs.items()}

    def _from_the_future(self, state: Mapping[str, Any]) -> bool:
        watermark = state.get("watermark") if isinstance(state, Mapping) else None
        if self._max_future_ns is None or not isinstance(watermark, int):
            return False
        return watermark > self._clock() + self._max_future_ns

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> None:
        found: list[Candidate] = []
        rows = batch.batch
        if self._late_after_ns is not None and rows.n:
            fresh = rows.numeric["time_unix_nano"] >= arrival_ns - self._late_after_ns
            if not fresh.all():
                rows = rows.take(fresh)
        for name, detector in self.detectors.items():
            try:
                found.extend(detector.update(rows))
            except Exception:  # one detector's bug must not silence the others
                log.exception("detector %s failed on batch %s/%d", name, batch.sidecar, batch.seq)
        self._dirty = True
        if found:
            self._emit(found)

    def save(self) -> None:
        if not self._dirty:
            return
        doc = {"version": 1, "detectors": {name: d.to_state() for name, d in self.detectors.items()}}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._dirty = False
