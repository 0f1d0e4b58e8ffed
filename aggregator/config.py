"""The aggregator's settings: one dataclass, its defaults as named constants, and ``validate()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aggregator.alerting.grouping import (
    DEFAULT_FOLD_INTO,
    DEFAULT_GROUP_ACROSS,
    DEFAULT_GROUP_BY,
    DEFAULT_GROUP_BY_TYPE,
)
from aggregator.alerting.manager import (
    DEFAULT_ALERT_MIN_CONFIDENCE,
    DEFAULT_CORRELATION_WINDOW_S,
    DEFAULT_DEDUP_WINDOW_S,
    DEFAULT_GROUP_INTERVAL_S,
    DEFAULT_GROUP_MAX_MEMBERS,
    DEFAULT_GROUP_WAIT_S,
    DEFAULT_MIN_CONFIDENCE_BY_TYPE,
    DEFAULT_PERSISTENCE,
    DEFAULT_PERSISTENCE_WINDOW_S,
    DEFAULT_REPEAT_INTERVAL_S,
    DEFAULT_RESOLVE_AFTER_S,
    DEFAULT_RETENTION_S,
    DEFAULT_ROW_PERSISTENCE,
    DEFAULT_RUNBOOK_URL_TEMPLATE,
    DEFAULT_STORM_MAX_ALERTS,
    DEFAULT_STORM_WINDOW_S,
    DEFAULT_TIME_SCALE,
    AlertManagerConfig,
)
from aggregator.alerting.precision_guard import DEFAULT_MAX_FLOOR as DEFAULT_FEEDBACK_MAX_FLOOR
from aggregator.alerting.precision_guard import DEFAULT_MIN_VERDICTS as DEFAULT_FEEDBACK_MIN_VERDICTS
from aggregator.alerting.precision_guard import DEFAULT_STEP as DEFAULT_FEEDBACK_STEP
from aggregator.alerting.precision_guard import DEFAULT_WINDOW_S as DEFAULT_FEEDBACK_WINDOW_S
from aggregator.alerting.precision_guard import PrecisionGuardConfig
from aggregator.analysis.baselines.store import DEFAULT_METRICS, DEFAULT_RELATIVE_ACCURACY, BaselineConfig
from aggregator.analysis.confirm import (
    DEFAULT_LEVEL_SHIFT_QUANTILE,
    DEFAULT_MARGIN,
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_MIN_GLOBAL_COUNT,
    DEFAULT_QUANTILE,
    DEFAULT_UNCHECKED_MIN_SIGMA,
    ConfirmConfig,
)
from aggregator.api.jwt_auth import DEFAULT_ALGORITHMS as DEFAULT_JWT_ALGORITHMS
from aggregator.api.jwt_auth import JwtConfig
from aggregator.cluster.config import DEFAULT_CHECKPOINT_INTERVAL_S, DEFAULT_PREFETCH, ClusterConfig
from aggregator.cluster.config import DEFAULT_PARTITIONS as DEFAULT_CLUSTER_PARTITIONS
from aggregator.ingest.auth import parse_sidecar_services, parse_sidecar_tokens
from aggregator.ingest.clock_check import DEFAULT_CLOCK_OFFSET_WARN_S
from aggregator.ingest.event_time import DEFAULT_MAX_FUTURE_SKEW_S
from sentinel.alerts import SEVERITIES
from sentinel.config import ConfigError, load_map, setting

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
#: analysis batches: the alert manager's and the local-anomaly confirmation's (by prefix), the
#: detectors and the forest, the sinks, the API and ingest tokens and the JWT settings. Every other
#: changed key (listeners, TLS, stores, baselines, queues) needs a restart.
LIVE_KEY_PREFIXES = ("alert_", "confirm_", "jwt_")
LIVE_KEYS = frozenset({"detectors", "forest", "amqp_url", "amqp_exchange", "amqp_queue", "amqp_min_severity",
                       "webhooks", "tokens", "sidecar_tokens", "viewer_tokens", "operator_tokens", "admin_tokens"})
#: Keys whose values are secrets (tokens, a broker password, webhook URLs and headers, the store's URL):
#: the configuration API, its versions and their diffs show a digest of the value, never the value.
SECRET_KEYS = frozenset({"tokens", "sidecar_tokens", "viewer_tokens", "operator_tokens", "admin_tokens",
                         "amqp_url", "webhooks", "store_url", "cluster_amqp_url"})


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
    baseline_metrics: list[str] = setting(None, "metrics with global baselines (comma-separated in env)",
                                          factory=lambda: list(DEFAULT_METRICS))
    baseline_seasonality: bool = setting(False, "also keep one baseline per hour of week (UTC) per key")
    baseline_max_keys: int = setting(2000, "baselines kept (global, regional and seasonal each count); the "
                                     "least recently updated are evicted beyond it (~55 KiB each)")
    baseline_relative_accuracy: float = setting(DEFAULT_RELATIVE_ACCURACY, "relative error bound of the "
                                                "baseline quantiles (DDSketch)")
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
    confirm_level_shift_quantile: float = setting(DEFAULT_LEVEL_SHIFT_QUANTILE, "global quantile a sidecar's "
                                                  "latency/TTFT level shift (up) must pass to be confirmed")
    viewer_tokens: list[str] = setting(None, "bearer tokens that may read the API, the stream and gRPC Watch "
                                       "(comma-separated in SENTINEL_VIEWER_TOKENS)", flag=False, factory=list)
    operator_tokens: list[str] = setting(None, "bearer tokens that may also acknowledge alerts and manage "
                                         "silences", flag=False, factory=list)
    admin_tokens: list[str] = setting(None, "bearer tokens with every permission", flag=False, factory=list)
    jwt_jwks_url: str = setting("", "accept JWTs (e.g. OIDC access tokens) signed by a key of this JWKS URL, beside "
                                "the static tokens (aggregator/api/README.md, 'JWT'); empty: off")
    jwt_jwks_file: str = setting("", "the same from a JWKS file (re-read when it changes), instead of jwt_jwks_url")
    jwt_issuer: str = setting("", "the iss a JWT must carry (needed with a JWKS)")
    jwt_audience: str = setting("", "the aud a JWT must carry (needed with a JWKS)")
    jwt_role_claim: str = setting("roles", "the JWT claim (a string or a list, e.g. groups) mapped to a role")
    jwt_role_map: dict[str, Any] = setting(None, "claim value -> viewer, operator or admin; a JWT gets the most "
                                           "privileged role of its mapped values", flag=False, factory=dict)
    jwt_algorithms: list[str] = setting(None, "signature algorithms accepted (asymmetric only)",
                                        factory=lambda: list(DEFAULT_JWT_ALGORITHMS))
    jwt_jwks_cache_s: float = setting(300.0, "how long a fetched JWKS is used before it is fetched again",
                                      kind="duration")
    jwt_jwks_refetch_s: float = setting(30.0, "a token with a key id the cached JWKS lacks (a rotated key) fetches it "
                                        "again, at most this often", kind="duration")
    jwt_leeway_s: float = setting(30.0, "clock skew allowed on exp, nbf and iat", kind="duration")
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
    amqp_url: str = setting("", "RabbitMQ sink: amqp:// URL (prefer SENTINEL_AMQP_URL: it holds the password); "
                            "empty: no broker, alerts stay in the store, API and page")
    amqp_exchange: str = setting("incidents", "RabbitMQ topic exchange alerts are published to")
    amqp_queue: str = setting("incidents.all", "queue declared and bound to incidents.# (24 h TTL, dead letters "
                              "to incidents.dlq); empty: declare none")
    amqp_min_severity: str = setting("low", "least severe alert published to RabbitMQ")
    webhooks: list[Any] = setting(None, "webhook sinks, a list of maps (aggregator/alerting/SINKS.md)",
                                  flag=False, factory=list)
    alert_dedup_window_s: float = setting(DEFAULT_DEDUP_WINDOW_S, "a detection with the fingerprint of an "
                                          "unresolved alert seen within this window updates it", kind="duration")
    alert_min_confidence: float = setting(DEFAULT_ALERT_MIN_CONFIDENCE, "detections below this confidence "
                                          "raise no alert")
    alert_min_confidence_by_type: dict[str, Any] = setting(None, "a higher confidence floor per anomaly type",
                                                           flag=False,
                                                           factory=lambda: dict(DEFAULT_MIN_CONFIDENCE_BY_TYPE))
    alert_persistence: dict[str, Any] = setting(None, "detections of one series needed within "
                                                "alert_persistence_window_s before an alert, per anomaly type",
                                                flag=False, factory=lambda: dict(DEFAULT_PERSISTENCE))
    alert_row_persistence: int = setting(DEFAULT_ROW_PERSISTENCE, "detections of one series needed within "
                                         "alert_persistence_window_s when each is about a single call (confirmed "
                                         "local anomalies, forest outliers)")
    alert_persistence_window_s: float = setting(DEFAULT_PERSISTENCE_WINDOW_S, "window of alert_persistence",
                                                kind="duration")
    alert_correlation_window_s: float = setting(DEFAULT_CORRELATION_WINDOW_S, "unresolved alerts of one service "
                                                "seen within this window are linked as related", kind="duration")
    alert_resolve_after_s: float = setting(DEFAULT_RESOLVE_AFTER_S, "an alert resolves after this long (wall "
                                           "clock) without a detection while its service keeps sending",
                                           kind="duration")
    alert_storm_max_alerts: int = setting(DEFAULT_STORM_MAX_ALERTS, "alerts sent within alert_storm_window_s "
                                          "before the rest are summarised into one alert_storm alert")
    alert_storm_window_s: float = setting(DEFAULT_STORM_WINDOW_S, "window of the storm rate limit", kind="duration")
    alert_group_by: list[str] = setting(None, "labels whose values make one alert (one notification) of several "
                                        "series, comma-separated in env: service_name, anomaly_type, model, region, "
                                        "user, provider, detection_method, severity; '...' alone: one alert per series",
                                        factory=lambda: list(DEFAULT_GROUP_BY))
    alert_group_by_type: dict[str, Any] = setting(None, "alert_group_by per anomaly type (a series without every "
                                                  "label named uses alert_group_by)", flag=False,
                                                  factory=lambda: {k: list(v)
                                                                   for k, v in DEFAULT_GROUP_BY_TYPE.items()})
    alert_group_across: dict[str, Any] = setting(None, "per anomaly type, labels a series may share with a firing "
                                                 "member of an open alert of its type to join it across groups "
                                                 "(a provider's storm on several services: one alert)", flag=False,
                                                 factory=lambda: {k: list(v)
                                                                  for k, v in DEFAULT_GROUP_ACROSS.items()})
    alert_fold_into: dict[str, Any] = setting(None, "per secondary anomaly type, the primary types whose open alert "
                                              "on the same service explains it: its series joins that alert as "
                                              "an explained_by member instead of raising its own (a tokens/s "
                                              "drop during a latency spike)", flag=False,
                                              factory=lambda: {k: list(v) for k, v in DEFAULT_FOLD_INTO.items()})
    alert_group_wait_s: float = setting(DEFAULT_GROUP_WAIT_S, "a new alert's first notification waits this long "
                                        "to collect the other series of its group", kind="duration")
    alert_group_interval_s: float = setting(DEFAULT_GROUP_INTERVAL_S, "series joining an alert already sent are "
                                            "sent at most this often", kind="duration")
    alert_repeat_interval_s: float = setting(DEFAULT_REPEAT_INTERVAL_S, "a firing alert is sent again after this "
                                             "long", kind="duration")
    alert_group_max_members: int = setting(DEFAULT_GROUP_MAX_MEMBERS, "series listed in one alert; more firing "
                                           "ones are counted in context.series_left_out")
    alert_time_scale: float = setting(DEFAULT_TIME_SCALE, "every alert window (de-duplication, persistence, "
                                      "correlation, resolution, grouping, storm) is divided by this: event time "
                                      "replayed N times faster sets N")
    alert_retention_s: float = setting(DEFAULT_RETENTION_S, "how long resolved alerts are kept", kind="duration")
    alert_severity: dict[str, Any] = setting(None, "base severity per anomaly type, overriding the rules' table",
                                             flag=False, factory=dict)
    alert_runbook_url_template: str = setting(DEFAULT_RUNBOOK_URL_TEMPLATE, "runbook_url of alerts; "
                                              "placeholders {public_url}, {anomaly_type}, {service}, {model}")
    feedback_min_precision: float = setting(0.0, "an anomaly type whose precision from operators' feedback falls "
                                            "under this gets its confidence floor raised (logged, audited, "
                                            "reversible); 0: off, precision is only measured")
    feedback_min_verdicts: int = setting(DEFAULT_FEEDBACK_MIN_VERDICTS, "true and false positive verdicts a type "
                                         "needs (since its last raise) before its precision counts")
    feedback_floor_step: float = setting(DEFAULT_FEEDBACK_STEP, "how much one raise adds to a type's confidence floor")
    feedback_max_floor: float = setting(DEFAULT_FEEDBACK_MAX_FLOOR, "the highest floor raises reach")
    feedback_window_s: float = setting(DEFAULT_FEEDBACK_WINDOW_S, "verdicts on alerts raised within this long "
                                       "count towards the precision", kind="duration")
    save_interval_s: float = setting(60.0, "how often baselines are saved to data_dir (and at shutdown)",
                                     kind="duration")
    log_level: str = setting("info", "debug, info, warning or error")
    # -- cluster mode (aggregator/cluster/, README "Cluster mode"): flat keys, gathered by cluster_config() --
    cluster_amqp_url: str = setting("", "cluster mode (with a postgresql:// store_url): RabbitMQ amqp:// URL the "
                                    "replicas partition analysis over (prefer SENTINEL_CLUSTER_AMQP_URL); empty: "
                                    "one process", flag=False)
    cluster_partitions: int = setting(DEFAULT_CLUSTER_PARTITIONS, "analysis partitions (CRC-32 of the service "
                                      "name modulo this); the same on every replica, changed only with the "
                                      "cluster stopped")
    cluster_queue_prefix: str = setting("sentinel.cluster", "names of the partition queues (<prefix>.p<n>) and "
                                        "the advisory-lock namespace")
    cluster_replica_id: str = setting("", "this replica's name in the heartbeat table; empty: host name and "
                                      "process id")
    cluster_heartbeat_interval_s: float = setting(1.0, "how often a replica renews its heartbeat and rebalances",
                                                  kind="duration")
    cluster_heartbeat_ttl_s: float = setting(5.0, "a replica whose heartbeat is older is not counted live (its "
                                             "partitions' share moves to the others)", kind="duration")
    cluster_checkpoint_interval_s: float = setting(DEFAULT_CHECKPOINT_INTERVAL_S, "how often a partition with new "
                                                   "messages is checkpointed to PostgreSQL (and early at half "
                                                   "cluster_prefetch); its messages are acknowledged then",
                                                   kind="duration")
    cluster_prefetch: int = setting(DEFAULT_PREFETCH, "messages of a partition delivered and not yet acknowledged "
                                    "(bounds memory and what a takeover replays)")

    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig(amqp_url=self.cluster_amqp_url, store_url=self.store_url,
                             partitions=self.cluster_partitions, queue_prefix=self.cluster_queue_prefix,
                             replica_id=self.cluster_replica_id,
                             heartbeat_interval_s=self.cluster_heartbeat_interval_s,
                             heartbeat_ttl_s=self.cluster_heartbeat_ttl_s,
                             checkpoint_interval_s=self.cluster_checkpoint_interval_s,
                             prefetch=self.cluster_prefetch, dedup_retention_s=self.journal_retention_s)

    def confirm_config(self) -> ConfirmConfig:
        return ConfirmConfig(enabled=self.confirm_enabled, min_global_count=self.confirm_min_global_count,
                             quantile=self.confirm_quantile, margin=self.confirm_margin,
                             unchecked_min_sigma=self.confirm_unchecked_min_sigma,
                             min_confidence=self.confirm_min_confidence, late_after_s=self.late_after_s,
                             level_shift_quantile=self.confirm_level_shift_quantile)

    def forest_config(self) -> ForestConfig | None:
        return forest_config(self.forest)

    def precision_guard_config(self) -> PrecisionGuardConfig:
        return PrecisionGuardConfig(min_precision=self.feedback_min_precision, min_verdicts=self.feedback_min_verdicts,
                                    step=self.feedback_floor_step, max_floor=self.feedback_max_floor,
                                    window_s=self.feedback_window_s)

    def configured_floor(self, anomaly_type: str) -> float:
        """The confidence floor the settings give ``anomaly_type`` (before any raise from feedback)."""
        return max(self.alert_min_confidence, float(self.alert_min_confidence_by_type.get(anomaly_type, 0.0)))

    def alert_manager_config(self) -> AlertManagerConfig:
        return AlertManagerConfig(
            dedup_window_s=self.alert_dedup_window_s, min_confidence=self.alert_min_confidence,
            min_confidence_by_type=dict(self.alert_min_confidence_by_type),
            persistence=dict(self.alert_persistence), row_persistence=self.alert_row_persistence,
            persistence_window_s=self.alert_persistence_window_s,
            correlation_window_s=self.alert_correlation_window_s, resolve_after_s=self.alert_resolve_after_s,
            storm_max_alerts=self.alert_storm_max_alerts, storm_window_s=self.alert_storm_window_s,
            retention_s=self.alert_retention_s, severity=dict(self.alert_severity),
            runbook_url_template=self.alert_runbook_url_template, public_url=self.public_url,
            group_by=self.alert_group_by, group_by_type=dict(self.alert_group_by_type),
            group_across=dict(self.alert_group_across), fold_into=dict(self.alert_fold_into),
            group_wait_s=self.alert_group_wait_s,
            group_interval_s=self.alert_group_interval_s, repeat_interval_s=self.alert_repeat_interval_s,
            group_max_members=self.alert_group_max_members, time_scale=self.alert_time_scale,
            metric_max_services=self.baseline_max_keys)

    @classmethod
    def live_keys(cls) -> frozenset[str]:
        """The keys a reload applies live (:data:`LIVE_KEY_PREFIXES`, :data:`LIVE_KEYS`; ``log_level`` too)."""
        import dataclasses

        return frozenset(f.name for f in dataclasses.fields(cls)
                         if f.name.startswith(LIVE_KEY_PREFIXES) or f.name in LIVE_KEYS)

    def jwt_config(self) -> JwtConfig:
        return JwtConfig(jwks_url=self.jwt_jwks_url, jwks_file=self.jwt_jwks_file, issuer=self.jwt_issuer,
                         audience=self.jwt_audience, role_claim=self.jwt_role_claim, role_map=dict(self.jwt_role_map),
                         algorithms=tuple(self.jwt_algorithms), jwks_cache_s=self.jwt_jwks_cache_s,
                         jwks_refetch_s=self.jwt_jwks_refetch_s, leeway_s=self.jwt_leeway_s)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens or self.sidecar_tokens or self.viewer_tokens or self.operator_tokens
                    or self.admin_tokens or self.jwt_jwks_url or self.jwt_jwks_file)

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
        if self.amqp_url and not self.amqp_url.startswith(("amqp://", "amqps://")):
            raise ConfigError("amqp_url: must start with amqp:// or amqps://")
        if self.amqp_min_severity not in SEVERITIES:
            raise ConfigError(f"amqp_min_severity: {self.amqp_min_severity!r} is not one of {', '.join(SEVERITIES)}")
        if not self.amqp_exchange:
            raise ConfigError("amqp_exchange: must not be empty")
        if not isinstance(self.webhooks, list):
            raise ConfigError("webhooks: must be a list of maps")
        self.alert_manager_config().validate()
        self.precision_guard_config().validate()
        self.jwt_config().validate()
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
        self.baseline_config().validate()
        self.cluster_config().validate()
        self.confirm_config().validate()
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
