"""The aggregator process: builds its components from :class:`AggregatorConfig`, starts and stops them.

One HTTP listener (``listen``, default ``0.0.0.0:9090``) serves ``POST /v1/ingest``, the API v1
(alerts, silences, services, statistics, the SSE stream, baselines, candidates, OpenAPI), the web
page at ``/``, ``/metrics``, ``/healthz`` and ``/readyz``; a gRPC listener (``grpc_listen``, default
``0.0.0.0:9091``) serves ``sentinel.v1.AlertService``. Both bind to 127.0.0.1 when no token is
configured. Start opens the journal, restores the analysis consumers (baselines, detector state,
forests, series, open alerts) before the listeners, so nothing is accepted before it can be
stored; sinks start after (a broker that is down is retried in the background while alerts wait
in the outbox). Shutdown ends the live
streams, stops the listeners (in-flight requests get up to ``shutdown_grace_s``), commits what is
queued, lets analysis finish and saves its state, stops the sinks (what is undelivered stays in
the outbox) and closes the stores.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge

from aggregator.alerting.amqp_sink import AmqpSink, AmqpSinkConfig
from aggregator.alerting.audit import AuditEntry, AuditLog
from aggregator.alerting.edge_alerts import EdgeAlertReconciler
from aggregator.alerting.feedback import FeedbackLog
from aggregator.alerting.grpc_service import AlertGrpcServer
from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig
from aggregator.alerting.pg_store import PgAlertStore
from aggregator.alerting.precision_guard import PrecisionGuard
from aggregator.alerting.security_actions import PgActionStore
from aggregator.alerting.sink import Sink, SinkMetrics
from aggregator.alerting.store import SQLiteAlertStore, StoreError
from aggregator.alerting.webhook_sink import WebhookConfig, WebhookSink, parse_webhooks
from aggregator.analysis.baselines.consumer import BaselineConsumer
from aggregator.analysis.candidates import CandidateLog
from aggregator.analysis.confirm import LocalAnomalyConfirmer
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.consumer import DetectorConsumer
from aggregator.analysis.detectors.finish_length import FinishLengthDetector
from aggregator.analysis.forest.consumer import ANOMALY_TYPE as FOREST_TYPE
from aggregator.analysis.forest.consumer import ForestConsumer
from aggregator.analysis.pipeline import Analysis, Consumer, innermost, pipeline, restore, save
from aggregator.analysis.quality.call_index import ModelVersions, with_model_version
from aggregator.analysis.quality.consumer import QualityConsumer, parse_quality_settings
from aggregator.analysis.security.consumer import SecurityConsumer, parse_security_settings
from aggregator.analysis.series import SeriesConsumer
from aggregator.analysis.summaries import FromSummaries, SummaryBaselines
from aggregator.api.auth import Roles
from aggregator.api.guard import allowed_host_names
from aggregator.api.jwt_auth import JwtVerifier
from aggregator.api.quality_api import QualityApi
from aggregator.api.routes import Api, add_api_routes
from aggregator.api.security_api import SecurityApi
from aggregator.cluster.api import ClusterApi
from aggregator.cluster.checkpoint import Partition, Shared
from aggregator.cluster.events import EventRouter
from aggregator.cluster.ingest import ClusterIngest
from aggregator.cluster.owner import Coordinator
from aggregator.cluster.views import ClusterView, summarise
from aggregator.config import SECRET_KEYS, AggregatorConfig
from aggregator.config_versions import ConfigVersion, ConfigVersions, diff, is_digest, redact
from aggregator.ingest.auth import parse_sidecar_tokens
from aggregator.ingest.config import IngestConfig
from aggregator.ingest.security_amqp import SecurityEventConsumer
from aggregator.ingest.service import IngestService
from aggregator.metrics import AggregatorMetrics
from aggregator.web import add_web_routes
from sentinel import service
from sentinel.alerts import Alert
from sentinel.config import ConfigError, get_key, load, replace_keys, resolve
from sentinel.gc_policy import freeze_startup
from sentinel.reload import SettingsReloader
from sentinel.service import add_ops_routes, run_until_signalled
from sentinel.tasks import TaskSupervisor
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig

__all__ = ["Aggregator", "run"]

log = logging.getLogger(__name__)
#: The alert manager's clock (due notifications, the storm window): once a second of event time, so
#: every TICK_S / alerts.time_scale wall seconds, but not more often than every MIN_TICK_S.
TICK_S = 1.0
MIN_TICK_S = 0.02


def tick_interval_s(time_scale: float) -> float:
    """Wall seconds between two alert manager ticks at ``alerts.time_scale``."""
    return max(MIN_TICK_S, TICK_S / time_scale)


class Aggregator:
    """All of the aggregator in one object; ``await start()``, then ``await shutdown()`` (idempotent)."""

    def __init__(self, config: AggregatorConfig, *, registry: CollectorRegistry | None = None) -> None:
        config.validate()
        self.config = config
        self.metrics = AggregatorMetrics(registry)
        self.tasks = TaskSupervisor(self.metrics.registry, "sentinel_aggregator")
        self.baselines = BaselineConsumer(config.baselines, config.data_dir)
        self.candidates = CandidateLog(registry=self.metrics.registry)
        self.hub = AlertHub()
        # A cluster's replicas share one PostgreSQL store (store_url); alone, SQLite in data_dir.
        self.alert_store: SQLiteAlertStore | PgAlertStore = (
            PgAlertStore(config.store_url, registry=self.metrics.registry) if config.store_url
            else SQLiteAlertStore(os.path.join(config.data_dir, "alerts.db")))
        self._sink_metrics = SinkMetrics(self.metrics.registry)
        self._sink_configs = _sink_configs(config)
        self.sinks: list[Sink] = [self._sink(c) for c in self._sink_configs.values()]
        self.roles = _roles(config, None)
        self.series = SeriesConsumer(config.data_dir)
        self.alerts = AlertManager(_copy(config.alerts), self.alert_store, self.hub, sinks=self.sinks,
                                   registry=self.metrics.registry)
        self.feedback = FeedbackLog(self.alert_store)
        self.audit = AuditLog(self.alert_store)
        self.versions = ConfigVersions(self.alert_store)
        self.guard = PrecisionGuard(config.feedback, self.feedback, self.audit,
                                    base_floor=lambda t: self.config.configured_floor(t),
                                    apply=lambda floors: self.alerts.reconfigure(self._alert_config(self.config)),
                                    clock=time.time_ns)
        self.confirmer = LocalAnomalyConfirmer(config.confirm, self.baselines.store,
                                               outcome=self.metrics.count_local_anomaly)
        emit = self._emit_observed = self.metrics.observing(self._emit)  # + detection latency of every candidate
        self.model_versions = ModelVersions()
        quality = self._quality_settings = parse_quality_settings(config.quality)
        # Events posted to the API raise candidates outside a batch: handed on as the pipeline's are.
        self.quality = (QualityConsumer(quality, config.data_dir, on_candidates=emit, versions=self.model_versions)
                        if quality.enabled else None)
        self.detectors = DetectorConsumer(config.detectors, config.data_dir, late_after_s=config.late_after_s,
                                          max_future_skew_s=config.max_future_skew_s)
        security = self._security_settings = parse_security_settings(config.security)
        # Replicas sharing a PostgreSQL store share the action hook's actions: any of them decides any one.
        self.security = (SecurityConsumer(security, config.data_dir, on_candidates=emit, action_store=(
                             PgActionStore(self.alert_store, security.max_actions)
                             if isinstance(self.alert_store, PgAlertStore) else None))
                         if security.enabled else None)
        self.metrics.watch_signals(self._signal_counts)
        self.security_queue: SecurityEventConsumer | None = None
        # First: an alert raised at the edge exists before the anomalies it was raised on are confirmed.
        self.edge_alerts = EdgeAlertReconciler(self.alerts, late_after_s=config.late_after_s,
                                               registry=self.metrics.registry)
        # Batches of forward: summaries sidecars: baselines merge the summaries, windowed detectors (and the
        # series, and alert resolution) get rows rebuilt from them; the rest the rows as sent.
        accuracy = self.baselines.store.config.relative_accuracy
        self._summary_views: dict[str, Consumer] = {
            "baselines": SummaryBaselines(self.baselines),
            "detectors": FromSummaries(self.detectors, relative_accuracy=accuracy),
            "series": FromSummaries(self.series, relative_accuracy=accuracy),
            "alerts": FromSummaries(self.alerts, relative_accuracy=accuracy)}
        self.forest = self._forest(config)
        # Answer-quality candidates of the row detectors name the model version they correlate with.
        self.analysis = Analysis(self._consumers(), on_candidates=with_model_version(emit, self.model_versions),
                                 save_interval_s=config.save_interval_s, tasks=self.tasks)
        # Cluster mode (aggregator/cluster/): ingest publishes to partitions, owned partitions are analysed here.
        cluster = config.cluster
        self.cluster: Coordinator | None = None
        #: Cluster mode: where quality and security events from the API and the queue go (their partitions).
        self.events: EventRouter | None = None
        #: Cluster mode: services, series and baselines of every partition, as each replica answers them.
        self.view: ClusterView | None = None
        self.ingest: IngestService
        if cluster.enabled:
            cluster_ingest = ClusterIngest(IngestConfig.from_settings(config), cluster, self.metrics, tasks=self.tasks)
            self.ingest = cluster_ingest
            self.events = EventRouter(cluster, cluster_ingest.publisher)
            self.view = ClusterView(self.alert_store, partitions=cluster.partitions, baselines=config.baselines)
            self.cluster = Coordinator(cluster, config.data_dir, self._partition_consumers,
                                       with_model_version(emit, self.model_versions), registry=self.metrics.registry,
                                       url=lambda: self.url, summarise=summarise)
        else:
            self.ingest = IngestService(IngestConfig.from_settings(config), self.metrics, analysis=self.analysis,
                                        tasks=self.tasks)
        if self.security is not None and security.amqp_url:
            self.security_queue = SecurityEventConsumer(
                url=security.amqp_url, exchange=security.amqp_exchange, queue=security.amqp_queue,
                binding_key=security.amqp_binding_key,
                submit=self.events.submit_security if self.events is not None else self.security.submit,
                max_events=security.max_events_per_request)
        Gauge("sentinel_aggregator_analysis_backlog_rows", "Rows accepted and not yet analysed (ingest answers 503 "
              "beyond analysis_queue_max_rows)", registry=self.metrics.registry).set_function(
            lambda: self.analysis.backlog_rows)
        Gauge("sentinel_aggregator_clock_offset_seconds", "Median over recently heard sidecars of arrival minus "
              "seal time: forwarding delay plus how far this aggregator's clock is ahead (NaN: no batch yet)",
              registry=self.metrics.registry).set_function(self.ingest.clock_check.offset_s)
        self._runner: web.AppRunner | None = None
        self.otlp: Sidecar | None = None
        self.port = 0
        self._ready = False
        self._stopped = False
        self._ticker: asyncio.Task[None] | None = None
        self.api: Api | None = None
        self.grpc: AlertGrpcServer | None = None
        self._applying = asyncio.Lock()
        #: The configuration version this process runs (0: none yet); a cluster's replicas follow the newest.
        self.config_version = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    def _consumers(self) -> list[Consumer]:
        """The analysis consumers; the order, and why, is pipeline()'s docstring."""
        views = self._summary_views
        return pipeline(edge_alerts=self.edge_alerts, confirm=self.confirmer, baselines=views["baselines"],
                        quality=self.quality, security=self.security, detectors=views["detectors"],
                        forest=self.forest, series=views["series"], alerts=views["alerts"])

    def _partition_consumers(self, directory: Path) -> list[Consumer]:
        """One cluster partition's pipeline (pipeline() order), its state in ``directory``; the alert manager and
        the edge-alert reconciler are the replica's. Quality and security are per partition: their state is per
        (service, model) and per user of the partition's services, checkpointed and moved with it; the action
        hook (operators' approvals) stays the replica's (:meth:`_emit`)."""
        c = self.config
        q, sec = self._quality_settings, self._security_settings
        quality = (QualityConsumer(q, directory, on_candidates=self._emit_observed, versions=self.model_versions)
                   if q.enabled else None)
        security = (SecurityConsumer(dataclasses.replace(sec, action_webhook_url="", amqp_url=""), directory,
                                     on_candidates=self._emit_observed) if sec.enabled else None)
        baselines = BaselineConsumer(c.baselines, directory)
        accuracy = baselines.store.config.relative_accuracy
        settings = c.forest_config()
        forest = (ForestConsumer(settings, directory, on_fit=self.metrics.model_train_seconds.observe)
                  if settings is not None else None)
        return pipeline(edge_alerts=Shared(self.edge_alerts),
                        confirm=LocalAnomalyConfirmer(c.confirm, baselines.store,
                                                      outcome=self.metrics.count_local_anomaly),
                        baselines=SummaryBaselines(baselines), quality=quality, security=security,
                        detectors=FromSummaries(DetectorConsumer(c.detectors, directory, late_after_s=c.late_after_s,
                                                                 max_future_skew_s=c.max_future_skew_s),
                                                relative_accuracy=accuracy),
                        forest=forest, series=FromSummaries(SeriesConsumer(directory), relative_accuracy=accuracy),
                        alerts=FromSummaries(Shared(self.alerts), relative_accuracy=accuracy))

    def _signal_counts(self) -> dict[str, dict[str, float]]:
        """The quality and security counts for /metrics (aggregator/metrics.py SIGNAL_COUNTERS), read at a scrape."""
        out: dict[str, dict[str, float]] = {"sentinel_aggregator_answer_signals": {
            name: d.hit_rows for name, d in self.detectors.detectors.items() if isinstance(d, FinishLengthDetector)}}
        # Cluster mode: the sums over the partitions this replica owns (a partition's counts move with it).
        qualities = [self.quality] if self.cluster is None and self.quality is not None else []
        securities = [self.security] if self.cluster is None and self.security is not None else []
        if self.cluster is not None:
            consumers = [c for p in self.cluster.partitions() for c in p.consumers]
            qualities = [c for c in consumers if isinstance(c, QualityConsumer)]
            securities = [c for c in consumers if isinstance(c, SecurityConsumer)]
        if self.quality is not None:
            received: collections.Counter[str] = collections.Counter()
            for q in qualities:
                received.update(q.received)
            out["sentinel_aggregator_quality_events"] = {"evaluation": 0, "feedback": 0, **received}
            out["sentinel_aggregator_quality_events_joined"] = {"": sum(q.joined for q in qualities)}
            out["sentinel_aggregator_quality_events_unjoined"] = {"": sum(q.dropped_unjoined for q in qualities)}
        if self.security is not None:
            out["sentinel_aggregator_security_events"] = {"": sum(s.received for s in securities)}
            out["sentinel_aggregator_security_actions"] = dict(self.security.actions.decided)
        return out

    def _forest(self, config: AggregatorConfig) -> ForestConsumer | None:
        """A forest consumer for ``config`` (not yet restored), or ``None`` when it is disabled."""
        settings = config.forest_config()
        if settings is None:
            return None
        forest = ForestConsumer(settings, config.data_dir, on_fit=self.metrics.model_train_seconds.observe)
        self.metrics.watch_forest(forest)
        return forest

    def _sink(self, config: AmqpSinkConfig | WebhookConfig) -> Sink:
        if isinstance(config, AmqpSinkConfig):
            return AmqpSink(config, self.alert_store, metrics=self._sink_metrics)
        return WebhookSink(config, self.alert_store, metrics=self._sink_metrics)

    def _alert_config(self, config: AggregatorConfig) -> AlertManagerConfig:
        """The alert manager's settings from ``config``, its public URL as running, and the confidence
        floors raised from feedback over the configured ones (:mod:`aggregator.alerting.precision_guard`)."""
        alerts = _copy(config.alerts)
        alerts.public_url = self.alerts.config.public_url  # possibly derived from the listener at start
        floors = alerts.min_confidence_by_type
        for anomaly_type, floor in self.guard.floors().items():
            floors[anomaly_type] = max(floor, floors.get(anomaly_type, 0.0))
        alerts.validate()
        return alerts

    def _emit(self, candidates: Iterable[Candidate]) -> None:
        batch = list(candidates)
        if self.forest is not None:  # which features moved together, from the forest (analysis/forest/consumer.py)
            for c in batch:
                if c.anomaly_type != FOREST_TYPE and "forest" not in c.context:
                    note = self.forest.explain(c)
                    if note is not None:
                        c.context["forest"] = note
        self.candidates.emit(batch)
        self.alerts.emit(batch)
        if self.security is None:
            pass
        elif self.cluster is None:  # a user's token or cost anomaly may correlate with security events
            self.security.observe_candidates(batch)
        else:  # correlated in the partition (Partition's observers); the actions are the cluster's (PostgreSQL)
            self.security.actions.observe(batch)

    async def _tick(self) -> None:
        # Once a second, divided by alerts.time_scale like every alert window: a load test replaying event
        # time 30x faster waited up to 30 s of its event time here for a notification already due (issue 13).
        while True:
            await asyncio.sleep(tick_interval_s(self.alerts.config.time_scale))  # read each time: reloads
            try:
                await asyncio.to_thread(self.alerts.tick)
            except Exception:  # a store error must not end the storm clock for good
                log.exception("alert manager tick failed")

    @property
    def url(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        scheme = "https" if self.config.tls_cert_file else "http"
        return f"{scheme}://{host}:{self.port}"

    def _readiness(self) -> str:
        if self._stopped:
            return "shutting down"
        if not self._ready:
            return "starting"
        if self.cluster is not None and not self.cluster.balanced.is_set():
            return "cluster: partitions not yet balanced"
        return self.tasks.problem()

    def _ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if not c.tls_cert_file:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(c.tls_cert_file, c.tls_key_file)
        if c.tls_client_ca_file:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=c.tls_client_ca_file)
        return ctx

    def _grpc_credentials(self) -> grpc.ServerCredentials | None:
        c = self.config
        if not c.tls_cert_file:
            return None
        with open(c.tls_key_file, "rb") as k, open(c.tls_cert_file, "rb") as crt:
            pair = (k.read(), crt.read())
        ca = None
        if c.tls_client_ca_file:
            with open(c.tls_client_ca_file, "rb") as f:
                ca = f.read()
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)

    def _bind(self, address: str) -> str:
        """``address``, or the same port on 127.0.0.1 when nothing authenticates callers."""
        if self.config.auth_enabled or self.config.allow_unauthenticated or not address:
            return address
        return "127.0.0.1:" + address.rpartition(":")[2]

    async def start(self) -> None:
        c = self.config
        if not c.auth_enabled and not c.allow_unauthenticated:
            log.warning("no tokens configured: listening on 127.0.0.1 only (set tokens, viewer_tokens, "
                        "operator_tokens or admin_tokens to serve other hosts)")
        elif not c.auth_enabled:
            log.warning("no tokens configured and allow_unauthenticated set: anyone who can reach %s may "
                        "ingest, read and act on alerts", c.listen)
        await self.ingest.start()  # creates data_dir
        self.hub.bind(asyncio.get_running_loop())
        try:
            await self.analysis.start()  # restores every consumer (pipeline order), the alerts last
            # Floors raised from feedback before a restart still apply.
            await asyncio.to_thread(lambda: self.alerts.reconfigure(self._alert_config(self.config)))
            if self.cluster is None:
                await asyncio.to_thread(self._record_start_version)
            else:
                await self._join_cluster_config()
        except (StoreError, sqlite3.Error) as e:
            raise OSError(str(e)) from e
        self._loop = asyncio.get_running_loop()
        if isinstance(self.alert_store, PgAlertStore):  # the other replicas' alerts (and settings), live
            self.alert_store.listen(self._remote_alert, self.alerts.reload_silences,
                                    self._remote_config if self.cluster is not None else None)
        # Bodies beyond the limit are refused by aiohttp while reading; the handler turns that into 413.
        app = web.Application(client_max_size=c.max_body_bytes)
        app.router.add_post("/v1/ingest", self.ingest.handle)
        view = self.view
        app.router.add_get("/api/v1/baselines", view.handle_baselines if view is not None else self.baselines.handle)
        app.router.add_get("/api/v1/candidates", self.candidates.handle)
        self.api = add_api_routes(app, actions=self.alerts, series=view or self.series, baselines=self.baselines,
                                  cluster=view,
                                  roles=self.roles,
                                  allowed_hosts=allowed_host_names(c.listen, c.public_url, c.allowed_hosts),
                                  registry=self.metrics.registry, feedback=self.feedback,
                                  audit=self.audit, guard=self.guard, live=self)
        events = self.events
        if events is not None:
            events.bind(asyncio.get_running_loop())
        if self.quality is not None:
            QualityApi(self.quality, time.time_ns, submit=events.submit_quality if events is not None else None,
                       series=view.quality_series if view is not None else None).add_routes(app)
        if self.security is not None:
            SecurityApi(self.security, submit=events.submit_security if events is not None else None).add_routes(app)
        ClusterApi(self.cluster).add_routes(app)  # 404 unless a cluster
        add_web_routes(app)
        add_ops_routes(app, self.metrics.registry, self._readiness, self.ingest.clock_check.warning)
        try:
            ssl_context = self._ssl_context()
            credentials = self._grpc_credentials()
        except (OSError, ssl.SSLError) as e:  # unreadable or mismatched files: exit 1 naming them
            raise OSError(f"tls_cert_file/tls_key_file/tls_client_ca_file: {e}") from e
        # auto_decompress=False: nobody sends compressed bodies (sidecars do not), and aiohttp's own
        # inflation buffers about ten times client_max_size before it refuses a decompression bomb.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=c.shutdown_grace_s,
                               keepalive_timeout=service.IDLE_TIMEOUT_S, auto_decompress=False)
        await runner.setup()
        host, _, port = self._bind(c.listen).rpartition(":")
        site = web.TCPSite(runner, host, int(port), ssl_context=ssl_context)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        if not c.public_url:
            self.alerts.config.public_url = self.url
        if c.grpc_listen:
            self.grpc = AlertGrpcServer(self._bind(c.grpc_listen), self.hub, self.alert_store,
                                        tokens=self.roles.role_of if self.roles.enabled else None,
                                        credentials=credentials, registry=self.metrics.registry)
            await self.grpc.start()
        for sink in self.sinks:
            await sink.start()  # a broker that is down is retried in the background; alerts wait in the outbox
        if self.cluster is not None:  # after the listener: its heartbeat names this replica's URL
            await self.cluster.start()  # PostgreSQL or RabbitMQ down: retried in the background
        self._ticker = self.tasks.spawn("alert-tick", self._tick)
        if self.security_queue is not None:
            await self.security_queue.start()  # a broker that is down is retried in the background
        if c.otlp_grpc_listen or c.otlp_http_listen:
            # Standalone topology: an embedded sidecar (its receivers, extraction and local detection)
            # forwarding over loopback to this aggregator's own ingest, so de-duplication, the
            # journal and every detector see OTLP-fed rows exactly as they see a sidecar's.
            self.otlp = Sidecar(
                SidecarConfig(
                    grpc_listen=self._bind(c.otlp_grpc_listen), http_listen=self._bind(c.otlp_http_listen),
                    metrics_listen="", aggregator_url=self.url, token=c.tokens[0] if c.tokens else "",
                    sidecar_id=f"{socket.gethostname()}/aggregator-otlp", shutdown_grace_s=c.shutdown_grace_s,
                ),
                registry=self.metrics.registry,
            )
            await self.otlp.start()
        self._ready = True
        log.info("aggregator listening on %s:%d%s", host, self.port,
                 f", gRPC AlertService on port {self.grpc.port}" if self.grpc else "")

    def live_settings(self) -> dict[str, Any]:
        """The running live settings (:meth:`AggregatorConfig.live_keys`), as JSON values; secrets as digests."""
        live = {k: redact(get_key(self.config, k)) if k in SECRET_KEYS else get_key(self.config, k)
                for k in sorted(AggregatorConfig.live_keys())}
        return dict(json.loads(json.dumps(live)))

    def _check_live(self, merged: AggregatorConfig) -> None:
        """What a reload may not change although its key is live (raises naming the key)."""
        old = self.config
        if merged.auth_enabled != old.auth_enabled:
            # The listeners were bound (to 127.0.0.1 without auth) and gRPC built for one or the other.
            raise ConfigError("tokens: restart needed to turn authentication on or off (it decides how the "
                              "listeners bind); change the tokens while keeping at least one kind")
        if self.otlp is not None and (merged.tokens[:1] != old.tokens[:1]):
            raise ConfigError("tokens: restart needed to change tokens[0] (the embedded OTLP receiver sends with it)")

    async def apply_settings(self, new: AggregatorConfig, keys: list[str], *, who: str = "SIGHUP",
                             comment: str = "", role: str = "") -> ConfigVersion | None:
        """Apply the changed live ``keys`` of ``new`` (a reload, or ``PUT /api/v1/config``); the new version.

        Validated whole first (a bad value raises naming its key and nothing changes); then every
        component's settings are swapped on the analysis thread between two batches — the alert
        manager, the confirmation, the detectors (state kept where their settings allow,
        :meth:`DetectorConsumer.reconfigure`), the forest, the sink list, the tokens — and the sinks
        whose settings changed are restarted; the change is recorded as a configuration version and
        in the audit log.
        """
        async with self._applying:  # a SIGHUP and a PUT at once: one after the other, neither lost
            return await self._apply_settings(new, keys, who=who, comment=comment, role=role)

    async def _apply_settings(self, new: AggregatorConfig, keys: list[str], *, who: str, comment: str,
                              role: str, record: bool = True) -> ConfigVersion | None:
        old = self.config
        merged = replace_keys(self.config, {k: get_key(new, k) for k in keys})
        merged.validate()
        self._check_live(merged)
        alerts = await asyncio.to_thread(self._alert_config, merged)
        confirm = merged.confirm
        roles = _roles(merged, self.roles.jwt if merged.jwt == self.config.jwt else None)
        sink_configs = _sink_configs(merged)
        changed_sinks = [n for n, c in self._sink_configs.items() if sink_configs.get(n) != c]
        kept = {s.name: s for s in self.sinks if s.name not in changed_sinks}
        started = [self._sink(c) for n, c in sink_configs.items() if n not in kept]
        sinks = [kept.get(n) or next(s for s in started if s.name == n) for n in sink_configs]
        stopped = [s for s in self.sinks if s.name in changed_sinks]
        old_forest = self.forest

        def swap() -> None:
            self.alerts.reconfigure(alerts)
            self.alerts.sinks = sinks
            self.confirmer.config = confirm
            if merged.detectors != self.config.detectors:
                self.detectors.reconfigure(merged.detectors)
            if merged.forest != self.config.forest:
                # As across a restart: the saved forests keep scoring, the windows refill, the next fit
                # uses the new settings (forests of other features are not loaded: it starts afresh).
                if old_forest is not None:
                    save(old_forest)
                    old_forest.shutdown()
                self.forest = self._forest(merged)
                if self.forest is not None:
                    restore(self.forest)
                if self.forest is None:
                    self.metrics.model_age.set_function(lambda: math.nan)
                self.analysis.set_consumers(self._consumers())
            self.roles.replace(roles)
            self.ingest.set_tokens(merged.tokens, merged.sidecar_tokens)

        before = self.live_settings()
        await self.analysis.between_batches(swap)
        self.config = merged  # before the partitions: one taken from now on is built with the new settings
        if self.cluster is not None:
            await self.cluster.between_batches(lambda part: self._reconfigure_partition(part, merged, old))
        self._sink_configs = sink_configs
        self.sinks = sinks
        for sink in stopped:
            await sink.shutdown()  # before its successor of the same name starts: one sender per outbox
        for sink in started:
            if self._ready:
                await sink.start()
        after = self.live_settings()
        if before == after or not record:
            return None
        version = await asyncio.to_thread(lambda: self.versions.add(
            at=time.time_ns(), who=who, comment=comment, settings=after, changes=diff(before, after)))
        self.config_version = version.version
        entry = AuditEntry(at=version.at, who=who, role=role or ("process" if who == "SIGHUP" else ""),
                           action="config.version", target=str(version.version),
                           detail={"keys": sorted(version.diff), "comment": comment})
        await asyncio.to_thread(self.audit.append, entry)
        log.info("configuration version %d by %s: %s", version.version, who, ", ".join(sorted(version.diff)))
        return version

    async def put_settings(self, changes: dict[str, Any], who: str, comment: str,
                           role: str = "") -> ConfigVersion | None:
        """``PUT /api/v1/config``: ``changes`` (setting -> value, as in the YAML file: a section as a map,
        or its keys dotted as ``GET`` shows them, ``alerts.group_wait_s``) applied live."""
        live = AggregatorConfig.live_keys()
        running = self.live_settings()
        changes = resolve(AggregatorConfig, changes)  # dotted keys; an unknown one raises naming it
        for key in list(changes):
            if key not in live:
                raise ConfigError(f"{key}: restart needed for {key} (not a live setting)")
            if key in SECRET_KEYS and is_digest(changes[key]):
                # A version (a rollback) or GET's answer sent back: secrets are stored as digests only.
                if changes[key] != running[key]:
                    raise ConfigError(f"{key}: the versions hold a digest of this secret, not its value; "
                                      "give the value itself to change it")
                del changes[key]
        if not changes:
            return None
        # The loader's conversions (durations, maps); the checks run on the merged settings (apply_settings),
        # since some need settings not changed (a new jwt.jwks_file with the running jwt.audience).
        new = load(AggregatorConfig, data=changes, env={}, base=self.config, validate=False)
        return await self.apply_settings(new, sorted(changes), who=who or "anonymous", comment=comment, role=role)

    def _reconfigure_partition(self, part: Partition, merged: AggregatorConfig, old: AggregatorConfig) -> None:
        """A reload's new settings in one owned partition's consumers (on the analysis thread), as :meth:`swap`
        does for the single process's: confirmation, detectors (state kept where their settings allow), and a
        changed forest rebuilt from the saved state (the whole pipeline, built by :meth:`_partition_consumers`)."""
        for consumer in part.consumers:
            inner = innermost(consumer)
            if isinstance(inner, LocalAnomalyConfirmer):
                inner.config = merged.confirm
            elif isinstance(inner, DetectorConsumer) and merged.detectors != old.detectors:
                inner.reconfigure(merged.detectors)
        if merged.forest != old.forest:
            for consumer in part.consumers:
                save(consumer)
                consumer.shutdown()
            consumers = self._partition_consumers(part.directory)
            for consumer in consumers:
                restore(consumer)
            part.set_consumers(consumers)

    def _config_changes(self, version: ConfigVersion) -> dict[str, Any]:
        """What applying ``version`` here changes (resolved keys), secrets left out: a version has their digests."""
        running = self.live_settings()
        live = AggregatorConfig.live_keys()
        changes = {k: v for k, v in version.settings.items() if k in live and running.get(k) != v}
        for key in [k for k in changes if k in SECRET_KEYS and is_digest(changes[k])]:
            log.warning("configuration version %d changed %s; a version holds a digest of it only: set it on this "
                        "replica too (its settings file, then SIGHUP)", version.version, key)
            del changes[key]
        return resolve(AggregatorConfig, changes)

    async def follow_config(self) -> ConfigVersion | None:
        """Cluster mode: apply the newest configuration version when it is newer than this replica's (another
        replica recorded it: a PUT, a rollback, a SIGHUP, a start); not versioned again. The version applied."""
        async with self._applying:
            latest = await asyncio.to_thread(self.versions.latest)
            if latest is None or latest.version <= self.config_version:
                return None
            changes = self._config_changes(latest)
            try:
                if changes:
                    new = load(AggregatorConfig, data=changes, env={}, base=self.config, validate=False)
                    await self._apply_settings(new, sorted(changes), who=latest.who, comment=latest.comment,
                                               role="", record=False)
            except ConfigError as e:  # e.g. auth turned on or off: needs a restart here
                log.error("configuration version %d not applied on this replica: %s", latest.version, e)
                return None
            finally:  # once applied (or refused: the next version is the next chance)
                self.config_version = latest.version
            if not changes:
                return latest
            log.info("configuration version %d (by %s on another replica) applied: %s", latest.version, latest.who,
                     ", ".join(sorted(changes)))
            return latest

    def _remote_config(self, version: int) -> None:
        """The alert store's listener (a thread): a configuration version was recorded somewhere."""
        if self._loop is not None and not self._stopped:
            future = asyncio.run_coroutine_threadsafe(self.follow_config(), self._loop)
            future.add_done_callback(_log_failure)

    async def _join_cluster_config(self) -> None:
        """At the start of a replica: the cluster's newest version applies (a replica restarting with an older
        file does not undo a change made through the API); the settings file only when there is none yet."""
        latest = await asyncio.to_thread(self.versions.latest)
        if latest is None:
            await asyncio.to_thread(self._record_start_version)
            return
        differs = sorted(self._config_changes(latest))
        await self.follow_config()
        if differs:
            log.warning("the settings file differs from the cluster's configuration version %d in %s: the version "
                        "applies (SIGHUP after changing the file, or PUT /api/v1/config, makes a new one)",
                        latest.version, ", ".join(differs))

    def _record_start_version(self) -> None:
        """Version the settings file's live settings at start when they differ from the newest version."""
        latest, version = self.versions.add_unless_latest(
            at=time.time_ns(), who="startup", comment="the settings at start", settings=self.live_settings())
        self.config_version = version.version
        if latest is version:
            return
        if latest is not None:
            log.warning("the settings file differs from configuration version %d in %s: the file applies, as "
                        "version %d (sentinel config rollback %d returns to the stored one)", latest.version,
                        ", ".join(sorted(version.diff)), version.version, latest.version)

    def _remote_alert(self, event: str, alert: Alert) -> None:
        """An alert another replica raised or changed: this one's manager follows it, its watchers see it."""
        self.alerts.remote_change(alert)
        self.hub.publish(event, alert.to_dict())

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.otlp is not None:
            await self.otlp.shutdown()  # first: it forwards what it holds to the listener below
        self.hub.close()  # live streams (SSE, gRPC Watch) end, so the listeners' shutdown does not wait for them
        if self.api is not None:
            self.api.streams.stop()
            self.api.realtime.stop()
        if self.grpc is not None:
            await self.grpc.shutdown()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.security_queue is not None:
            await self.security_queue.shutdown()
        await self.ingest.shutdown()
        if self.cluster is not None:
            await self.cluster.shutdown()  # partitions checkpointed and released for the other replicas
        await self.analysis.shutdown()  # after ingest: every committed batch is analysed and saved
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for sink in self.sinks:
            await sink.shutdown()  # what is not yet delivered stays in the outbox for the next start
        self.alert_store.close()
        log.info("aggregator stopped")


