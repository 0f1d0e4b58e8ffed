"""The sidecar's settings: one dataclass of top-level settings and sections (the components' own config
dataclasses: ``genai_metrics``, ``local_alerts``, ``spool``, ``summaries``, ``upstream``), its defaults as
named constants, and ``validate()``."""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from sentinel.config import ConfigError, section, setting
from sidecar.genai_metrics import MetricsConfig
from sidecar.local_alerts import LocalAlertsConfig
from sidecar.passthrough import PassthroughConfig
from sidecar.spool import SpoolConfig
from sidecar.summaries import SummaryConfig

__all__ = ["MODES", "SidecarConfig"]

DEFAULT_GRPC_LISTEN = "127.0.0.1:4317"
DEFAULT_HTTP_LISTEN = "127.0.0.1:4318"
DEFAULT_METRICS_LISTEN = "0.0.0.0:8081"
DEFAULT_GRPC_MAX_RECV_BYTES = 4 * 1024 * 1024
DEFAULT_HTTP_MAX_BODY_BYTES = 20 * 1024 * 1024
#: Three of the largest HTTP bodies, or sixteen of the largest gRPC messages: far below the 256 Mi
#: memory limit the webhook gives the sidecar.
DEFAULT_RECEIVE_MAX_BYTES_IN_FLIGHT = 64 * 1024 * 1024
DEFAULT_BATCH_MAX_ROWS = 2048
DEFAULT_BATCH_TIMEOUT_S = 1.0
DEFAULT_QUEUE_MAX_BATCHES = 64

MODES = ("sidecar", "store-and-forward")


