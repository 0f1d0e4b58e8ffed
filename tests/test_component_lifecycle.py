"""Every component with ``start``/``shutdown`` (:mod:`sentinel.service`'s contract): shut down
without being started, and started then shut down twice, each without an error or a thread left.

The process objects (sidecar, aggregator, webhook) and the parts they start: the sidecar's receivers,
pipeline, forwarder, pass-through, local alerter and ops server; the aggregator's ingest stage, security
events queue, analysis stage and its consumers, the cluster coordinator, the gRPC AlertService and the alert sinks.
(``tests/test_import_graph.py``-style completeness: :func:`test_every_component_is_here` finds every
class of the packages with both ``start`` and ``shutdown`` and wants it here.)
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from prometheus_client import CollectorRegistry

from aggregator.alerting.amqp_sink import AmqpSink, AmqpSinkConfig
from aggregator.alerting.grpc_service import AlertGrpcServer
from aggregator.alerting.hub import AlertHub
from aggregator.alerting.store import SQLiteAlertStore
from aggregator.alerting.webhook_sink import WebhookConfig, WebhookSink
from aggregator.analysis.pipeline import Analysis
from aggregator.app import Aggregator
from aggregator.cluster.config import ClusterConfig
from aggregator.cluster.owner import Coordinator
from aggregator.config import AggregatorConfig
from aggregator.ingest.config import IngestConfig
from aggregator.ingest.security_amqp import SecurityEventConsumer
from aggregator.ingest.service import IngestService
from aggregator.metrics import AggregatorMetrics
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
from sidecar.detectors import LocalDetectionConfig, LocalDetector
from sidecar.extract import ExtractConfig, Extractor
from sidecar.forward_queue import ForwardQueue
from sidecar.forwarder import Forwarder, ForwarderConfig
from sidecar.local_alerts import LocalAlerter, LocalAlertsConfig
from sidecar.metrics import SidecarMetrics
from sidecar.ops_server import OpsServer
from sidecar.otlp_grpc import OtlpGrpcReceiver
from sidecar.otlp_http import OtlpHttpReceiver
from sidecar.passthrough import Passthrough, PassthroughConfig
from sidecar.pipeline import ConsumeResult, SeqSource, TracePipeline
from webhook_injector.metrics import WebhookMetrics
from webhook_injector.server import WebhookServer
from webhook_injector.settings import InjectorSettings

#: Nothing listens here: a sink started against it retries in the background until shut down.
NOWHERE = "127.0.0.1:9"


def _aggregator_config(tmp_path: Path) -> AggregatorConfig:
    return AggregatorConfig(listen="127.0.0.1:0", grpc_listen="127.0.0.1:0", data_dir=str(tmp_path / "data"))


def _store(tmp_path: Path) -> SQLiteAlertStore:
    store = SQLiteAlertStore(str(tmp_path / "alerts.db"))
    store.open()
    return store


def _webhook(tmp_path: Path) -> WebhookServer:
    cert = trustme.CA().issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return WebhookServer(InjectorSettings(listen="127.0.0.1:0", tls_cert=str(cert_file), tls_key=str(key_file)),
                         metrics=WebhookMetrics(CollectorRegistry()))


def _analysis(tmp_path: Path) -> Analysis:
    agg = Aggregator(_aggregator_config(tmp_path), registry=CollectorRegistry())
    return Analysis(agg.analysis.consumers[:-1], on_candidates=lambda found: None)  # the consumers, not alerts


class _NoTraces:
    async def consume_traces(self, request: Any, size: int = 0) -> ConsumeResult:
        return ConsumeResult()

    async def consume_metrics(self, request: Any, size: int = 0) -> ConsumeResult:
        return ConsumeResult()


def _queue(metrics: SidecarMetrics) -> ForwardQueue:
    return ForwardQueue(max_batches=4, spool=None, metrics=metrics)


class _Pipeline(TracePipeline):
    """The trace pipeline starts synchronously (from the sidecar's start, on its loop)."""

    async def start(self) -> None:  # type: ignore[override]
        super().start()


def _pipeline(tmp_path: Path) -> _Pipeline:
    metrics = SidecarMetrics(CollectorRegistry())
    return _Pipeline(extractor=Extractor(ExtractConfig()), detector=LocalDetector(LocalDetectionConfig()),
                     queue=_queue(metrics), metrics=metrics, sidecar_id="s", seq=SeqSource(), durable=False,
                     batch_max_rows=10, batch_timeout_s=0.05)


def _receiver_args() -> dict[str, Any]:
    return {"listen": "127.0.0.1:0", "consumer": _NoTraces(), "metrics": SidecarMetrics(CollectorRegistry())}


def _forwarder(tmp_path: Path) -> Forwarder:
    metrics = SidecarMetrics(CollectorRegistry())
    return Forwarder(ForwarderConfig(aggregator_url=f"http://{NOWHERE}"), _queue(metrics), metrics)


COMPONENTS: dict[str, Callable[[Path], Any]] = {
    "sidecar": lambda tmp: Sidecar(SidecarConfig(grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                                                 metrics_listen="127.0.0.1:0"), registry=CollectorRegistry()),
    "aggregator": lambda tmp: Aggregator(_aggregator_config(tmp), registry=CollectorRegistry()),
    "webhook": _webhook,
    "ingest": lambda tmp: IngestService(IngestConfig.from_settings(_aggregator_config(tmp)),
                                        AggregatorMetrics(CollectorRegistry())),
    "analysis": _analysis,
    "alert-grpc": lambda tmp: AlertGrpcServer("127.0.0.1:0", AlertHub(), _store(tmp), registry=CollectorRegistry()),
    "amqp-sink": lambda tmp: AmqpSink(AmqpSinkConfig(url=f"amqp://guest:guest@{NOWHERE}/"), _store(tmp)),
    "webhook-sink": lambda tmp: WebhookSink(WebhookConfig(name="hook", url=f"http://{NOWHERE}/hook"), _store(tmp)),
    "security-events-amqp": lambda tmp: SecurityEventConsumer(
        url=f"amqp://guest:guest@{NOWHERE}/", exchange="x", queue="q", binding_key="#", submit=lambda events: None),
    "cluster-coordinator": lambda tmp: Coordinator(
        ClusterConfig(amqp_url=f"amqp://guest:guest@{NOWHERE}/", store_url=f"postgresql://sentinel@{NOWHERE}/x"),
        tmp / "data", lambda directory: [], lambda found: None, registry=CollectorRegistry()),
    "sidecar-grpc": lambda tmp: OtlpGrpcReceiver(max_recv_bytes=1 << 20, **_receiver_args()),
    "sidecar-http": lambda tmp: OtlpHttpReceiver(max_body_bytes=1 << 20, **_receiver_args()),
    "sidecar-pipeline": _pipeline,
    "sidecar-forwarder": _forwarder,
    "sidecar-passthrough": lambda tmp: Passthrough(PassthroughConfig(url=f"http://{NOWHERE}"),
                                                   SidecarMetrics(CollectorRegistry())),
    "sidecar-local-alerts": lambda tmp: LocalAlerter(LocalAlertsConfig(webhook_url=f"http://{NOWHERE}/hook"),
                                                     sidecar_id="s", offline=lambda: True,
                                                     registry=CollectorRegistry()),
    "sidecar-ops": lambda tmp: OpsServer(listen="127.0.0.1:0", registry=CollectorRegistry(), ready=lambda: ""),
}


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


@pytest.mark.parametrize("name", sorted(COMPONENTS))
async def test_shutdown_without_start(name: str, tmp_path: Path) -> None:
    component = COMPONENTS[name](tmp_path)
    shutdown: Callable[[], Awaitable[None]] = component.shutdown
    await shutdown()
    await shutdown()


@pytest.mark.parametrize("name", sorted(COMPONENTS))
async def test_start_then_shutdown_twice(name: str, tmp_path: Path) -> None:
    before = _threads()
    component = COMPONENTS[name](tmp_path)
    await component.start()
    await component.shutdown()
    await component.shutdown()  # idempotent
    # The event loop's own executor (asyncio.to_thread) is the loop's, closed with it.
    left = {t for t in _threads() - before if t.is_alive() and not t.daemon and not t.name.startswith("asyncio_")}
    for t in left:  # executors' workers end once their queue is drained: bounded wait
        t.join(timeout=10)
    assert not {t.name for t in left if t.is_alive()}, "threads left running"


def test_every_component_is_here(tmp_path: Path) -> None:
    """Every class of the runtime packages with async ``start`` and ``shutdown`` has a row above (or is
    a base or a sub-class of one that has: the process sidecar, the sink contract)."""
    import importlib
    import inspect
    import pkgutil

    covered = {type(make(tmp_path)) for make in COMPONENTS.values()}
    found: set[type] = set()
    for package in ("sidecar", "aggregator", "webhook_injector"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
            for _, cls in inspect.getmembers(importlib.import_module(info.name), inspect.isclass):
                if cls.__module__ != info.name or getattr(cls, "_is_protocol", False):
                    continue  # imported here, or a contract (sentinel.service, the sink protocol)
                if all(inspect.iscoroutinefunction(getattr(cls, m, None)) for m in ("start", "shutdown")):
                    found.add(cls)
    missing = {f"{c.__module__}.{c.__qualname__}" for c in found
               if not any(issubclass(k, c) or issubclass(c, k) for k in covered)}
    assert missing == set(), "components without a lifecycle row in COMPONENTS"
