"""The PostgreSQL alert store (``store_url``) as the store of a cluster, on the machine's PostgreSQL
(a database of its own per test; skipped when PostgreSQL is unreachable): the side tables on both
backends, the schema under concurrent opens, one alert and one delivery across two replicas, the
outbox lease of a dead replica, and LISTEN/NOTIFY feeding the other replica's manager and hub.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aggregator.alerting.audit import AuditEntry, AuditLog
from aggregator.alerting.feedback import Feedback, FeedbackLog
from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig
from aggregator.alerting.pg_store import PgAlertStore, redact_url
from aggregator.alerting.precision_guard import PrecisionGuard, PrecisionGuardConfig
from aggregator.alerting.silences import Matcher, Silence
from aggregator.alerting.store import AlertQuery, SQLiteAlertStore, StoreError
from aggregator.config import AggregatorConfig
from aggregator.config_versions import ConfigVersions
from sentinel import wire
from sentinel.alerts import Alert
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch
from tests.conftest import AggregatorFactory, free_port, open_pg_store, wait_for
from tests.test_alert_manager import T0, Clock, RecordingSink, all_alerts, cand
from tests.test_event_time import MSGPACK, _rows

S = 1_000_000_000
AnyStore = SQLiteAlertStore | PgAlertStore


def manager(store: AnyStore, clock: Clock, hub: AlertHub | None = None, **overrides: Any) -> AlertManager:
    m = AlertManager(AlertManagerConfig(public_url="http://sentinel.example", **overrides), store, hub or AlertHub(),
                     sinks=[RecordingSink()], registry=CollectorRegistry(), clock=clock)
    m.restore()
    return m


# --- the side tables, on both backends ------------------------------------------------------------


def test_side_tables_on_both_backends(any_store: AnyStore) -> None:
    audit = AuditLog(any_store)
    first = audit.append(AuditEntry(at=T0, who="admin_tokens[0]", role="admin", action="silence.create", target="s1"))
    second = audit.append(AuditEntry(at=T0 + S, who="ops", role="operator", action="alert.acknowledge",
                                     detail={"by": "alice"}))
    assert second.id > first.id > 0
    entries, total = audit.query(action="alert.acknowledge")
    assert total == 1 and entries[0].detail == {"by": "alice"}
    feedback = FeedbackLog(any_store)
    feedback.add(Feedback("a1", "latency_spike", T0, "false_positive", "bob", T0))
    feedback.add(Feedback("a1", "latency_spike", T0, "true_positive", "bob", T0 + S))  # changed their mind
    feedback.add(Feedback("a2", "latency_spike", T0, "false_positive", "eve", T0))
    assert [f.verdict for f in feedback.of_alert("a1")] == ["false_positive", "true_positive"]
    assert feedback.precision_by_type()["latency_spike"]["precision"] == 0.5
    versions = ConfigVersions(any_store)
    v1 = versions.add(at=T0, who="start", comment="", settings={"alert_min_confidence": 0.5}, changes={})
    v2 = versions.add(at=T0 + S, who="api", comment="tighter", settings={"alert_min_confidence": 0.7},
                      changes={"alert_min_confidence": {"from": 0.5, "to": 0.7}})
    latest = versions.latest()
    assert v2.version > v1.version and latest is not None and latest.version == v2.version
    assert [v.version for v in versions.history()] == [v2.version, v1.version]
    # Confidence floors: raised twice (an upsert on both dialects), then reset.
    for i in range(4):
        feedback.add(Feedback(f"b{i}", "error_burst", T0, "false_positive", "bob", T0))
    applied: list[dict[str, float]] = []
    guard = PrecisionGuard(PrecisionGuardConfig(min_precision=0.5, min_verdicts=2), feedback, audit,
                           base_floor=lambda t: 0.5, apply=applied.append, clock=lambda: T0 + 2 * S)
    assert guard.observe("error_burst") is not None
    assert guard.floors() == {"error_burst": 0.55}
    assert guard.reset("error_burst") is not None and guard.floors() == {}


def test_append_only_tables_refuse_changes_in_postgresql(pg_url: str) -> None:
    store = open_pg_store(pg_url)
    try:
        audit = AuditLog(store)
        audit.append(AuditEntry(at=T0, who="w", role="admin", action="x"))
        versions = ConfigVersions(store)
        versions.add(at=T0, who="w", comment="", settings={}, changes={})
        for sql in ("UPDATE audit SET who = 'mallory'", "DELETE FROM audit", "DELETE FROM config_versions"):
            with pytest.raises(StoreError, match="append-only"), audit.connection() as db:
                db.execute(sql)
        assert audit.query()[1] == 1
    finally:
        store.close()


# --- the schema ---------------------------------------------------------------------------------


def test_replicas_opening_together_create_the_schema_once(pg_url: str) -> None:
    errors: list[BaseException] = []
    stores = [PgAlertStore(pg_url, registry=CollectorRegistry(), pool_size=1) for _ in range(4)]
    start = threading.Barrier(len(stores))

    def open_one(s: PgAlertStore) -> None:
        start.wait()
        try:
            s.open()
            AuditLog(s).query()  # side tables created concurrently too
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for s in stores:
        s.close()
    assert errors == []
    again = open_pg_store(pg_url)  # idempotent: opening an existing schema changes nothing
    try:
        with again.connection() as db:
            assert db.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()[0] == "1"
    finally:
        again.close()


def test_an_unreachable_store_is_an_error_without_the_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"postgresql://sentinel:hunter2@127.0.0.1:{free_port()}/alerts"
    store = PgAlertStore(url, registry=CollectorRegistry(), open_timeout_s=1.0)
    with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as e:
        store.open()
    assert "hunter2" not in str(e.value) and "hunter2" not in caplog.text
    assert "sentinel:***@127.0.0.1" in str(e.value)
    assert redact_url("postgresql://u@h/db?password=x") == "postgresql://u@h/db?…"


def test_store_url_setting() -> None:
    AggregatorConfig(store_url="postgresql://u:p@db:5432/alerts").validate()
    with pytest.raises(ConfigError, match="store_url"):
        AggregatorConfig(store_url="mysql://db/alerts").validate()


# --- two replicas on one database ---------------------------------------------------------------


def test_two_replicas_raising_the_same_alert_store_one_and_send_it_once(pg_url: str) -> None:
    a, b = open_pg_store(pg_url), open_pg_store(pg_url)
    try:
        clock = Clock()
        m1, m2 = manager(a, clock), manager(b, clock)  # neither knows of the other's alerts
        m1.emit([cand()])
        m2.emit([cand(trace_ids=["bb" * 16])])
        [alert] = all_alerts(a)
        assert alert.count == 2 and alert.context["trace_ids"] == ["aa" * 16, "bb" * 16]
        assert b.metrics.raised_elsewhere._value.get() == 1
        clock.advance(10)  # group_wait: both replicas find the notification due
        m1.tick()
        m2.tick()
        assert a.outbox_depth("rec") == 1
        claimed = a.outbox_pending("rec", 10) + b.outbox_pending("rec", 10)
        assert [i.alert_id for i in claimed] == [alert.alert_id]  # delivered by one replica only
        a.outbox_done("rec", [alert.alert_id])
        late = Alert.from_dict(alert.to_dict())  # a replica sending it again after the delivery
        b.notify(late, ["rec"], alert.alert_id)
        assert a.outbox_depth("rec") == 0
    finally:
        a.close()
        b.close()


def test_replicas_raising_together_in_threads_store_one_alert(pg_url: str) -> None:
    stores = [open_pg_store(pg_url) for _ in range(3)]
    try:
        clock = Clock()
        managers = [manager(s, clock) for s in stores]
        start = threading.Barrier(len(managers))

        def raise_one(m: AlertManager) -> None:
            start.wait()
            m.emit([cand()])

        threads = [threading.Thread(target=raise_one, args=(m,)) for m in managers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        # One alert. Its count is each replica's view, the last write winning: detections of one
        # incident in several replicas at once are what the partitioning of analysis avoids.
        [alert] = all_alerts(stores[0])
        assert alert.count >= 2
    finally:
        for s in stores:
            s.close()


def test_a_dead_replicas_claimed_outbox_rows_are_delivered_after_its_lease(pg_url: str) -> None:
    a = open_pg_store(pg_url, outbox_lease_s=0.5)
    b = open_pg_store(pg_url, outbox_lease_s=0.5)
    try:
        clock = Clock()
        m = manager(a, clock)
        m.emit([cand()])
        clock.advance(10)
        m.tick()
        [item] = a.outbox_pending("rec", 10)  # replica a claims it, then "dies" before delivering
        assert b.outbox_pending("rec", 10) == []  # held by a's lease
        assert [i.alert_id for i in a.outbox_pending("rec", 10)] == [item.alert_id]  # a's own claim: renewed
        deadline = time.monotonic() + 15
        while not (taken := b.outbox_pending("rec", 10)):
            assert time.monotonic() < deadline, "the lease never ran out"
            time.sleep(0.05)
        assert [i.alert_id for i in taken] == [item.alert_id]
        assert b.metrics.outbox_reclaimed._value.get() == 1
        b.outbox_done("rec", [item.alert_id])
        assert a.outbox_depth("rec") == 0
    finally:
        a.close()
        b.close()


def test_the_storm_limit_counts_every_replicas_notifications(pg_url: str) -> None:
    a, b = open_pg_store(pg_url), open_pg_store(pg_url)
    try:
        clock = Clock()
        limits = {"storm_max_alerts": 3, "storm_window_s": 60, "group_wait_s": 0}
        m1, m2 = manager(a, clock, **limits), manager(b, clock, **limits)
        burst = [cand(service=f"svc-{i}", anomaly_type="error_burst", metric="error_rate", value=0.2, baseline=0.1)
                 for i in range(4)]
        m1.emit(burst[:2])
        m2.emit(burst[2:])  # the third notification is sent, the fourth held for the storm summary
        assert a.outbox_depth("rec") == 3
        assert [x.service_name for x in all_alerts(a) if x.storm_id] == ["svc-3"]
        clock.advance(61)  # the window over: sent one by one again
        m1.emit([cand(service="after")])
        assert a.outbox_depth("rec") == 4
    finally:
        a.close()
        b.close()


def test_a_resolved_alert_is_not_reopened_by_a_stale_replica(pg_url: str) -> None:
    store = open_pg_store(pg_url)
    try:
        clock = Clock()
        m = manager(store, clock)
        m.emit([cand()])
        [alert] = all_alerts(store)
        stale = Alert.from_dict(alert.to_dict())
        alert.status = "resolved"
        store.update([alert])
        stale.count = 99
        store.update([stale])  # a replica that had not heard of the resolution
        [now] = all_alerts(store)
        assert now.status == "resolved" and now.count != 99
        assert store.query(AlertQuery(status=("resolved",)))[1] == 1
    finally:
        store.close()


# --- live updates across replicas -----------------------------------------------------------------


async def test_notify_reaches_the_other_replicas_manager_and_hub(pg_url: str) -> None:
    a, b = open_pg_store(pg_url), open_pg_store(pg_url)
    try:
        clock = Clock()
        hub_b = AlertHub()
        hub_b.bind(asyncio.get_running_loop())
        m1, m2 = manager(a, clock), manager(b, clock, hub_b)

        def remote(event: str, alert: Alert) -> None:
            m2.remote_change(alert)
            hub_b.publish(event, alert.to_dict())

        b.listen(remote, m2.reload_silences)
        await wait_for(b.listening.is_set, what="LISTEN in effect")
        sub = hub_b.subscribe()
        try:
            await asyncio.to_thread(m1.emit, [cand()])
            event = await asyncio.wait_for(sub.get(), 10)
            assert event is not None and event["event"] == "alert"
            alert_id = event["alert"]["alert_id"]
            # b's manager knows the alert now: its own detection of the incident folds into it.
            await asyncio.to_thread(m2.emit, [cand()])
            [stored] = all_alerts(a)
            assert stored.alert_id == alert_id and stored.count == 2
            assert b.metrics.raised_elsewhere._value.get() == 0  # known before it had to ask
            # An acknowledgement on a is kept by b's next write; a silence on a mutes b.
            await asyncio.to_thread(m1.acknowledge, alert_id, "alice")
            await wait_for(lambda: m2._open[stored.fingerprint].status == "acknowledged", what="ack on b")
            await asyncio.to_thread(m2.emit, [cand()])
            assert all_alerts(a)[0].status == "acknowledged"
            silence = Silence([Matcher("anomaly_type", "error_burst")], starts_at=T0, ends_at=T0 + 600 * S)
            await asyncio.to_thread(m1.add_silence, silence)
            await wait_for(lambda: [s.id for s in m2._silences] == [silence.id], what="silence on b")
        finally:
            sub.unsubscribe()
    finally:
        a.close()
        b.close()


async def test_two_aggregators_on_one_store_show_each_others_alerts(
        make_aggregator: AggregatorFactory, pg_url: str, tmp_path: Path) -> None:
    one = await make_aggregator(store_url=pg_url, data_dir=str(tmp_path / "one"),
                                detectors={"error_burst": {"window_s": 1.0}})
    two = await make_aggregator(store_url=pg_url, data_dir=str(tmp_path / "two"))
    assert isinstance(two.alert_store, PgAlertStore)
    await wait_for(two.alert_store.listening.is_set, what="the second replica listening")
    sub = two.hub.subscribe()
    try:
        now = time.time_ns()
        async with httpx.AsyncClient() as c:
            for seq, rows in enumerate((_rows("payments", now - 8 * S, 40, 24), _rows("payments", now + 4 * S, 5, 0))):
                body = wire.encode(FeatureBatch.from_rows(rows), sidecar="payments", seq=seq)
                assert (await c.post(f"{one.url}/v1/ingest", content=body, headers=MSGPACK)).status_code == 200
            await one.analysis.drain()
            event = await asyncio.wait_for(sub.get(), 15)
            assert event is not None and event["event"] == "alert"
            assert event["alert"]["anomaly_type"] == "error_burst"
            for agg in (one, two):
                doc = (await c.get(f"{agg.url}/api/v1/alerts", params={"type": "error_burst"})).json()
                assert [a["alert_id"] for a in doc["alerts"]] == [event["alert"]["alert_id"]]
    finally:
        sub.unsubscribe()
