"""The sidecar process: builds the components from :class:`SidecarConfig`, starts and stops them.

Start order is receivers last, so nothing is accepted before it can be handled; shutdown runs the
other way round: stop accepting, seal what is pending, forward for up to ``shutdown_grace_s``,
then keep the rest in the spool (or count it dropped when there is none).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from sentinel.gc_policy import freeze_startup
from sentinel.malloc_policy import MMAP_THRESHOLD_BYTES, map_large_buffers
from sentinel.pricing import PriceBook
from sentinel.reload import SettingsReloader
from sentinel.service import run_until_signalled
from sentinel.tasks import TaskSupervisor
from sidecar.config import SidecarConfig
from sidecar.detectors.local import LocalDetectionConfig, LocalDetector
from sidecar.extract import ExtractConfig, Extractor
from sidecar.forward_queue import ForwardQueue
from sidecar.forwarder import Forwarder, ForwarderConfig
from sidecar.genai_metrics import GenAiMetricsReader
from sidecar.inflight import InFlightBudget
from sidecar.local_alerts import LocalAlerter
from sidecar.metrics import SidecarMetrics
from sidecar.ops_server import OpsServer
from sidecar.otlp_grpc import OtlpGrpcReceiver
from sidecar.otlp_http import OtlpHttpReceiver
from sidecar.passthrough import Passthrough
from sidecar.pipeline import SeqSource, TracePipeline
from sidecar.spool import Spool, SpoolLockedError
from sidecar.status import StatusSource
from sidecar.summaries import Summariser

__all__ = ["Sidecar", "run"]

log = logging.getLogger(__name__)


class Sidecar:
    """All of the sidecar in one object; ``await start()``, then ``await shutdown()`` (idempotent)."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.metrics = SidecarMetrics(registry)
        self.tasks = TaskSupervisor(self.metrics.registry, "sentinel_sidecar")
        self.sidecar_id = config.effective_sidecar_id()
        self.spool: Spool | None = None
        self.queue: ForwardQueue | None = None
        self.forwarder: Forwarder | None = None
        self.passthrough: Passthrough | None = None
        self.pipeline: TracePipeline | None = None
        self.local_alerts: LocalAlerter | None = None
        self.grpc: OtlpGrpcReceiver | None = None
        self.http: OtlpHttpReceiver | None = None
        self.ops: OpsServer | None = None
        self._ready = False
        self._stopped = False

    def _readiness(self) -> str:
        if self._stopped:
            return "shutting down"
        if not self._ready:
            return "starting"
        if self.queue is not None and (error := self.queue.spool_problem()):
            return f"spool cannot be written ({error})"
        return self.tasks.problem()

    async def start(self) -> None:
        c = self.config
        detector = LocalDetector(LocalDetectionConfig.from_mapping(c.detection))
        extractor = Extractor(ExtractConfig.from_settings(c, api_key_attributes=c.api_key_attributes))
        metrics_config = c.genai_metrics
        last_seq: int | None = None
        if c.spool.directory:
            self.spool = Spool(c.effective_spool)
            report = await asyncio.to_thread(self.spool.open)
            # A torn tail (a write cut by a crash) is one damaged record too.
            damaged = report.records_skipped + (1 if report.bytes_truncated else 0)
            if damaged:
                self.metrics.spool_corrupt_records.inc(damaged)
                log.warning("spool recovery skipped %d damaged records (torn tail: %d bytes)", damaged,
                            report.bytes_truncated)
            log.info("spool %s: %d batches (%d rows) waiting to be forwarded",
                     c.spool.directory, report.pending_records, report.pending_rows)
            last_seq = report.last_seq
            self.metrics.spool_bytes.set(self.spool.bytes_used)
            self.metrics.spool_records.set(self.spool.pending_records)
        self.queue = ForwardQueue(
            max_batches=c.queue_max_batches, spool=self.spool, metrics=self.metrics,
            enabled=bool(c.aggregator_url),
        )
        if c.aggregator_url:
            self.forwarder = Forwarder(
                ForwarderConfig(
                    aggregator_url=c.aggregator_url, token=c.token, ca_file=c.ca_file,
                    client_cert_file=c.client_cert_file, client_key_file=c.client_key_file,
                    timeout_s=c.forward_timeout_s, max_backoff_s=c.retry_max_backoff_s,
                ),
                self.queue, self.metrics, tasks=self.tasks,
            )
            await self.forwarder.start()
        else:
            log.warning("no aggregator_url: rows are detected locally and counted, not forwarded")
        if c.upstream.url:
            self.passthrough = Passthrough(c.upstream, self.metrics)
            await self.passthrough.start()
        summaries = c.summaries
        alerts_config = c.local_alerts
        if alerts_config.mode != "off":
            forwarder = self.forwarder
            self.local_alerts = LocalAlerter(
                alerts_config, sidecar_id=self.sidecar_id, registry=self.metrics.registry,
                # No aggregator: nobody else can page, so the sidecar is "offline" for good.
                offline=lambda: forwarder is None or forwarder.unreachable)
            await self.local_alerts.start()
        self.pipeline = TracePipeline(
            extractor=extractor, detector=detector, queue=self.queue, metrics=self.metrics,
            sidecar_id=self.sidecar_id, seq=SeqSource(last_seq), durable=c.mode == "store-and-forward",
            batch_max_rows=c.batch_max_rows, batch_timeout_s=c.batch_timeout_s,
            receive_queue_max_bytes=c.receive_queue_max_bytes,
            metrics_reader=GenAiMetricsReader(metrics_config, extractor.prices) if metrics_config.enabled else None,
            status=StatusSource(self.metrics),
            local_alerts=self.local_alerts,
            summariser=Summariser(summaries) if summaries.forward == "summaries" else None,
        )
        self.pipeline.start()
        if c.metrics_listen:
            self.ops = OpsServer(listen=c.metrics_listen, registry=self.metrics.registry, ready=self._readiness)
            await self.ops.start()
        budget = InFlightBudget(c.receive_max_bytes_in_flight)  # shared: the bound is over both receivers
        self.metrics.receive_bytes_in_flight.set_function(lambda: budget.used)
        if c.grpc_listen:
            self.grpc = OtlpGrpcReceiver(
                listen=c.grpc_listen, max_recv_bytes=c.grpc_max_recv_bytes, consumer=self.pipeline,
                metrics=self.metrics, passthrough=self.passthrough, budget=budget,
            )
            await self.grpc.start()
        if c.http_listen:
            self.http = OtlpHttpReceiver(
                listen=c.http_listen, max_body_bytes=c.http_max_body_bytes, consumer=self.pipeline,
                metrics=self.metrics, passthrough=self.passthrough, budget=budget,
            )
            await self.http.start()
        self._ready = True
        log.info("sidecar %s started in %s mode", self.sidecar_id, c.mode)

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.grpc is not None:
            await self.grpc.shutdown(grace_s=1.0)
        if self.http is not None:
            await self.http.shutdown()
        if self.pipeline is not None:
            await self.pipeline.shutdown()
        if self.forwarder is not None:
            drained = await self.forwarder.drain(self.config.shutdown_grace_s)
            if not drained:
                log.warning("shutdown: aggregator did not take everything within %.1fs; %s",
                            self.config.shutdown_grace_s,
                            "the rest stays in the spool" if self.spool else "the rest is dropped (no spool)")
            await self.forwarder.shutdown()
        if self.local_alerts is not None:
            await self.local_alerts.shutdown()
        if self.queue is not None:
            await self.queue.close()
        if self.passthrough is not None:
            await self.passthrough.flush(timeout_s=min(2.0, self.config.shutdown_grace_s))
            await self.passthrough.shutdown()
        if self.ops is not None:
            await self.ops.shutdown()
        log.info("sidecar stopped")

    def ports(self) -> dict[str, Any]:
        return {
            "grpc": self.grpc.port if self.grpc else None,
            "http": self.http.port if self.http else None,
            "metrics": self.ops.port if self.ops else None,
        }


class _ProcessSidecar(Sidecar):
    """The sidecar as its own process: once started, its start-up objects leave the collector's
    walks (:mod:`sentinel.gc_policy`: a full collection over them stalled exports for 65-135 ms)."""

    async def start(self) -> None:
        await super().start()
        PriceBook.load_table()
        log.info("start-up objects frozen out of garbage collection: %d", freeze_startup())


async def run(config: SidecarConfig, reload_settings: Callable[[], SidecarConfig] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully. SIGHUP re-reads the settings with
    ``reload_settings``: ``log_level`` applies, every other changed key is logged as needing a restart."""
    reloader = SettingsReloader(config, reload_settings) if reload_settings is not None else None
    # Before any export is taken: glibc's heap would otherwise keep the free space between the
    # buffers of past exports resident (sentinel/malloc_policy.py; issue 16, the sidecar's RSS).
    if map_large_buffers():
        log.info("allocations of %d bytes or more get their own mappings (glibc mmap threshold)",
                 MMAP_THRESHOLD_BYTES)
    # A port in use, a spool held by another sidecar: exit status 1 with the reason.
    return await run_until_signalled(_ProcessSidecar(config), (OSError, SpoolLockedError),
                                     on_reload=reloader.reload if reloader is not None else None)
