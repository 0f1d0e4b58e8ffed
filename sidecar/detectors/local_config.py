"""The ``detection:`` settings of the sidecar's local detectors (:class:`LocalDetectionConfig`).

Parsing and validation live here; :mod:`sidecar.detectors.local` re-exports everything public,
so ``from sidecar.detectors.local import LocalDetectionConfig`` keeps working.

>>> LocalDetectionConfig.from_mapping({"metrics": {"latency_ms": {"method": "mad"}}}).metrics["latency_ms"]
MetricConfig(method='mad', direction='high', transform='log')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sentinel.config import ConfigError, load_map
from sidecar.detectors.error_rate import (
    DEFAULT_ERROR_RATE_THRESHOLD,
    DEFAULT_ERROR_WINDOW_S,
    DEFAULT_MIN_CALLS,
)
from sidecar.detectors.level_shift import (
    DEFAULT_CAP_SIGMA,
    DEFAULT_DRIFT,
    DEFAULT_RELEARN_AFTER_S,
    DEFAULT_SHIFT_THRESHOLD,
)
from sidecar.detectors.persistence import DEFAULT_EXTREME_SIGMA, DEFAULT_K, DEFAULT_N, MAX_N
from sidecar.detectors.robust import DEFAULT_IQR_K, DEFAULT_ROBUST_THRESHOLD, DEFAULT_WINDOW
from sidecar.detectors.rolling import (
    DEFAULT_CLIP_SIGMA,
    DEFAULT_HALF_LIFE_S,
    DEFAULT_MIN_STD,
    DEFAULT_MIN_STD_RATIO,
    DEFAULT_WARMUP,
    DEFAULT_Z_THRESHOLD,
)

__all__ = [
    "DEFAULT_DIRECTIONS",
    "DEFAULT_MAX_ANOMALIES_PER_BATCH",
    "DEFAULT_MAX_KEYS",
    "DEFAULT_TRANSFORMS",
    "DIRECTIONS",
    "LOG_UNITS",
    "METHODS",
    "METRICS",
    "TRANSFORMS",
    "ErrorRateConfig",
    "LevelShiftConfig",
    "LocalDetectionConfig",
    "MetricConfig",
    "PersistenceConfig",
    "RobustConfig",
    "ThresholdConfig",
    "ZScoreConfig",
]

#: The per-call metrics scored, in the order anomalies of one row are listed.
METRICS: tuple[str, ...] = ("latency_ms", "ttft_ms", "tokens_per_s", "input_tokens", "output_tokens", "cost_usd")
METHODS: tuple[str, ...] = ("zscore", "mad", "iqr", "none")
DIRECTIONS: tuple[str, ...] = ("high", "low", "both")
#: ``log`` scores log1p(value): heavy right tails (tokens, cost, latency) become near-normal.
TRANSFORMS: tuple[str, ...] = ("none", "log")
#: A slow stream is the symptom for throughput; for everything else, too much is.
DEFAULT_DIRECTIONS: dict[str, str] = {"tokens_per_s": "low"}
#: Every metric is scored on log scale by default: tokens, cost and latency are lognormal-ish in
#: LLM traffic, and a slowdown divides throughput (a shift on log scale, lost in the raw spread).
DEFAULT_TRANSFORMS: dict[str, str] = {m: "log" for m in METRICS}
#: ``log`` scores log1p(value / unit): log1p needs values in units where 1 is "small", else
#: it is nearly linear (a call costs ~$0.001, and log1p(0.001) ≈ 0.001). Default unit 1.
LOG_UNITS: dict[str, float] = {"cost_usd": 1e-6}
DEFAULT_MAX_KEYS = 10_000
DEFAULT_MAX_ANOMALIES_PER_BATCH = 100
#: A setting given as a duration ("90s", "1h", or seconds) although its name has no ``_s``.
_DURATION = {"kind": "duration"}

@dataclass
class ZScoreConfig:
    """``detection.zscore``: the time-decayed mean / robust-std baseline."""

    threshold: float = DEFAULT_Z_THRESHOLD
    half_life: float = field(default=DEFAULT_HALF_LIFE_S, metadata=_DURATION)  # seconds of event time
    clip_sigma: float = DEFAULT_CLIP_SIGMA


@dataclass
class LevelShiftConfig:
    """``detection.level_shift``: the CUSUM on z-scores that reports sustained shifts (zscore metrics)."""

    enabled: bool = True
    drift: float = DEFAULT_DRIFT
    threshold: float = DEFAULT_SHIFT_THRESHOLD
    cap_sigma: float = DEFAULT_CAP_SIGMA
    relearn_after: float = field(default=DEFAULT_RELEARN_AFTER_S, metadata=_DURATION)  # seconds of event time


@dataclass
class RobustConfig:
    """``detection.robust``: the ring-buffer window behind ``mad`` and ``iqr``."""

    window: int = DEFAULT_WINDOW
    threshold: float = DEFAULT_ROBUST_THRESHOLD
    iqr_k: float = DEFAULT_IQR_K


@dataclass
class PersistenceConfig:
    """``detection.persistence``: report when k of the last n values exceed, or one is extreme."""

    k: int = DEFAULT_K
    n: int = DEFAULT_N
    extreme_sigma: float = DEFAULT_EXTREME_SIGMA


@dataclass
class ErrorRateConfig:
    """``detection.error_rate``: the share of failed calls over a sliding window."""

    enabled: bool = True
    window: float = field(default=DEFAULT_ERROR_WINDOW_S, metadata=_DURATION)
    threshold: float = DEFAULT_ERROR_RATE_THRESHOLD
    min_calls: int = DEFAULT_MIN_CALLS


@dataclass
class MetricConfig:
    """``detection.metrics.<metric>``: how one metric is scored."""

    method: str = "zscore"
    direction: str = "high"
    transform: str = "none"


@dataclass
class ThresholdConfig:
    """``detection.thresholds.<metric>``: fixed limits, applied from the first call."""

    min: float | None = None
    max: float | None = None


def _default_metrics() -> dict[str, MetricConfig]:
    return {
        m: MetricConfig(direction=DEFAULT_DIRECTIONS.get(m, "high"), transform=DEFAULT_TRANSFORMS.get(m, "none"))
        for m in METRICS
    }


@dataclass
class LocalDetectionConfig:
    """The YAML ``detection:`` map. Build with :meth:`from_mapping`; :meth:`validate` names keys."""

    warmup: int = DEFAULT_WARMUP
    max_keys: int = DEFAULT_MAX_KEYS
    max_anomalies_per_batch: int = DEFAULT_MAX_ANOMALIES_PER_BATCH
    min_std_ratio: float = DEFAULT_MIN_STD_RATIO
    min_std: float = DEFAULT_MIN_STD
    zscore: ZScoreConfig = field(default_factory=ZScoreConfig)
    level_shift: LevelShiftConfig = field(default_factory=LevelShiftConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    error_rate: ErrorRateConfig = field(default_factory=ErrorRateConfig)
    metrics: dict[str, MetricConfig] = field(default_factory=_default_metrics)
    thresholds: dict[str, ThresholdConfig] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> LocalDetectionConfig:
        """Parse and validate the ``detection:`` map; unknown keys and bad values raise
        :class:`ConfigError` naming the key (``detection.zscore.threshold: ...``)."""
        d = _as_map("detection", {} if d is None else d)
        defaults = cls()
        # The loader's rules (sentinel.config.load_map), as for every other map of settings.
        nested: dict[str, Any] = {}
        for key in _SECTIONS:
            if key in d:
                raw = _as_map(f"detection.{key}", d[key])
                if key == "zscore" and "alpha" in raw:
                    raise ConfigError("detection.zscore.alpha: replaced by detection.zscore.half_life (a duration "
                                      "of event time, e.g. 1h)")
                nested[key] = load_map(type(getattr(defaults, key)), raw, f"detection.{key}")
        metrics = dict(defaults.metrics)
        for metric, sub in _as_map("detection.metrics", d.get("metrics", {})).items():
            _known_metric(f"detection.metrics.{metric}", metric)
            metrics[metric] = load_map(MetricConfig, sub, f"detection.metrics.{metric}",
                                       base=dataclasses.asdict(metrics[metric]))
        thresholds = {}
        for metric, sub in _as_map("detection.thresholds", d.get("thresholds", {})).items():
            _known_metric(f"detection.thresholds.{metric}", metric)
            thresholds[metric] = load_map(ThresholdConfig, sub, f"detection.thresholds.{metric}")
        scalars = {k: v for k, v in d.items() if k not in (*_SECTIONS, "metrics", "thresholds")}
        out = load_map(cls, scalars, "detection", base={**nested, "metrics": metrics, "thresholds": thresholds})
        out.validate()
        return out

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key."""
        _check("detection.warmup", self.warmup >= 1, "must be at least 1")
        _check("detection.max_keys", self.max_keys >= 1, "must be at least 1")
        _check("detection.max_anomalies_per_batch", self.max_anomalies_per_batch >= 0, "must be 0 or more")
        _check("detection.min_std_ratio", self.min_std_ratio >= 0, "must be 0 or more")
        _check("detection.min_std", self.min_std > 0, "must be greater than 0")
        _check("detection.zscore.threshold", self.zscore.threshold > 0, "must be greater than 0")
        _check("detection.zscore.half_life", self.zscore.half_life > 0, "must be a duration greater than 0")
        ls = self.level_shift
        _check("detection.level_shift.drift", ls.drift >= 0, "must be 0 or more")
        _check("detection.level_shift.threshold", ls.threshold > 0, "must be greater than 0")
        _check("detection.level_shift.cap_sigma", ls.cap_sigma > 0, "must be greater than 0")
        _check("detection.level_shift.relearn_after", ls.relearn_after > 0, "must be a duration greater than 0")
        _check("detection.zscore.clip_sigma", self.zscore.clip_sigma > 0, "must be greater than 0")
        _check("detection.robust.window", self.robust.window >= 3, "must be at least 3")
        _check("detection.robust.threshold", self.robust.threshold > 0, "must be greater than 0")
        _check("detection.robust.iqr_k", self.robust.iqr_k >= 0, "must be 0 or more")
        _check("detection.persistence.n", 1 <= self.persistence.n <= MAX_N, f"must be between 1 and {MAX_N}")
        _check(
            "detection.persistence.k",
            1 <= self.persistence.k <= self.persistence.n,
            f"must be between 1 and persistence.n ({self.persistence.n})",
        )
        _check("detection.persistence.extreme_sigma", self.persistence.extreme_sigma > 0, "must be greater than 0")
        w = self.error_rate.window
        _check("detection.error_rate.window", w >= 1 and float(w).is_integer(), "must be whole seconds >= 1")
        _check("detection.error_rate.threshold", 0 <= self.error_rate.threshold < 1, "must be in [0, 1)")
        _check("detection.error_rate.min_calls", self.error_rate.min_calls >= 1, "must be at least 1")
        for metric, mc in self.metrics.items():
            _known_metric(f"detection.metrics.{metric}", metric)
            _check(f"detection.metrics.{metric}.method", mc.method in METHODS, f"must be one of {', '.join(METHODS)}")
            _check(
                f"detection.metrics.{metric}.direction",
                mc.direction in DIRECTIONS,
                f"must be one of {', '.join(DIRECTIONS)}",
            )
            _check(
                f"detection.metrics.{metric}.transform",
                mc.transform in TRANSFORMS,
                f"must be one of {', '.join(TRANSFORMS)}",
            )
        for metric, tc in self.thresholds.items():
            key = f"detection.thresholds.{metric}"
            _known_metric(key, metric)
            _check(key, tc.min is not None or tc.max is not None, "needs min or max")
            if tc.min is not None and tc.max is not None:
                _check(f"{key}.min", tc.min <= tc.max, "must not be above max")


#: The sub-maps of ``detection:`` that are one dataclass each.
_SECTIONS = ("zscore", "level_shift", "robust", "persistence", "error_rate")


def _check(key: str, ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _known_metric(key: str, metric: str) -> None:
    _check(key, metric in METRICS, f"unknown metric (one of {', '.join(METRICS)})")


def _as_map(key: str, raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key}: expected a map, got {type(raw).__name__}")
    return raw
