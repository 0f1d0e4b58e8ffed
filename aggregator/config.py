"""The aggregator's settings: one dataclass, its defaults as named constants, and ``validate()``.

Top-level settings are the process's own; each component's settings are a section, the component's
own config dataclass beside it (``alerts``: :class:`~aggregator.alerting.manager.AlertManagerConfig`,
``confirm``, ``baselines``, ``jwt``, ``amqp``, ``feedback``), given in YAML as a nested map.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregator.alerting.amqp_sink import AmqpSinkConfig
from aggregator.alerting.manager import AlertManagerConfig
from aggregator.alerting.precision_guard import PrecisionGuardConfig
from aggregator.analysis.baselines.store import BaselineConfig
from aggregator.analysis.confirm import ConfirmConfig
from aggregator.api.jwt_auth import JwtConfig
from aggregator.cluster.config import ClusterConfig
from aggregator.ingest.auth import parse_sidecar_services, parse_sidecar_tokens
from aggregator.ingest.clock_check import DEFAULT_CLOCK_OFFSET_WARN_S
from aggregator.ingest.event_time import DEFAULT_MAX_FUTURE_SKEW_S
from sentinel.config import ConfigError, leaves, load_map, section, setting

if TYPE_CHECKING:
    from aggregator.analysis.forest.consumer import ForestConfig

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
DEFAULT_GRPC_LISTEN = "0.0.0.0:9091"
DEFAULT_DATA_DIR = "./data"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_INGEST_QUEUE_MAX_BATCHES = 256
DEFAULT_ANALYSIS_QUEUE_MAX_ROWS = 100_000
#: Ten times what a sidecar sends per detection pass (sidecar/detectors: max_anomalies_per_batch 100).
DEFAULT_MAX_ANOMALIES_PER_BATCH = 1_000
DEFAULT_LATE_AFTER_S = 300.0
DEFAULT_DEDUP_WINDOW = 100_000
DEFAULT_JOURNAL_RETENTION_S = 24 * 3600.0
DEFAULT_JOURNAL_PRUNE_INTERVAL_S = 60.0
DEFAULT_RETRY_AFTER_S = 1
DEFAULT_SHUTDOWN_GRACE_S = 5.0

LOG_LEVELS = ("debug", "info", "warning", "error")

#: Settings a reload (SIGHUP, ``PUT /api/v1/config``) applies without a restart, swapped between
#: analysis batches: every key of the alert manager's, the local-anomaly confirmation's, the JWT and
#: the RabbitMQ sink's sections, the detectors and the forest, the webhooks, the API and ingest
#: tokens. Every other changed key (listeners, TLS, stores, baselines, feedback, queues) needs a restart.
LIVE_SECTIONS = ("alerts", "confirm", "jwt", "amqp")
LIVE_KEYS = frozenset({"detectors", "forest", "webhooks", "tokens", "sidecar_tokens", "viewer_tokens",
                       "operator_tokens", "admin_tokens"})
#: Keys whose values are secrets (tokens, a broker password, webhook URLs and headers, the store's URL):
#: the configuration API, its versions and their diffs show a digest of the value, never the value.
SECRET_KEYS = frozenset({"tokens", "sidecar_tokens", "viewer_tokens", "operator_tokens", "admin_tokens",
                         "amqp.url", "webhooks", "store_url", "cluster.amqp_url"})


def _hostport(key: str, value: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: {value!r} is not HOST:PORT")


def forest_config(settings: dict[str, Any]) -> ForestConfig | None:
    """The Isolation Forest's settings from the ``forest:`` map, or ``None`` when disabled."""
    from aggregator.analysis.forest.consumer import ForestConfig

    if not isinstance(settings, dict):
        raise ConfigError("forest: must be a map")
    raw = dict(settings)
    if raw.pop("enabled", True) is False:
        return None
    config = load_map(ForestConfig, raw, "forest")
    try:
        config.validate()
    except ConfigError as e:  # ForestConfig names its fields forest_<field>; in the YAML they are forest.<field>
        raise ConfigError(str(e).replace("forest_", "forest.")) from None
    return config


