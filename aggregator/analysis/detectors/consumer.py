"""The aggregator's detectors as one analysis consumer: built from config, fed, snapshotted, restored.

Runs every detector of :mod:`aggregator.analysis.detectors` on each accepted batch (in event time,
on the analysis thread) and returns what they find. Settings are the YAML ``detectors:`` map, one
entry per detector (``detectors: {budget: {limits: {service: {day: 50}}}}``); a detector can be
turned off with ``enabled: false``. State is kept as JSON in ``data_dir/detectors.json``.
"""

from __future__ import annotations

import logging
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
from aggregator.analysis.state import JsonStateFile
from sentinel.config import ConfigError, load_map
from sentinel.model import FeatureBatch
from sentinel.wire import WireBatch

__all__ = ["DETECTORS", "FILE_NAME", "FORMAT_VERSION", "DetectorConsumer", "parse_detector_settings"]

log = logging.getLogger(__name__)

FILE_NAME = "detectors.json"
FORMAT_VERSION = 1


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
        raw = settings.get(name) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"detectors.{name}: must be a map")
        raw = dict(raw)
        if raw.pop("enabled", True) is False:
            continue
        out[name] = load_map(config_cls, raw, f"detectors.{name}").validate()
    return out


class DetectorConsumer:
    """A :class:`~aggregator.analysis.pipeline.Consumer`: every enabled detector, in :data:`DETECTORS` order."""

    def __init__(self, settings: Mapping[str, Any], data_dir: str | Path, *, late_after_s: float | None = None,
                 max_future_skew_s: float | None = None, clock: Callable[[], int] = time.time_ns) -> None:
        self._configs = parse_detector_settings(settings)
        # Rows older than arrival minus this (a replayed spool, a clock hours behind) are not shown
        # to the detectors: late data must not page as if it were happening now. None: all rows.
        self._late_after_ns = None if late_after_s is None else int(late_after_s * 1e9)
        self.detectors: dict[str, _Detector] = self._fresh()
        self.state_file = JsonStateFile(Path(data_dir) / FILE_NAME, version=FORMAT_VERSION, what="detector state")
        self._max_future_ns = None if max_future_skew_s is None else int(max_future_skew_s * 1e9)
        self._clock = clock
        self._dirty = False

    def _fresh(self) -> dict[str, _Detector]:
        return {name: DETECTORS[name][1](config) for name, config in self._configs.items()}

    def restore(self, state: Mapping[str, Any] | None) -> None:
        detectors = self._fresh()
        for name, saved in ({} if state is None else state.get("detectors", {})).items():
            if name not in detectors:
                continue
            if self._from_the_future(saved):
                # Saved by a version that did not clamp event time: one span dated 2200 moved this
                # watermark and would blind the detector until then, across restarts.
                log.warning("detector %s: saved watermark is in the future (a clock far ahead before "
                            "event time was clamped); starting it afresh", name)
                continue
            detectors[name] = DETECTORS[name][1].from_state(saved, self._configs[name])
        self.detectors = detectors

    def _from_the_future(self, state: Mapping[str, Any]) -> bool:
        watermark = state.get("watermark") if isinstance(state, Mapping) else None
        if self._max_future_ns is None or not isinstance(watermark, int):
            return False
        return watermark > self._clock() + self._max_future_ns

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
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
        return found

    def snapshot(self) -> dict[str, Any] | None:
        if not self._dirty:
            return None
        self._dirty = False
        return {"version": FORMAT_VERSION, "detectors": {name: d.to_state() for name, d in self.detectors.items()}}

    def shutdown(self) -> None:
        """Nothing to stop."""
