"""The alert store's cost: SQLite (embedded) against PostgreSQL (``store_url``), measured in one run.

    .venv/bin/python -m loadtest.bench_alert_store [--alerts 300] [--repeats 600] [--pg-admin-url URL]

Drives a real :class:`aggregator.alerting.manager.AlertManager` on each store: ``--alerts`` new
alerts (one series each, notified at once: an insert and a notification with its outbox row), then
``--repeats`` detections folded into an open alert (an update each). Then two PostgreSQL stores on
one database, as two replicas: the time from replica 1's detection (``emit``) to replica 2's
listener having read the alert back (LISTEN/NOTIFY), p50 and p95. The PostgreSQL database is created for the
run and dropped after. Prints the figures and the ratio of PostgreSQL to SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
import uuid
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig
from aggregator.alerting.pg_store import PgAlertStore
from aggregator.alerting.sink import severity_at_least
from aggregator.alerting.store import AlertStore, SQLiteAlertStore
from aggregator.analysis.detectors.candidate import Candidate
from sentinel.alerts import Alert

S = 1_000_000_000
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


class _Sink:
    name = "bench"

    def wants(self, alert: Alert) -> bool:
        return severity_at_least(alert.severity, "low")

    def wake(self) -> None:
        pass

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def _cand(service: str, t: int) -> Candidate:
    return Candidate(anomaly_type="latency_spike", service=service, model="gpt-4o", detection_method="z_score",
                     confidence=0.95, metric="latency_ms", value=4500.0, baseline=1500.0, threshold=4000.0,
                     deviation_sigma=4.5, window_start=t, window_end=t + 60 * S, context={"trace_ids": ["aa" * 16]})


def _manager(store: AlertStore) -> AlertManager:
    cfg = AlertManagerConfig(group_wait_s=0, storm_max_alerts=10**9, group_by=["..."])
    m = AlertManager(cfg, store, AlertHub(), sinks=[_Sink()], registry=CollectorRegistry())
    m.restore()
    return m


def bench_store(store: AlertStore, alerts: int, repeats: int) -> dict[str, float]:
    m = _manager(store)
    t = time.time_ns()
    t0 = time.perf_counter()
    for i in range(alerts):
        m.emit([_cand(f"svc-{i}", t)])
    raised = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(repeats):
        m.emit([_cand("svc-0", t)])
    folded = time.perf_counter() - t0
    return {"raises_per_s": round(alerts / raised, 1), "updates_per_s": round(repeats / folded, 1),
            "raise_ms": round(1000 * raised / alerts, 3), "update_ms": round(1000 * folded / repeats, 3)}


def bench_notify(url: str, samples: int) -> dict[str, float]:
    """Replica 1 raises ``samples`` alerts one by one; replica 2's listener reads each back."""
    one, two = PgAlertStore(url, registry=CollectorRegistry()), PgAlertStore(url, registry=CollectorRegistry())
    one.open()
    two.open()
    seen: dict[str, float] = {}
    arrived = threading.Condition()

    def on_alert(event: str, alert: Alert) -> None:
        with arrived:
            seen.setdefault(alert.alert_id, time.perf_counter())
            arrived.notify_all()

    try:
        two.listen(on_alert, lambda: None)
        if not two.listening.wait(10):
            raise SystemExit("replica 2 never listened")
        m = _manager(one)
        delays: list[float] = []
        t = time.time_ns()
        for i in range(samples):
            started = time.perf_counter()
            m.emit([_cand(f"notify-{i}", t)])
            alert_id = next(a.alert_id for a in m._open.values() if a.service_name == f"notify-{i}")
            with arrived:
                if not arrived.wait_for(lambda a=alert_id: a in seen, 10):  # type: ignore[misc]
                    raise SystemExit(f"alert {alert_id} never reached replica 2")
            delays.append(seen[alert_id] - started)
        delays.sort()
        return {"samples": samples, "p50_ms": round(1000 * statistics.median(delays), 2),
                "p95_ms": round(1000 * delays[int(0.95 * (len(delays) - 1))], 2)}
    finally:
        one.close()
        two.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_alert_store", description=__doc__.split("\n")[0])
    p.add_argument("--alerts", type=int, default=300)
    p.add_argument("--repeats", type=int, default=600)
    p.add_argument("--notify-samples", type=int, default=100)
    p.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL, help="a database to CREATE DATABASE from")
    args = p.parse_args(argv)
    out: dict[str, Any] = {"load_average": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = SQLiteAlertStore(os.path.join(tmp, "alerts.db"))
        try:
            out["sqlite"] = bench_store(sqlite, args.alerts, args.repeats)
        finally:
            sqlite.close()
    name = f"sentinel_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(args.pg_admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}".encode())
    url = args.pg_admin_url.rsplit("/", 1)[0] + "/" + name
    try:
        pg = PgAlertStore(url, registry=CollectorRegistry())
        try:
            out["postgresql"] = bench_store(pg, args.alerts, args.repeats)
        finally:
            pg.close()
        out["notify_to_other_replica"] = bench_notify(url, args.notify_samples)
    finally:
        with psycopg.connect(args.pg_admin_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())
    out["ratio_pg_to_sqlite"] = {k: round(out["postgresql"][k] / out["sqlite"][k], 2)
                                 for k in ("raises_per_s", "updates_per_s")}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