@dataclass
class AggregatorConfig:
    """Every setting of ``sentinel aggregator`` (see ``aggregator/README.md`` for the table)."""

    listen: str = setting(DEFAULT_LISTEN, "HTTP listen address: /v1/ingest, the API, the page, /metrics, /healthz, "
                          "/readyz (127.0.0.1 when no token is configured, see allow_unauthenticated)")
    data_dir: str = setting(DEFAULT_DATA_DIR, "directory of the aggregator's state (the SQLite ingest "
                            "journal and de-duplication table)")
    # A URL with a password: kept out of flags (a process listing) and shown redacted in logs.
    store_url: str = setting("", "alert store shared by the replicas of a cluster: postgresql://user:password@host"
                             ":port/db (prefer SENTINEL_STORE_URL from a Secret); empty: SQLite alerts.db in data_dir",
                             flag=False)
    # Tokens stay out of flags so they never show in a process listing.
    tokens: list[str] = setting(None, "bearer tokens accepted on /v1/ingest (comma-separated in "
                                "SENTINEL_TOKENS); empty: no authentication (a warning is logged)",
                                flag=False, factory=list)
    sidecar_tokens: dict[str, Any] = setting(None, "ingest tokens bound to sidecar ids: a map of sidecar-id "
                                             "pattern (glob, e.g. payments/*) to its tokens; a batch sent as "
                                             "another sidecar id is refused (403). tokens cover every id",
                                             flag=False, factory=dict)
    sidecar_services: dict[str, Any] = setting(None, "services each sidecar id may report: a map of sidecar-id "
                                               "pattern (glob) to service names or globs (e.g. payments/*: "
                                               "[payments, payments-*]); a batch with a row of another service "
                                               "is refused (403), an id matching no pattern may report none. "
                                               "Empty: any", flag=False, factory=dict)
    max_body_bytes: int = setting(DEFAULT_MAX_BODY_BYTES, "largest ingest body accepted (413 beyond)",
                                  kind="size")
    ingest_queue_max_batches: int = setting(DEFAULT_INGEST_QUEUE_MAX_BATCHES, "decoded batches waiting "
                                            "to be committed; beyond it ingest answers 503 with Retry-After")
    analysis_queue_max_rows: int = setting(DEFAULT_ANALYSIS_QUEUE_MAX_ROWS, "rows accepted but not yet analysed; "
                                           "beyond it ingest answers 503 with Retry-After (bounds memory and "
                                           "detection latency when sidecars send faster than analysis runs)")
    max_anomalies_per_batch: int = setting(DEFAULT_MAX_ANOMALIES_PER_BATCH, "local anomalies of one batch that "
                                           "are checked; the rest are not decoded, only counted (outcome "
                                           "over_limit of local_anomalies_total); each counts as a row against "
                                           "analysis_queue_max_rows")
    retry_after_s: int = setting(DEFAULT_RETRY_AFTER_S, "Retry-After (seconds) sent with 503")
    late_after_s: float = setting(DEFAULT_LATE_AFTER_S, "a row whose event time is older than arrival "
                                  "minus this is late (flagged; it must not page as if it were now)",
                                  kind="duration")
    max_future_skew_s: float = setting(DEFAULT_MAX_FUTURE_SKEW_S, "a row or local anomaly stamped more than "
                                       "this after its arrival is counted (rows_future_total) and analysed at "
                                       "its arrival time, so a clock ahead cannot move the detectors' windows; "
                                       "keep it below the detectors' lateness_s", kind="duration")
    clock_offset_warn_s: float = setting(DEFAULT_CLOCK_OFFSET_WARN_S, "when the median over sidecars of arrival "
                                         "minus seal time is beyond this, the aggregator's clock looks wrong: "
                                         "said in /readyz (still 200) and the log (clock_offset_seconds)",
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
    baselines: BaselineConfig = section(BaselineConfig, "global baselines (aggregator/analysis/baselines)",
                                        old_prefix="baseline_")
    detectors: dict[str, Any] = setting(None, "detector settings, one map per detector (see "
                                        "aggregator/analysis/detectors/README.md); `enabled: false` turns one off",
                                        flag=False, factory=dict)
    quality: dict[str, Any] = setting(None, "answer quality: evaluation scores and user feedback joined to "
                                      "their calls, and their detectors (aggregator/README.md, 'Quality "
                                      "signals'); `enabled: false` turns it off", flag=False, factory=dict)
    security: dict[str, Any] = setting(None, "guardrail security events, their detectors and the action hook "
                                       "(aggregator/README.md, 'Security signals'); `enabled: false` turns it "
                                       "off", flag=False, factory=dict)
    forest: dict[str, Any] = setting(None, "Isolation Forest settings (aggregator/README.md, 'Isolation "
                                     "Forest in the pipeline'); `enabled: false` turns it off",
                                     flag=False, factory=dict)
    confirm: ConfirmConfig = section(ConfirmConfig, "confirmation of sidecars' local anomalies "
                                     "(aggregator/analysis/confirm.py)", old_prefix="confirm_")
    viewer_tokens: list[str] = setting(None, "bearer tokens that may read the API, the stream and gRPC Watch "
                                       "(comma-separated in SENTINEL_VIEWER_TOKENS)", flag=False, factory=list)
    operator_tokens: list[str] = setting(None, "bearer tokens that may also acknowledge alerts and manage "
                                         "silences", flag=False, factory=list)
    admin_tokens: list[str] = setting(None, "bearer tokens with every permission", flag=False, factory=list)
    jwt: JwtConfig = section(JwtConfig, "JWT authentication (aggregator/api/jwt_auth.py)", old_prefix="jwt_")
    allow_unauthenticated: bool = setting(False, "with no token of any kind configured, keep the configured "
                                          "listen addresses (default: bind to 127.0.0.1 and say so); only "
                                          "behind something that authenticates, e.g. an Istio "
                                          "AuthorizationPolicy")
    allowed_hosts: list[str] = setting(None, "names the API, the stream and the page may be reached by (Host "
                                       "header), besides IP literals, localhost and the hosts of listen and "
                                       "public_url; '*': any. Refuses DNS rebinding (comma-separated in env)",
                                       factory=list)
    tls_cert_file: str = setting("", "PEM certificate chain: serve HTTPS and gRPC over TLS (with tls_key_file); "
                                 "empty: plaintext (e.g. behind Istio mTLS)")
    tls_key_file: str = setting("", "PEM private key of tls_cert_file")
    tls_client_ca_file: str = setting("", "require client certificates signed by this CA on both listeners (mTLS "
                                      "between sidecars and the aggregator without Istio); needs tls_cert_file")
    grpc_listen: str = setting(DEFAULT_GRPC_LISTEN, "gRPC listen address of sentinel.v1.AlertService (Watch, "
                               "GetAlert, ListAlerts); empty: off")
    public_url: str = setting("", "the URL people reach the aggregator's page at (runbook and page links in "
                              "alerts); empty: derived from listen")
    amqp: AmqpSinkConfig = section(AmqpSinkConfig, "the RabbitMQ sink (aggregator/alerting/amqp_sink.py)",
                                   old_prefix="amqp_")
    webhooks: list[Any] = setting(None, "webhook sinks, a list of maps (aggregator/alerting/SINKS.md)",
                                  flag=False, factory=list)
    alerts: AlertManagerConfig = section(AlertManagerConfig, "the alert manager (aggregator/alerting/manager.py)",
                                         old_prefix="alert_")
    feedback: PrecisionGuardConfig = section(PrecisionGuardConfig, "the precision guard over operators' "
                                             "feedback (aggregator/alerting/precision_guard.py)",
                                             old_prefix="feedback_")
    save_interval_s: float = setting(60.0, "how often baselines are saved to data_dir (and at shutdown)",
                                     kind="duration")
    log_level: str = setting("info", "debug, info, warning or error")
    cluster: ClusterConfig = section(ClusterConfig, "cluster mode: analysis partitioned across replicas "
                                     "(aggregator/cluster/, README 'Cluster mode')",
                                     old_keys={"amqp_url": "cluster_amqp_url"})

    def __post_init__(self) -> None:
        # The few component fields that are other settings of the process, not settings of their own.
        if (self.alerts.public_url, self.alerts.metric_max_services) != (self.public_url, self.baselines.max_keys):
            self.alerts = dataclasses.replace(self.alerts, public_url=self.public_url,
                                              metric_max_services=self.baselines.max_keys)
        if self.confirm.late_after_s != self.late_after_s:
            self.confirm = dataclasses.replace(self.confirm, late_after_s=self.late_after_s)
        if (self.cluster.store_url, self.cluster.dedup_retention_s) != (self.store_url, self.journal_retention_s):
            self.cluster = dataclasses.replace(self.cluster, store_url=self.store_url,
                                               dedup_retention_s=self.journal_retention_s)

    def forest_config(self) -> ForestConfig | None:
        return forest_config(self.forest)

    def configured_floor(self, anomaly_type: str) -> float:
        """The confidence floor the settings give ``anomaly_type`` (before any raise from feedback)."""
        return max(self.alerts.min_confidence, float(self.alerts.min_confidence_by_type.get(anomaly_type, 0.0)))

    @classmethod
    def live_keys(cls) -> frozenset[str]:
        """The (dotted) keys a reload applies live (:data:`LIVE_SECTIONS`, :data:`LIVE_KEYS`; ``log_level`` too)."""
        return frozenset(leaf.key for leaf in leaves(cls) if leaf.section in LIVE_SECTIONS or leaf.key in LIVE_KEYS)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens or self.sidecar_tokens or self.viewer_tokens or self.operator_tokens
                    or self.admin_tokens or self.jwt.enabled)

    def validate(self) -> None:
        _hostport("listen", self.listen)
        for key in ("otlp_grpc_listen", "otlp_http_listen"):
            if getattr(self, key):
                _hostport(key, getattr(self, key))
        if not self.data_dir:
            raise ConfigError("data_dir: must not be empty")
        for key in ("tokens", "viewer_tokens", "operator_tokens", "admin_tokens"):
            tokens = getattr(self, key)
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
                raise ConfigError(f"{key}: must be a list of non-empty strings")
        parse_sidecar_tokens(self.sidecar_tokens)
        parse_sidecar_services(self.sidecar_services)
        if self.grpc_listen:
            _hostport("grpc_listen", self.grpc_listen)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file: tls_cert_file and tls_key_file must be given together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file: needs tls_cert_file and tls_key_file")
        if self.tls_cert_file and (self.otlp_grpc_listen or self.otlp_http_listen):
            # The embedded sidecar forwards over loopback to this listener; with TLS it would need a
            # certificate valid for 127.0.0.1 (and a client certificate under mTLS).
            raise ConfigError("tls_cert_file: the standalone OTLP listeners (otlp_grpc_listen, otlp_http_listen) "
                              "are plaintext-only for now; run a separate sidecar with TLS instead")
        if self.store_url and not self.store_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("store_url: must start with postgresql:// (or be empty: SQLite in data_dir)")
        self.amqp.validate()
        if not isinstance(self.webhooks, list):
            raise ConfigError("webhooks: must be a list of maps")
        self.alerts.validate()
        self.feedback.validate()
        self.jwt.validate()
        for key in ("max_body_bytes", "ingest_queue_max_batches", "analysis_queue_max_rows", "retry_after_s",
                    "dedup_window", "max_anomalies_per_batch"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        for key in ("late_after_s", "journal_retention_s", "journal_prune_interval_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0")
        if self.clock_offset_warn_s <= 0:
            raise ConfigError("clock_offset_warn_s: must be greater than 0")
        if self.max_future_skew_s < 0:
            raise ConfigError("max_future_skew_s: must not be negative")
        if self.save_interval_s <= 0:
            raise ConfigError("save_interval_s: must be greater than 0")
        self.baselines.validate()
        self.cluster.validate()
        self.confirm.validate()
        from aggregator.analysis.detectors.consumer import parse_detector_settings  # imports every detector

        parse_detector_settings(self.detectors)
        from aggregator.analysis.quality.consumer import parse_quality_settings

        parse_quality_settings(self.quality)
        from aggregator.analysis.security.consumer import parse_security_settings

        parse_security_settings(self.security)
        forest_config(self.forest)
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s: must not be negative")
        if self.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"log_level: {self.log_level!r} is not debug, info, warning or error")
