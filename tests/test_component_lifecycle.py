"""Every component with ``start``/``shutdown`` (:mod:`sentinel.service`'s contract): shut down
without being started, and started then shut down twice, each without an error or a thread left.

The process objects (sidecar, aggregator, webhook) and the parts they start: the ingest stage, the
analysis stage and its consumers, the gRPC AlertService and the alert sinks.
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
from aggregator.config import AggregatorConfig
from aggregator.ingest.config import IngestConfig
from aggregator.ingest.service import IngestService
from aggregator.metrics import AggregatorMetrics
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig
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
