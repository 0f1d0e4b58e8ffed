"""Local alerts of an edge sidecar (sidecar/local_alerts.py) and their reconciliation at the aggregator."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from aggregator.alerting.edge_alerts import EdgeAlertReconciler
from aggregator.alerting.store import AlertQuery, SQLiteAlertStore
from sentinel import wire
from sentinel.config import ConfigError
from sentinel.edge_alerts import EdgeAlert
from sentinel.model import FeatureBatch, LocalAnomaly
from sidecar.local_alerts import LocalAlerter, LocalAlertsConfig
from tests.test_alert_manager import Clock, RecordingSink, cand, make

S = 1_000_000_000


def anomaly(metric: str = "error_rate", value: float = 0.6, *, method: str = "error_rate", sigma: float = math.nan,
            service: str = "chat", baseline: float = 0.01, t: int = 1_800_000_000 * S) -> LocalAnomaly:
    return LocalAnomaly(metric=metric, value=value, baseline=baseline, deviation=math.nan, threshold=0.2, sigma=sigma,
                        method=method, service=service, model="gpt-4o", operation="chat", trace_id="ab" * 16,
                        span_id="cd" * 8, time_unix_nano=t)


class Receiver:
    """An in-process HTTP receiver recording every POSTed JSON body (answers ``status``)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _post(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.json_response({}, status=self.status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._post)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def _wait(cond: Any, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kw, message", [
    ({"mode": "sometimes"}, "local_alerts.mode: 'sometimes' is not one of off, offline, always"),
    ({"min_severity": "urgent"}, "local_alerts.min_severity"),
    ({"webhook_url": "ftp://x"}, "local_alerts.webhook_url: 'ftp://x' must start with http"),
    ({"row_persistence": 0}, "local_alerts.row_persistence: must be at least 1"),
    ({"dedup_s": 0}, "local_alerts.dedup_s: must be greater than 0"),
])
def test_bad_settings_name_the_key(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        LocalAlertsConfig(**kw).validate()


async def test_offline_error_burst_pages_the_webhook_once_and_travels_to_the_aggregator() -> None:
    offline = [False]
    async with Receiver() as rx:
        alerter = LocalAlerter(LocalAlertsConfig(webhook_url=rx.url), sidecar_id="edge-1",
                               offline=lambda: offline[0], registry=CollectorRegistry())
        await alerter.start()
        assert alerter.observe([anomaly()]) == []  # aggregator reachable: it pages, not the edge
        offline[0] = True
        [raised] = alerter.observe([anomaly()])
        assert alerter.observe([anomaly()]) == []  # a repeat within local_alerts.dedup_s: counted, not paged
        await _wait(lambda: rx.bodies)
        await alerter.shutdown()
    [doc] = rx.bodies
    # The aggregator's alert document: its fields, marked as raised at the edge.
    assert doc["alert_id"] == raised.alert_id and doc["anomaly_type"] == "error_burst"
    assert doc["severity"] == "critical"  # an error rate of 60 %: the aggregator's own rule
    assert doc["details"]["metric"] == "error_rate" and doc["details"]["value"] == 0.6
    assert doc["context"]["raised_at_edge"] == {"sidecar": "edge-1", "alert_id": raised.alert_id, "offline": True}
    assert doc["labels"]["raised_at_edge"] == "true" and doc["service_name"] == "chat"
    [record] = alerter.take()
    assert record.alert_id == raised.alert_id and record.paged and record.sinks == ["webhook"]
    assert alerter.take() == []


async def test_single_call_anomalies_need_persistence_and_severity() -> None:
    alerter = LocalAlerter(LocalAlertsConfig(mode="always"), sidecar_id="e", offline=lambda: False,
                           registry=CollectorRegistry())
    spike = anomaly("latency_ms", 9000.0, method="zscore", sigma=12.0)
    assert alerter.observe([spike]) == [] and alerter.observe([spike]) == []
    [a] = alerter.observe([spike])  # the third of the series within the window
    assert a.severity == "high" and a.anomaly_type == "latency_spike" and not a.paged and a.delivery == "none"
    mild = anomaly("latency_ms", 2000.0, method="zscore", sigma=3.5, service="other", baseline=1500.0)
    assert all(alerter.observe([mild]) == [] for _ in range(5))  # medium: below local_alerts.min_severity


async def test_every_sink_failing_is_reported_so_the_aggregator_pages() -> None:
    async with Receiver(status=500) as rx:
        alerter = LocalAlerter(LocalAlertsConfig(webhook_url=rx.url, attempts=2), sidecar_id="e",
                               offline=lambda: True, registry=CollectorRegistry())
        await alerter.start()
        [a] = alerter.observe([anomaly()])
        await _wait(lambda: len(rx.bodies) == 2 and len(alerter._pending) == 2)
        await alerter.shutdown()
    first, failed = alerter.take()
    assert first.paged and first.delivery == "pending"
    assert failed.alert_id == a.alert_id and not failed.paged and failed.delivery == "failed"


def test_edge_alerts_round_trip_the_wire_and_are_optional() -> None:
    e = EdgeAlert(alert_id="e1", anomaly_type="error_burst", severity="critical", service="chat", model="m",
                  operation="chat", metric="error_rate", value=0.6, baseline=0.01, threshold=0.2, sigma=math.nan,
                  method="error_rate", time_unix_nano=5, raised_unix_nano=6, paged=True, delivery="pending",
                  sinks=["webhook"])
    batch = FeatureBatch.from_rows([])
    plain = wire.encode(batch, sidecar="s", seq=1, created_unix_nano=0)
    assert b"edge_alerts" not in plain and wire.decode(plain).edge_alerts == []
    [back] = wire.decode(wire.encode(batch, sidecar="s", seq=1, edge_alerts=[e])).edge_alerts
    assert back.to_wire() == e.to_wire()


@pytest.mark.parametrize("record, message", [
    ({"alert_id": ""}, "edge_alerts\\[0\\] is invalid: alert_id must be a non-empty string"),
    ({"delivery": "maybe"}, "delivery must be one of"),
    ({"count": 0}, "count must be at least 1"),
    ({"paged": "yes"}, "paged must be true or false"),
])
def test_bad_edge_alerts_are_refused_naming_the_field(record: dict[str, Any], message: str) -> None:
    import msgpack

    good = EdgeAlert(alert_id="e1", anomaly_type="error_burst", severity="high", service=None, model=None,
                     operation=None, metric="error_rate", value=0.5, baseline=0.0, threshold=0.2, sigma=math.nan,
                     method="error_rate", time_unix_nano=1, raised_unix_nano=1).to_wire()
    body = msgpack.unpackb(wire.encode(FeatureBatch.from_rows([]), sidecar="s", seq=1))
    body["edge_alerts"] = [{**good, **record}]
    with pytest.raises(wire.WireFormatError, match=message):
        wire.decode(msgpack.packb(body))


# --- reconciliation at the aggregator -------------------------------------------------------------


def edge(alert_id: str = "edge-1", *, paged: bool = True, delivery: str = "delivered", t: int = 0) -> EdgeAlert:
    return EdgeAlert(alert_id=alert_id, anomaly_type="error_burst", severity="critical", service="chat",
                     model="gpt-4o", operation="chat", metric="error_rate", value=0.6, baseline=0.01, threshold=0.2,
                     sigma=math.nan, method="error_rate", time_unix_nano=t, raised_unix_nano=t, paged=paged,
                     delivery=delivery, sinks=["webhook"] if paged else [])


def batch_with(edges: list[EdgeAlert]) -> wire.WireBatch:
    return wire.WireBatch(sidecar="edge-sc", seq=1, batch=FeatureBatch.from_rows([]), edge_alerts=edges)


def confirmed(t: int) -> Any:
    """The candidate the confirmer makes of the anomaly the edge alert was raised on."""
    return cand("error_burst", metric="error_rate", value=0.6, baseline=0.01, threshold=0.01, sigma=math.nan,
                t=t, operation="chat", sidecar="edge-sc")


def test_a_paged_edge_alert_is_shown_once_and_never_paged_again(store: SQLiteAlertStore) -> None:
    clock, sink = Clock(), RecordingSink()
    m = make(store, clock, [sink])
    rec = EdgeAlertReconciler(m, late_after_s=300, registry=CollectorRegistry())
    rec.consume(batch_with([edge(t=clock.now - 30 * S)]), arrival_ns=clock.now)
    m.emit([confirmed(clock.now - 30 * S)])  # its anomaly, confirmed from the same batch: folds in
    rec.consume(batch_with([edge(t=clock.now - 30 * S)]), arrival_ns=clock.now)  # the batch replayed again
    m.emit([cand("error_burst", metric="error_rate", value=0.5, sigma=9.0, window="60s")])  # a windowed detector
    for _ in range(3):
        clock.advance(30)
        m.tick()
    [a] = store.query(AlertQuery(limit=10))[0]
    mark = a.context["raised_at_edge"]
    assert mark["alert_id"] == "edge-1" and mark["sidecar"] == "edge-sc" and mark["paged"] is True
    assert a.notifications == 0 and store.outbox_pending("rec", 10) == [] and sink.wakes == 0
    assert a.members[0].count >= 2
    assert rec.outcomes.labels("raised")._value.get() == 1 and rec.outcomes.labels("duplicate")._value.get() == 1


def test_an_edge_alert_cancels_the_aggregators_pending_page_of_the_same_incident(store: SQLiteAlertStore) -> None:
    clock, sink = Clock(), RecordingSink()
    m = make(store, clock, [sink])
    m.emit([confirmed(clock.now)])  # the aggregator's own alert, in group_wait
    EdgeAlertReconciler(m, late_after_s=300).consume(batch_with([edge(t=clock.now)]), arrival_ns=clock.now)
    clock.advance(15)
    m.tick()
    [a] = store.query(AlertQuery(limit=10))[0]
    assert a.context["raised_at_edge"]["alert_id"] == "edge-1" and store.outbox_pending("rec", 10) == []


def test_unpaged_edge_alert_pages_at_the_aggregator_unless_late(store: SQLiteAlertStore) -> None:
    clock, sink = Clock(), RecordingSink()
    m = make(store, clock, [sink])
    rec = EdgeAlertReconciler(m, late_after_s=300)
    rec.consume(batch_with([edge("a", paged=False, delivery="none", t=clock.now)]), arrival_ns=clock.now)
    other = edge("b", paged=False, delivery="none", t=clock.now - 3600 * S)
    other.service = "search"
    rec.consume(batch_with([other]), arrival_ns=clock.now)
    clock.advance(11)
    m.tick()
    pending = store.outbox_pending("rec", 10)
    assert len(pending) == 1  # the fresh one (nobody was paged); the hour-old replay is shown, not paged
    alerts = {a.service_name: a for a in store.query(AlertQuery(limit=10))[0]}
    assert pending[0].alert_id == alerts["chat"].alert_id and alerts["search"].context["raised_at_edge"]["late"]


def test_failed_edge_delivery_re_arms_the_aggregators_page(store: SQLiteAlertStore) -> None:
    clock, sink = Clock(), RecordingSink()
    m = make(store, clock, [sink])
    rec = EdgeAlertReconciler(m, late_after_s=300)
    rec.consume(batch_with([edge(delivery="pending", t=clock.now)]), arrival_ns=clock.now)
    rec.consume(batch_with([edge(paged=False, delivery="failed", t=clock.now)]), arrival_ns=clock.now)
    clock.advance(11)
    m.tick()
    assert len(store.outbox_pending("rec", 10)) == 1
    assert rec.outcomes.labels("updated")._value.get() == 1
