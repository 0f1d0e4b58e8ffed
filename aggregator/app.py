"""The aggregator process: builds its components from :class:`AggregatorConfig`, starts and stops them.

One HTTP listener (``listen``, default ``0.0.0.0:9090``) serves ``POST /v1/ingest``,
``GET /api/v1/baselines``, ``GET /api/v1/candidates``, ``/metrics``, ``/healthz`` and ``/readyz``.
Start opens the journal and restores baselines and detector state before the listener, so
nothing is accepted before it can be stored;
shutdown stops the listener first (in-flight requests get up to ``shutdown_grace_s`` to finish),
commits what is queued, lets analysis finish and saves its state, and closes the journal.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3

from aiohttp import web
from prometheus_client import CollectorRegistry

from aggregator.analysis import Analysis, BatchConsumer
from aggregator.baseline_service import BaselineService
from aggregator.candidates import CandidateLog
from aggregator.config import AggregatorConfig
from aggregator.confirm import LocalAnomalyConfirmer
from aggregator.detector_service import DetectorService
from aggregator.forest_service import ForestService
from aggregator.ingest import IngestService
from aggregator.metrics import AggregatorMetrics
from sentinel.service import add_ops_routes, run_until_signalled
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig

__all__ = ["Aggregator", "run"]

log = logging.getLogger(__name__)


class Aggregator:
    """All of the aggregator in one object; ``await start()``, then ``await shutdown()`` (idempotent)."""

    def __init__(self, config: AggregatorConfig, *, registry: CollectorRegistry | None = None) -> None:
        config.validate()
        self.config = config
        self.metrics = AggregatorMetrics(registry)
        self.baselines = BaselineService(config.baseline_config(), config.data_dir)
        self.candidates = CandidateLog(registry=self.metrics.registry)
        emit = self.metrics.observing(self.candidates.emit)  # + detection latency of every candidate
        # Before the baselines: forwarded anomalies are judged against the baselines as they were
        # before their own batch, so a spike does not raise the p99 it is compared with.
        self.confirmer = LocalAnomalyConfirmer(config.confirm_config(), self.baselines.store, emit,
                                               outcome=self.metrics.count_local_anomaly)
        self.detectors = DetectorService(config.detectors, config.data_dir, emit)
        consumers: list[BatchConsumer] = [self.confirmer, self.baselines, self.detectors]
        forest = config.forest_config()
        self.forest = (ForestService(forest, config.data_dir, emit, on_fit=self.metrics.model_train_seconds.observe)
                       if forest else None)
        if self.forest is not None:
            consumers.append(self.forest)
            self.metrics.watch_forest(self.forest)
        self.analysis = Analysis(consumers, save_interval_s=config.save_interval_s)
        self.ingest = IngestService(config, self.metrics, analysis=self.analysis)
        self._runner: web.AppRunner | None = None
        self.otlp: Sidecar | None = None
        self.port = 0
        self._ready = False
        self._stopped = False

    @property
    def url(self) -> str:
        host = self.config.listen.rpartition(":")[0]
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        return f"http://{host}:{self.port}"

    def _readiness(self) -> str:
        if self._stopped:
            return "shutting down"
        if not self._ready:
            return "starting"
        return ""

    async def start(self) -> None:
        c = self.config
        if not c.tokens:
            log.warning("no tokens configured: /v1/ingest accepts batches from anyone who can reach it")
        await self.ingest.start()  # creates data_dir
        await asyncio.to_thread(self.baselines.restore)
        await asyncio.to_thread(self.detectors.restore)
        await self.analysis.start()
        # Bodies beyond the limit are refused by aiohttp while reading; the handler turns that into 413.
        app = web.Application(client_max_size=c.max_body_bytes)
        app.router.add_post("/v1/ingest", self.ingest.handle)
        app.router.add_get("/api/v1/baselines", self.baselines.handle)
        app.router.add_get("/api/v1/candidates", self.candidates.handle)
        add_ops_routes(app, self.metrics.registry, self._readiness)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=c.shutdown_grace_s)
        await runner.setup()
        host, _, port = c.listen.rpartition(":")
        site = web.TCPSite(runner, host, int(port))
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        if c.otlp_grpc_listen or c.otlp_http_listen:
            # Standalone topology: an embedded sidecar (its receivers, extraction and local detection)
            # forwarding over loopback to this aggregator's own ingest, so de-duplication, the
            # journal and every detector see OTLP-fed rows exactly as they see a sidecar's.
            self.otlp = Sidecar(
                SidecarConfig(
                    grpc_listen=c.otlp_grpc_listen, http_listen=c.otlp_http_listen, metrics_listen="",
                    aggregator_url=self.url, token=c.tokens[0] if c.tokens else "",
                    sidecar_id=f"{socket.gethostname()}/aggregator-otlp", shutdown_grace_s=c.shutdown_grace_s,
                ),
                registry=self.metrics.registry,
            )
            await self.otlp.start()
        self._ready = True
        log.info("aggregator listening on %s:%d", host, self.port)

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.otlp is not None:
            await self.otlp.shutdown()  # first: it forwards what it holds to the listener below
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.ingest.shutdown()
        await self.analysis.shutdown()  # after ingest: every committed batch is analysed and saved
        log.info("aggregator stopped")


async def run(config: AggregatorConfig) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    # A port in use, an unwritable data_dir: exit status 1 with the reason.
    return await run_until_signalled(Aggregator(config), (OSError, sqlite3.Error))
