"""The aggregator's settings: one dataclass, its defaults as named constants, and ``validate()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregator.baselines import DEFAULT_METRICS, DEFAULT_RELATIVE_ACCURACY, BaselineConfig
from aggregator.confirm import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_MIN_GLOBAL_COUNT,
    DEFAULT_QUANTILE,
    DEFAULT_UNCHECKED_MIN_SIGMA,
    ConfirmConfig,
)
from sentinel.config import ConfigError, setting

if TYPE_CHECKING:
    from aggregator.forest_service import ForestConfig

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_DEDUP_WINDOW",
    "DEFAULT_INGEST_QUEUE_MAX_BATCHES",
    "DEFAULT_JOURNAL_PRUNE_INTERVAL_S",
    "DEFAULT_JOURNAL_RETENTION_S",
    "DEFAULT_LATE_AFTER_S",
    "DEFAULT_LISTEN",
    "DEFAULT_MAX_BODY_BYTES",
    "AggregatorConfig",
]

DEFAULT_LISTEN = "0.0.0.0:9090"
DEFAULT_DATA_DIR = "./data"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_INGEST_QUEUE_MAX_BATCHES = 256
DEFAULT_LATE_AFTER_S = 300.0
DEFAULT_DEDUP_WINDOW = 100_000
DEFAULT_JOURNAL_RETENTION_S = 24 * 3600.0
DEFAULT_JOURNAL_PRUNE_INTERVAL_S = 60.0
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_SHUTDOWN_GRACE_S = 5.0

LOG_LEVELS = ("debug", "info", "warning", "error")


def _hostport(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")


def forest_config(settings: dict[str, Any]) -> ForestConfig | None:
    """The Isolation Forest's settings from the ``forest:`` map, or ``None`` when disabled."""
    import dataclasses

    from aggregator.forest_service import ForestConfig

    if not isinstance(settings, dict):
        raise ConfigError("forest: must be a map")
    raw = dict(settings)
    if raw.pop("enabled", True) is False:
        return None
    known = {f.name for f in dataclasses.fields(ForestConfig)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"forest.{key}: unknown setting")
    for key in ("features", "log_features"):
        if key in raw and isinstance(raw[key], list):
            raw[key] = tuple(raw[key])
    try:
        config = ForestConfig(**raw)
    except TypeError as e:
        raise ConfigError(f"forest: {e}") from None
    config.validate()
    return config