def _hostport(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")


@dataclass
class SidecarConfig:
    """Every setting of ``sentinel sidecar`` (see ``sidecar/README.md`` for the table)."""

    mode: str = setting("sidecar", "sidecar (memory queue, spill to spool) or store-and-forward "
                        "(spool before acknowledging)")
    sidecar_id: str = setting("", "stable id sent with every batch [default: POD_NAMESPACE/POD_NAME, "
                              "else the host name]")
    grpc_listen: str = setting(DEFAULT_GRPC_LISTEN, "OTLP/gRPC listen address")
    http_listen: str = setting(DEFAULT_HTTP_LISTEN, "OTLP/HTTP listen address")
    metrics_listen: str = setting(DEFAULT_METRICS_LISTEN, "/metrics, /healthz and /readyz listen address")
    grpc_max_recv_bytes: int = setting(DEFAULT_GRPC_MAX_RECV_BYTES, "largest OTLP/gRPC message accepted",
                                       kind="size")
    http_max_body_bytes: int = setting(DEFAULT_HTTP_MAX_BODY_BYTES, "largest OTLP/HTTP body accepted, "
                                       "after decompression", kind="size")
    aggregator_url: str = setting("", "base URL of the aggregator (batches go to URL/v1/ingest); empty: "
                                  "rows are only detected locally and counted")
    token: str = setting("", "bearer token for the aggregator (normally from SENTINEL_TOKEN)")
    ca_file: str = setting("", "CA bundle to verify an https aggregator")
    client_cert_file: str = setting("", "PEM client certificate presented to the aggregator (mTLS, with "
                                    "client_key_file); empty: none")
    client_key_file: str = setting("", "PEM private key of client_cert_file")
    forward_timeout_s: float = setting(10.0, "timeout of one ingest request", kind="duration")
    retry_max_backoff_s: float = setting(30.0, "longest wait between retries of a batch", kind="duration")
    receive_max_bytes_in_flight: int = setting(DEFAULT_RECEIVE_MAX_BYTES_IN_FLIGHT, "bytes of export requests "
                                               "being received and decoded at once, over both receivers (an "
                                               "HTTP body reserves its Content-Length, or http_max_body_bytes, "
                                               "then its decompressed size, 8x for JSON); beyond it exports get "
                                               "UNAVAILABLE / 503", kind="size")
    receive_queue_max_bytes: int = setting(16 * 1024 * 1024, "bytes of accepted export requests waiting "
                                           "to be processed; beyond it exports get UNAVAILABLE", kind="size")
    batch_max_rows: int = setting(DEFAULT_BATCH_MAX_ROWS, "rows per forwarded batch (sealed when reached)")
    batch_timeout_s: float = setting(DEFAULT_BATCH_TIMEOUT_S, "a batch is sealed at most this long after "
                                     "its first row", kind="duration")
    queue_max_batches: int = setting(DEFAULT_QUEUE_MAX_BATCHES, "sealed batches held in memory for the "
                                     "forwarder; beyond it they spill to the spool, or new exports get UNAVAILABLE "
                                     "(batches of exports already acknowledged are kept)")
    spool: SpoolConfig = section(SpoolConfig, "the durable spool (sidecar/spool.py)", old_prefix="spool_",
                                 old_keys={"directory": "spool_dir"})
    upstream: PassthroughConfig = section(PassthroughConfig, "pass-through to the team's own OTLP endpoint "
                                          "(sidecar/passthrough.py)", old_prefix="upstream_",
                                          old_keys={"url": "upstream"})
    shutdown_grace_s: float = setting(5.0, "on SIGTERM, how long to keep forwarding before spooling or "
                                      "dropping what is left", kind="duration")
    capture_user: bool = setting(True, "forward the end-user id attribute (set false to drop it)")
    hash_user: bool = setting(False, "forward a SHA-256 hash of the user id instead of the id")
    api_key_attributes: list[str] = setting(None, "span attributes that may carry an API key; the "
                                            "sidecar forwards only a SHA-256 prefix of their value, "
                                            "never the key (comma-separated in env/flags)", factory=list)
    detection: dict[str, Any] = setting(None, "local detection settings (see sidecar/README.md)",
                                        flag=False, factory=dict)
    prices: dict[str, Any] = setting(None, "price overrides: model -> {input, output} USD per million "
                                     "tokens", flag=False, factory=dict)
    genai_metrics: MetricsConfig = section(MetricsConfig, "GenAI metric histograms as rows (sidecar/genai_metrics.py)",
                                           old_prefix="genai_metrics_", old_keys={"enabled": "genai_metrics"})
    local_alerts: LocalAlertsConfig = section(LocalAlertsConfig, "local alerts (sidecar/local_alerts.py)",
                                              old_prefix="local_alert_", old_keys={"mode": "local_alerts"})
    forward: str = setting("rows", "what is forwarded: rows (every row) or summaries (per-minute per-key "
                           "summaries, every anomalous row and a sample; see sidecar/README.md, Bandwidth mode)")
    summaries: SummaryConfig = section(SummaryConfig, "bandwidth mode's summaries (sidecar/summaries.py)",
                                       old_prefix="summary_")
    log_level: str = setting("info", "debug, info, warning or error")

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.client_key_file and not self.client_cert_file:
            raise ConfigError("client_key_file: needs client_cert_file")

        for key in ("grpc_listen", "http_listen", "metrics_listen"):
            value = getattr(self, key)
            if value:
                _hostport(key, value)
        for key in ("grpc_max_recv_bytes", "http_max_body_bytes", "receive_queue_max_bytes", "batch_max_rows",
                    "receive_max_bytes_in_flight",
                    "queue_max_batches"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        for key in ("forward_timeout_s", "retry_max_backoff_s", "batch_timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s: must not be negative")
        self.spool.validate()
        if self.mode == "store-and-forward" and not self.spool.directory:
            raise ConfigError("spool.directory: required when mode is store-and-forward")
        if self.mode == "store-and-forward" and not self.aggregator_url:
            raise ConfigError("aggregator_url: required when mode is store-and-forward")
        if not all(isinstance(k, str) and k for k in self.api_key_attributes):
            raise ConfigError("api_key_attributes: must be a list of attribute names")
        if self.aggregator_url and not self.aggregator_url.startswith(("http://", "https://")):
            raise ConfigError(f"aggregator_url: {self.aggregator_url!r} must start with http:// or https://")
        self.upstream.validate()
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
        self.genai_metrics.validate()
        self.local_alerts.validate()
        self.summaries.validate()
        if not isinstance(self.detection, dict):
            raise ConfigError("detection: must be a map")
        if not isinstance(self.prices, dict):
            raise ConfigError("prices: must be a map")

    def __post_init__(self) -> None:
        # The summaries' forward is the process's top-level forward, not a setting of the section.
        if self.summaries.forward != self.forward:
            self.summaries = dataclasses.replace(self.summaries, forward=self.forward)

    @property
    def effective_fsync(self) -> str:
        """``spool.fsync``, or when unset the mode's: store-and-forward acknowledges an export once its
        batch is in the spool, so every batch is fsynced; in sidecar mode the spool is an overflow and
        an fsync a second is enough."""
        if self.spool.fsync:
            return self.spool.fsync
        return "always" if self.mode == "store-and-forward" else "interval"

    @property
    def effective_spool(self) -> SpoolConfig:
        """The spool's settings with the fsync policy the mode chose (what :class:`Spool` is given)."""
        return dataclasses.replace(self.spool, fsync=self.effective_fsync)

    def effective_sidecar_id(self, env: dict[str, str] | None = None) -> str:
        if self.sidecar_id:
            return self.sidecar_id

        e = os.environ if env is None else env
        pod, ns = e.get("SENTINEL_POD_NAME", ""), e.get("SENTINEL_POD_NAMESPACE", "")
        if pod:
            return f"{ns}/{pod}" if ns else pod
        return socket.gethostname()
