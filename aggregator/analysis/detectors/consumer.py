"""The aggregator's detectors as one analysis consumer: built from config, fed, snapshotted, restored.

Runs every detector of :mod:`aggregator.analysis.detectors` on each accepted batch (in event time,
on the analysis thread) and returns what they find. Settings are the YAML ``detectors:`` map, one
entry per detector (``detectors: {budget: {limits: {service: {day: 50}}}}``); a detector can be
turned off with ``enabled: false``. State is kept as JSON in ``data_dir/detectors.json``.

:meth:`DetectorConsumer.reconfigure` applies a new ``detectors:`` map live (a reload, on the
analysis thread between two batches): a detector whose settings did not change keeps running as
it is; one whose thresholds or limits changed keeps its state, carried through its own
``to_state``/``from_state`` (as across a restart), so a budget's spend so far is judged against the
new limit by the next batch; one whose window (:data:`STATE_SHAPE_KEYS`: bucket or window width,
metrics, sample sizes) changed starts afresh, since its state is counted in the old shape; a
detector newly enabled starts afresh, one disabled is dropped with its state.

Every batch is shown to :class:`~aggregator.analysis.detectors.known_loss.KnownLoss` first (the
sidecar's ``status``: restarts, dropped rows, refused exports), which ``throughput_drop`` consults
so that a sidecar restart or a full queue is not paged as traffic that fell.
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
    ContentFilterConfig,
    ContentFilterDetector,
    CostCusumConfig,
    CostCusumDetector,
    DriftConfig,
    DriftDetector,
    EmptyAnswerConfig,
    EmptyAnswerDetector,
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
from aggregator.analysis.detectors.known_loss import KnownLoss
from aggregator.analysis.state import JsonStateFile
from sentinel.config import ConfigError, load_map
from sentinel.model import FeatureBatch
from sentinel.wire import WireBatch

__all__ = ["DETECTORS", "FILE_NAME", "FORMAT_VERSION", "STATE_SHAPE_KEYS", "DetectorConsumer",
           "parse_detector_settings"]

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
    "content_filter": (ContentFilterConfig, ContentFilterDetector),
    "empty_answer": (EmptyAnswerConfig, EmptyAnswerDetector),
    "drift": (DriftConfig, DriftDetector),
    "model_swap": (ModelSwapConfig, ModelSwapDetector),
    "expensive_prompt": (ExpensivePromptConfig, ExpensivePromptDetector),
    "token_abuse": (TokenAbuseConfig, TokenAbuseDetector),
}


#: Settings that shape a detector's state (bucket indices, rings, histograms): when one of them
#: changes on a reload the detector starts afresh instead of reading its state in the new shape.
STATE_SHAPE_KEYS = frozenset({"bucket_s", "window_s", "metrics", "categorical", "bins", "reference_size",
                              "sample_size", "max_categories", "max_models"})


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
        self.known_loss = KnownLoss()
        self._share_known_loss()

    def _share_known_loss(self) -> None:
        for detector in self.detectors.values():
            if isinstance(detector, ThroughputDropDetector):
                detector.loss = self.known_loss

    def reconfigure(self, settings: Mapping[str, Any]) -> list[str]:
        """Apply a new ``detectors:`` map (validated first; raises naming the key); the detectors started afresh.

        Call it where no batch is being consumed (the analysis thread, between batches).
        """
        configs = parse_detector_settings(settings)
        detectors: dict[str, _Detector] = {}
        afresh: list[str] = []
        for name, config in configs.items():
            old, old_config = self.detectors.get(name), self._configs.get(name)
            if old is not None and config == old_config:
                detectors[name] = old
                continue
            if old is not None and old_config is not None and not _shape_changed(old_config, config):
                try:
                    detectors[name] = DETECTORS[name][1].from_state(old.to_state(), config)
                    continue
                except (ValueError, KeyError, TypeError) as e:  # state the new settings cannot read
                    log.warning("detector %s: state not kept across the reload (%s)", name, e)
            detectors[name] = DETECTORS[name][1](config)
            if old is not None:
                afresh.append(name)
        for name in sorted(set(self.detectors) - set(configs)):
            log.info("detector %s disabled by a reload; its state is dropped", name)
        if afresh:
            log.warning("detectors %s start afresh: a setting that shapes their state (%s) changed",
                        ", ".join(afresh), ", ".join(sorted(STATE_SHAPE_KEYS)))
        self._configs, self.detectors = configs, detectors
        self._dirty = True
        return afresh

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
        known_loss = None if state is None else state.get("known_loss")
        self.known_loss = KnownLoss() if known_loss is None else KnownLoss.from_state(known_loss)
        self.detectors = detectors
        self._share_known_loss()

    def _from_the_future(self, state: Mapping[str, Any]) -> bool:
        watermark = state.get("watermark") if isinstance(state, Mapping) else None
        if self._max_future_ns is None or not isinstance(watermark, int):
            return False
        return watermark > self._clock() + self._max_future_ns

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        found: list[Candidate] = []
        rows = batch.batch
        try:
            for w in self.known_loss.observe(batch.sidecar, batch.status, rows):
                log.info("known loss: %s of %s lost rows of %s between %d and %d (event time, ns)",
                         w.reason, w.sidecar, w.service, w.start_ns, w.end_ns)
        except Exception:  # a bug here must not stop detection
            log.exception("known loss failed on batch %s/%d", batch.sidecar, batch.seq)
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
        return {"version": FORMAT_VERSION, "detectors": {name: d.to_state() for name, d in self.detectors.items()},
                "known_loss": self.known_loss.to_state()}

    def shutdown(self) -> None:
        """Nothing to stop."""


def _shape_changed(old: Any, new: Any) -> bool:
    return any(getattr(old, k, None) != getattr(new, k, None) for k in STATE_SHAPE_KEYS)