async def run(config: AggregatorConfig, reload_settings: Callable[[], AggregatorConfig] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully; on SIGHUP re-read the settings with
    ``reload_settings`` and apply the live ones (:meth:`Aggregator.apply_settings`)."""
    aggregator = Aggregator(config)
    # Import-time and constructed objects (~90,000) leave the collector's walks: a full collection over
    # them paused the analysis thread for ~130 ms (sentinel/gc_policy.py). Restored state is not frozen.
    log.info("start-up objects frozen out of garbage collection: %d", freeze_startup())
    reloader = (SettingsReloader(config, reload_settings, live_keys=AggregatorConfig.live_keys(),
                                 apply=aggregator.apply_settings) if reload_settings is not None else None)
    # A port in use, an unwritable data_dir: exit status 1 with the reason.
    return await run_until_signalled(aggregator, (OSError, sqlite3.Error),
                                     on_reload=reloader.reload if reloader is not None else None)


def _log_failure(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("following another replica's configuration failed", exc_info=future.exception())


def _copy(alerts: AlertManagerConfig) -> AlertManagerConfig:
    """The alert manager's own copy of its settings (it sets its public URL, the guard raises floors)."""
    return dataclasses.replace(alerts, min_confidence_by_type=dict(alerts.min_confidence_by_type))


def _sink_configs(config: AggregatorConfig) -> dict[str, AmqpSinkConfig | WebhookConfig]:
    """Every sink's settings by its outbox name (``amqp``, ``webhook:<name>``)."""
    out: dict[str, AmqpSinkConfig | WebhookConfig] = {}
    if config.amqp.url:
        out["amqp"] = config.amqp
    for w in parse_webhooks(config.webhooks):
        out[w.sink_name] = w
    return out


def _roles(config: AggregatorConfig, jwt: JwtVerifier | None) -> Roles:
    """The API's token table; ``jwt``: the running verifier, kept (with its JWKS cache) when its settings
    did not change."""
    bound = parse_sidecar_tokens(config.sidecar_tokens)
    ingest: list[tuple[str, str]] = [(f"tokens[{i}]", t) for i, t in enumerate(config.tokens)]
    ingest += [(f"sidecar_tokens.{p}[{i}]", t) for p, tokens in bound.items() for i, t in enumerate(tokens)]
    settings = config.jwt
    if jwt is None and settings.enabled:
        jwt = JwtVerifier(settings)
    return Roles(config.viewer_tokens, config.operator_tokens, config.admin_tokens, ingest, jwt=jwt)