@dataclass
class AggregatorConfig:
    """Every setting of ``sentinel aggregator`` (see ``aggregator/README.md`` for the table)."""

    listen: str = setting(DEFAULT_LISTEN, "HTTP listen address: /v1/ingest, /metrics, /healthz, /readyz")
    data_dir: str = setting(DEFAULT_DATA_DIR, "directory of the aggregator's state (the SQLite ingest "
                            "journal and de-duplication table)")
    # Tokens stay out of flags so they never show in a process listing.
    tokens: list[str] = setting(None, "bearer tokens accepted on /v1/ingest (comma-separated in "
                                "SENTINEL_TOKENS); empty: no authentication (a warning is logged)",
                                flag=False, factory=list)
    max_body_bytes: int = setting(DEFAULT_MAX_BODY_BYTES, "largest ingest body accepted (413 beyond)",
                                  kind="size")
    ingest_queue_max_batches: int = setting(DEFAULT_INGEST_QUEUE_MAX_BATCHES, "decoded batches waiting "
                                            "to be committed; beyond it ingest answers 503 with Retry-After")
    retry_after_s: int = setting(DEFAULT_RETRY_AFTER_S, "Retry-After (seconds) sent with 503")
    late_after_s: float = setting(DEFAULT_LATE_AFTER_S, "a row whose event time is older than arrival "
                                  "minus this is late (flagged; it must not page as if it were now)",
                                  kind="duration")
    dedup_window: int = setting(DEFAULT_DEDUP_WINDOW, "(sidecar, seq) pairs remembered per sidecar for "
                                "de-duplication; older ones are pruned")
    journal_retention_s: float = setting(DEFAULT_JOURNAL_RETENTION_S, "how long accepted batches stay in "
                                         "the ingest journal", kind="duration")
    journal_prune_interval_s: float = setting(DEFAULT_JOURNAL_PRUNE_INTERVAL_S, "period of the journal "
                                              "retention pass", kind="duration")
    shutdown_grace_s: float = setting(DEFAULT_SHUTDOWN_GRACE_S, "on SIGTERM, how long in-flight ingest "
                                      "requests may take to finish", kind="duration")
    otlp_grpc_listen: str = setting("", "standalone topology: also receive OTLP/gRPC here (e.g. "
                                    "0.0.0.0:4317) through the sidecar's receiver and extraction; empty: off")
    otlp_http_listen: str = setting("", "standalone topology: also receive OTLP/HTTP here (e.g. 0.0.0.0:4318); "
                                    "empty: off")
    baseline_metrics: list[str] = setting(None, "metrics with global baselines (comma-separated in env)",
                                          factory=lambda: list(DEFAULT_METRICS))
    baseline_seasonality: bool = setting(False, "also keep one baseline per hour of week (UTC) per key")
    baseline_max_keys: int = setting(2000, "baselines kept (global, regional and seasonal each count); the "
                                     "least recently updated are evicted beyond it (~55 KiB each)")
    baseline_relative_accuracy: float = setting(DEFAULT_RELATIVE_ACCURACY, "relative error bound of the "
                                                "baseline quantiles (DDSketch)")
    detectors: dict[str, Any] = setting(None, "detector settings, one map per detector (see "
                                        "aggregator/detectors/README.md); `enabled: false` turns one off",
                                        flag=False, factory=dict)
    forest: dict[str, Any] = setting(None, "Isolation Forest settings (aggregator/README.md, 'Isolation "
                                     "Forest in the pipeline'); `enabled: false` turns it off",
                                     flag=False, factory=dict)
    confirm_enabled: bool = setting(True, "confirm or dismiss sidecars' local anomalies against the global "
                                    "baselines (confirmed ones become candidates)")
    confirm_min_global_count: int = setting(DEFAULT_MIN_GLOBAL_COUNT, "global values a key needs before the "
                                            "check applies; below it the sidecar is trusted for |sigma| >= "
                                            "confirm_unchecked_min_sigma")
    confirm_quantile: float = setting(DEFAULT_QUANTILE, "global quantile a value must pass (p99 high, p1 low)")
    confirm_margin: float = setting(DEFAULT_MARGIN, "log-scale distance past the quantile, in units of "
                                    "quantile-to-median; 0 = the plain quantile")
    confirm_min_confidence: float = setting(DEFAULT_MIN_CONFIDENCE, "statistical confirmations below this "
                                            "confidence are dismissed")
    confirm_unchecked_min_sigma: float = setting(DEFAULT_UNCHECKED_MIN_SIGMA, "local |sigma| needed while the "
                                                 "global history is too short")
    save_interval_s: float = setting(60.0, "how often baselines are saved to data_dir (and at shutdown)",
                                     kind="duration")
    log_level: str = setting("info", "debug, info, warning or error")

    def confirm_config(self) -> ConfirmConfig:
        return ConfirmConfig(enabled=self.confirm_enabled, min_global_count=self.confirm_min_global_count,
                             quantile=self.confirm_quantile, margin=self.confirm_margin,
                             unchecked_min_sigma=self.confirm_unchecked_min_sigma,
                             min_confidence=self.confirm_min_confidence)

    def forest_config(self) -> ForestConfig | None:
        return forest_config(self.forest)

    def baseline_config(self) -> BaselineConfig:
        return BaselineConfig(metrics=tuple(self.baseline_metrics), seasonality=self.baseline_seasonality,
                              max_keys=self.baseline_max_keys,
                              relative_accuracy=self.baseline_relative_accuracy)

    def validate(self) -> None:
        _hostport("listen", self.listen)
        for key in ("otlp_grpc_listen", "otlp_http_listen"):
            if getattr(self, key):
                _hostport(key, getattr(self, key))
        if not self.data_dir:
            raise ConfigError("data_dir: must not be empty")
        if not isinstance(self.tokens, list) or not all(isinstance(t, str) and t for t in self.tokens):
            raise ConfigError("tokens: must be a list of non-empty strings")
        for key in ("max_body_bytes", "ingest_queue_max_batches", "retry_after_s", "dedup_window"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        for key in ("late_after_s", "journal_retention_s", "journal_prune_interval_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.save_interval_s <= 0:
            raise ConfigError("save_interval_s: must be greater than 0")
        self.baseline_config().validate()
        self.confirm_config().validate()
        from aggregator.detector_service import parse_detector_settings  # imports every detector

        parse_detector_settings(self.detectors)
        forest_config(self.forest)
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s: must not be negative")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
