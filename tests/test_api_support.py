"""Shared by the tests/test_api_*.py modules: the API on a real listener, alerts and batches to feed it.

No tests here. The application is the aggregator's API wiring (add_api_routes) with the real alert
manager, store, hub, series and baselines, plus the existing routes it sits next to (ops,
baselines, candidates) and a stand-in for /v1/ingest.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from prometheus_client import CollectorRegistry

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig
from aggregator.alerting.store import SQLiteAlertStore
from aggregator.analysis.baselines.consumer import BaselineConsumer
from aggregator.analysis.baselines.store import BaselineConfig
from aggregator.analysis.candidates import CandidateLog
from aggregator.analysis.quality.consumer import QualityConfig, QualityConsumer
from aggregator.analysis.security.consumer import SecurityConfig, SecurityConsumer
from aggregator.analysis.series import SeriesConsumer
from aggregator.api import Api, Roles, add_api_routes
from aggregator.api.quality_api import QualityApi
from aggregator.api.security_api import SecurityApi
from aggregator.cluster.api import ClusterApi
from sentinel.alerts import Alert, AlertDetails
from sentinel.model import COLUMNS, FeatureBatch
from sentinel.service import add_ops_routes
from sentinel.wire import WireBatch

VIEWER, OPERATOR, ADMIN, INGEST = "viewer-token-1", "operator-token-1", "admin-token-1", "ingest-token-1"
S = 1_000_000_000


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Harness:
    url: str
    app: web.Application
    runner: web.AppRunner
    api: Api
    manager: AlertManager
    hub: AlertHub
    store: SQLiteAlertStore
    series: SeriesConsumer
    baselines: BaselineConsumer
    quality: QualityConsumer | None = None
    security: SecurityConsumer | None = None

    def client(self, token: str | None = VIEWER) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers=auth(token) if token else None, timeout=5.0)


@contextlib.asynccontextmanager
async def start_api(tmp_path: Path, *, tokens: bool = True, keepalive_s: float = 0.2,
                    shutdown_timeout_s: float = 2.0) -> AsyncIterator[Harness]:
    store = SQLiteAlertStore(str(tmp_path / "alerts.db"))
    hub = AlertHub()
    manager = AlertManager(AlertManagerConfig(), store, hub, registry=CollectorRegistry())
    manager.restore()
    series = SeriesConsumer(tmp_path)
    baselines = BaselineConsumer(BaselineConfig(), tmp_path)
    roles = Roles([VIEWER], [OPERATOR], [ADMIN], [INGEST]) if tokens else Roles()
    app = web.Application()

    async def ingest(request: web.Request) -> web.Response:  # the real one checks the ingest tokens itself
        return web.json_response({"status": "accepted", "rows": 0, "late_rows": 0})

    app.router.add_post("/v1/ingest", ingest)
    app.router.add_get("/api/v1/baselines", baselines.handle)
    app.router.add_get("/api/v1/candidates", CandidateLog(registry=CollectorRegistry()).handle)
    quality = QualityConsumer(QualityConfig(), tmp_path)
    QualityApi(quality, time.time_ns).add_routes(app)
    security = SecurityConsumer(SecurityConfig(), tmp_path, on_candidates=manager.emit)
    SecurityApi(security).add_routes(app)
    ClusterApi(None).add_routes(app)  # a single process: 404
    add_ops_routes(app, CollectorRegistry(), lambda: "")
    api = add_api_routes(app, actions=manager, series=series, baselines=baselines, roles=roles,
                         keepalive_s=keepalive_s)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Harness(f"http://127.0.0.1:{port}", app, runner, api, manager, hub, store, series, baselines, quality,
                      security)
    finally:
        hub.close()
        await runner.cleanup()
        store.close()


def make_alert(*, severity: str = "high", service: str | None = "chat", model: str | None = "gpt-4o",
               anomaly_type: str = "latency_spike", status: str = "open", ts: int | None = None,
               metric: str = "latency_ms") -> Alert:
    ts = ts if ts is not None else time.time_ns()
    return Alert(
        alert_id=str(uuid.uuid4()), timestamp=ts, severity=severity, anomaly_type=anomaly_type,
        service_name=service, model=model, detection_method="zscore", confidence=0.9,
        details=AlertDetails(metric, 900.0, 300.0, 600.0, 4.2), context={"trace_ids": ["t1"]},
        summary=f"{anomaly_type} on {service}", fingerprint=uuid.uuid4().hex[:16], status=status,
        first_seen=ts, last_seen=ts, resolved_at=ts if status == "resolved" else None,
        labels={"service_name": service or "", "severity": severity, "anomaly_type": anomaly_type},
    )


def insert(h: Harness, *alerts: Alert) -> None:
    for a in alerts:
        h.store.insert(a, [])


def batch(rows: Sequence[dict[str, Any]], *, sidecar: str = "sc", seq: int = 1) -> WireBatch:
    """A wire batch from partial rows (missing columns None, is_error 0)."""
    full = []
    for r in rows:
        d: dict[str, Any] = dict.fromkeys(COLUMNS)
        d["is_error"] = 0
        d.update(r)
        full.append(tuple(d[c] for c in COLUMNS))
    return WireBatch(sidecar, seq, FeatureBatch.from_rows(full))


def traffic(service: str, start_ns: int, n: int, *, every_s: float = 1.0, latency_ms: float = 100.0,
            error_every: int = 0, model: str = "gpt-4o") -> list[dict[str, Any]]:
    """``n`` calls of ``service``, ``every_s`` apart, latency rising by 1 ms per call."""
    return [{"time_unix_nano": start_ns + int(i * every_s * S), "service": service, "request_model": model,
             "operation": "chat", "latency_ms": latency_ms + i, "input_tokens": 100.0, "output_tokens": 50.0,
             "cost_usd": 0.002, "is_error": int(bool(error_every) and i % error_every == 0)} for i in range(n)]
