"""The RabbitMQ alert sink against the real broker on 127.0.0.1:5672 (guest/guest).

Every test declares its own exchanges and queues (a uuid suffix) and deletes them afterwards.
Outages are simulated with a closed port and with a TCP proxy between the sink and the broker
that the test kills and restarts.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from prometheus_client import CollectorRegistry

from aggregator.alerting.amqp_sink import AmqpSink, AmqpSinkConfig
from aggregator.alerting.sink import SinkMetrics
from aggregator.alerting.store import SQLiteAlertStore
from sentinel.alerts import SEVERITIES, Alert, AlertDetails
from sentinel.config import ConfigError
from tests.conftest import wait_for
from tests.tcp_proxy import TcpProxy

BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672
BROKER_URL = f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}/"


def _broker_up() -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=1):
            return True
    except OSError:
        return False


needs_broker = pytest.mark.skipif(not _broker_up(), reason="RabbitMQ is not running on 127.0.0.1:5672")

T0 = 1_762_432_501_234_000_000  # 2025-11-06T12:35:01.234Z


def make_alert(i: int, severity: str = "high") -> Alert:
    return Alert(
        alert_id=f"alert-{i:05d}-{uuid.uuid4().hex[:6]}",
        timestamp=T0 + i * 1_000_000,
        severity=severity,
        anomaly_type="latency_spike",
        service_name="checkout",
        model="gpt-4o",
        detection_method="zscore",
        confidence=0.9,
        details=AlertDetails("latency_ms", 900.0 + i, 300.0, 600.0, 4.2),
        runbook_url="https://runbooks.example/latency",
        summary=f"latency spike #{i}",
        fingerprint=f"fp{i}",
        first_seen=T0,
        last_seen=T0,
    )


class Topology:
    """Unique names for one test, and a broker connection to consume and clean up with."""

    def __init__(self) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.exchange = f"test.incidents.{suffix}"
        self.queue = f"test.incidents.all.{suffix}"
        self.dlx = f"test.incidents.dlx.{suffix}"
        self.dlq = f"test.incidents.dlq.{suffix}"
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: AbstractChannel | None = None

    def config(self, url: str = BROKER_URL, **kw: Any) -> AmqpSinkConfig:
        settings: dict[str, Any] = {"exchange": self.exchange, "queue": self.queue, "dlx": self.dlx,
                                    "dlq": self.dlq, "reconnect_max_backoff_s": 0.3, "timeout_s": 5.0}
        settings.update(kw)
        return AmqpSinkConfig(url=url, **settings)

    async def open(self) -> None:
        self.connection = await aio_pika.connect(BROKER_URL)
        self.channel = await self.connection.channel()

    async def passive_queue(self, name: str) -> AbstractQueue:
        assert self.channel is not None
        return await self.channel.declare_queue(name, passive=True)

    async def cleanup(self) -> None:
        if self.connection is None:
            return
        channel = await self.connection.channel()
        for q in (self.queue, self.dlq):
            await channel.queue_delete(q)
        for x in (self.exchange, self.dlx):
            await channel.exchange_delete(x)
        await self.connection.close()


@pytest.fixture
async def topo() -> AsyncIterator[Topology]:
    t = Topology()
    await t.open()
    try:
        yield t
    finally:
        await t.cleanup()


async def wait_for_async(cond: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Collector:
    """Consumes a queue (auto-ack) into a list."""

    def __init__(self) -> None:
        self.messages: list[AbstractIncomingMessage] = []

    async def __call__(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    @property
    def ids(self) -> list[str]:
        return [str(m.message_id) for m in self.messages]


async def consume(topo: Topology, queue_name: str) -> Collector:
    queue = await topo.passive_queue(queue_name)
    collector = Collector()
    await queue.consume(collector, no_ack=True)
    return collector


MARKER = "test-barrier"


async def drained(topo: Topology, collector: Collector, store: SQLiteAlertStore) -> None:
    """Return once every message the sink will ever publish for the outbox so far has been consumed.

    An empty outbox means every publish was confirmed, so each is already in the queue; a marker
    published after that lands behind them. Once the marker arrives, a duplicate would have arrived
    before it: "nothing more comes" without sleeping and hoping.
    """
    await wait_for(lambda: store.outbox_depth("amqp") == 0, what="an empty outbox")
    assert topo.channel is not None
    await topo.channel.default_exchange.publish(aio_pika.Message(b"", message_id=MARKER), routing_key=topo.queue)
    await wait_for(lambda: MARKER in collector.ids, what="the barrier message")
    collector.messages = [m for m in collector.messages if m.message_id != MARKER]


def sample(metrics: SinkMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"sink": "amqp", **labels})
    return 0.0 if value is None else float(value)


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "key"), [
    ({"url": "http://localhost"}, "amqp.url"),
    ({"url": "amqp://localhost:notaport/"}, "amqp.url"),
    ({"exchange": ""}, "amqp.exchange"),
    ({"exchange": "has space"}, "amqp.exchange"),
    ({"binding_key": ""}, "amqp.binding_key"),
    ({"dlx": "", "dlq": "q"}, "amqp.dlq"),
    ({"dlx": "incidents"}, "amqp.dlx"),
    ({"dlq": "incidents.all"}, "amqp.dlq"),
    ({"message_ttl_s": -1}, "amqp.message_ttl_s"),
    ({"min_severity": "urgent"}, "amqp.min_severity"),
    ({"batch_size": 0}, "amqp.batch_size"),
    ({"reconnect_max_backoff_s": 0.0}, "amqp.reconnect_max_backoff_s"),
    ({"timeout_s": float("inf")}, "amqp.timeout_s"),
])
def test_config_validate_names_the_key(overrides: dict[str, Any], key: str) -> None:
    settings: dict[str, Any] = {"url": BROKER_URL, **overrides}
    with pytest.raises(ConfigError, match=f"^{key}:"):
        AmqpSinkConfig(**settings).validate()


def test_config_defaults_and_queue_arguments() -> None:
    cfg = AmqpSinkConfig(url=BROKER_URL)
    cfg.validate()
    assert (cfg.exchange, cfg.queue, cfg.binding_key, cfg.dlx, cfg.dlq) == (
        "incidents", "incidents.all", "incidents.#", "incidents.dlx", "incidents.dlq")
    assert cfg.queue_arguments() == {"x-message-ttl": 86_400_000, "x-dead-letter-exchange": "incidents.dlx"}
    assert AmqpSinkConfig(url=BROKER_URL, message_ttl_s=0, dlx="", dlq="").queue_arguments() == {}
    AmqpSinkConfig(url=BROKER_URL, queue="", binding_key="").validate()  # no queue: no binding key needed


def test_wants_filters_by_severity(store: SQLiteAlertStore) -> None:
    sink = AmqpSink(AmqpSinkConfig(url=BROKER_URL, min_severity="high"), store)
    assert [sink.wants(make_alert(0, s)) for s in SEVERITIES] == [True, True, False, False]
    assert sink.name == "amqp"


# --- against the broker -----------------------------------------------------------------------


@needs_broker
async def test_publishes_persistent_json_with_routing_key_and_ids(topo: Topology, store: SQLiteAlertStore) -> None:
    metrics = SinkMetrics(CollectorRegistry())
    sink = AmqpSink(topo.config(), store, metrics=metrics)
    await sink.start()
    try:
        await wait_for(lambda: sink.connected, what="the sink to connect")
        assert sample(metrics, "sentinel_aggregator_sink_connected") == 1.0
        collector = await consume(topo, topo.queue)
        alerts = [make_alert(i, SEVERITIES[i % 4]) for i in range(8)]
        for a in alerts:
            store.insert(a, ["amqp"])
        sink.wake()
        await wait_for(lambda: len(collector.messages) >= len(alerts), what="all alerts")
        await drained(topo, collector, store)  # nothing more arrives: exactly once
        assert collector.ids == [a.alert_id for a in alerts]
        for a, m in zip(alerts, collector.messages, strict=True):
            assert m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert m.content_type == "application/json"
            assert m.routing_key == f"incidents.{a.severity}"
            assert m.exchange == topo.exchange
            assert m.type == "alert"
            assert m.message_id == a.alert_id
            assert m.timestamp is not None and int(m.timestamp.timestamp()) == T0 // 10**9
            assert json.loads(m.body) == a.to_dict()
        await wait_for(lambda: sample(metrics, "sentinel_aggregator_sink_sent_total") == len(alerts),
                       what="every confirm")
        assert store.outbox_depth("amqp") == 0
        assert sample(metrics, "sentinel_aggregator_sink_outbox_depth") == 0
    finally:
        await sink.shutdown()
        await sink.shutdown()  # idempotent
    assert sample(metrics, "sentinel_aggregator_sink_connected") == 0.0


@needs_broker
async def test_queue_arguments_are_in_effect(topo: Topology, store: SQLiteAlertStore) -> None:
    """Rejected (requeue=False) and expired messages land in the DLQ; the queue carries TTL and DLX."""
    sink = AmqpSink(topo.config(message_ttl_s=1), store)
    await sink.start()
    try:
        await wait_for(lambda: sink.connected, what="the sink to connect")
        # Re-declaring with the same arguments succeeds; with other ones the broker refuses.
        assert topo.connection is not None
        channel = await topo.connection.channel()
        await channel.declare_queue(topo.queue, durable=True, arguments=sink.config.queue_arguments())
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(topo.queue, durable=True,
                                        arguments={"x-message-ttl": 5000, "x-dead-letter-exchange": topo.dlx})

        rejected, expired = make_alert(0, "critical"), make_alert(1, "low")
        store.insert(rejected, ["amqp"])
        sink.wake()
        queue = await topo.passive_queue(topo.queue)
        got: list[AbstractIncomingMessage | None] = [None]

        async def fetch() -> bool:
            got[0] = await queue.get(no_ack=False, fail=False)
            return got[0] is not None

        await wait_for_async(fetch, what="the alert on the queue")
        message = got[0]
        assert message is not None and message.message_id == rejected.alert_id
        await message.reject(requeue=False)

        store.insert(expired, ["amqp"])  # not consumed: expires after the 1 s TTL
        sink.wake()
        dlq = await consume(topo, topo.dlq)
        await wait_for(lambda: len(dlq.messages) >= 2, timeout=10, what="the rejected and the expired alert")
        assert dlq.ids == [rejected.alert_id, expired.alert_id]
        deaths: list[Any] = [m.headers["x-death"] for m in dlq.messages]
        reasons = [d[0]["reason"] for d in deaths]
        assert reasons == ["rejected", "expired"]
        assert [m.routing_key for m in dlq.messages] == ["incidents.critical", "incidents.low"]
        assert json.loads(dlq.messages[1].body) == expired.to_dict()
    finally:
        await sink.shutdown()


@needs_broker
async def test_unroutable_alerts_wait_in_the_outbox_until_a_queue_is_bound(
        topo: Topology, store: SQLiteAlertStore) -> None:
    """queue="" declares no queue: returned (mandatory) messages keep their rows until someone binds."""
    metrics = SinkMetrics(CollectorRegistry())
    sink = AmqpSink(topo.config(queue=""), store, metrics=metrics)
    await sink.start()
    try:
        alerts = [make_alert(i) for i in range(3)]
        for a in alerts:
            store.insert(a, ["amqp"])
        sink.wake()
        await wait_for(lambda: sample(metrics, "sentinel_aggregator_sink_failures_total", reason="returned") >= 1,
                       what="a return")
        assert store.outbox_depth("amqp") == 3
        assert sample(metrics, "sentinel_aggregator_sink_sent_total") == 0
        # The incident manager shows up and binds its queue: the waiting alerts follow, in order.
        assert topo.channel is not None
        queue = await topo.channel.declare_queue(topo.queue, durable=True)
        await queue.bind(topo.exchange, "incidents.#")
        collector = await consume(topo, topo.queue)
        await wait_for(lambda: len(collector.messages) >= 3, what="the alerts after binding")
        await drained(topo, collector, store)
        assert collector.ids == [a.alert_id for a in alerts]
    finally:
        await sink.shutdown()


@needs_broker
async def test_nacked_alerts_are_kept_and_retried(topo: Topology, store: SQLiteAlertStore) -> None:
    """A full queue with ``reject-publish`` nacks: the rows stay and go out once there is room."""
    assert topo.channel is not None
    queue = await topo.channel.declare_queue(topo.queue, durable=True,
                                             arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    metrics = SinkMetrics(CollectorRegistry())
    sink = AmqpSink(topo.config(queue=""), store, metrics=metrics)  # the consumer owns the queue here
    await sink.start()
    try:
        await wait_for(lambda: sink.connected, what="the sink to connect")
        await queue.bind(topo.exchange, "incidents.#")
        alerts = [make_alert(i) for i in range(3)]
        for a in alerts:
            store.insert(a, ["amqp"])
        sink.wake()
        await wait_for(lambda: sample(metrics, "sentinel_aggregator_sink_failures_total", reason="nack") >= 1,
                       what="a nack")
        assert store.outbox_depth("amqp") >= 1
        collector = await consume(topo, topo.queue)  # room again
        await wait_for(lambda: store.outbox_depth("amqp") == 0, what="an empty outbox")
        await wait_for(lambda: len(collector.messages) >= 3, what="every alert")
        await drained(topo, collector, store)
        # Nacked messages were never enqueued: no duplicates. (A nacked alert may land after one that
        # followed it, when the queue frees up between the two: order holds only for confirmed publishes.)
        assert sorted(collector.ids) == sorted(a.alert_id for a in alerts)
        assert collector.ids[0] == alerts[0].alert_id
        assert sample(metrics, "sentinel_aggregator_sink_sent_total") == 3
    finally:
        await sink.shutdown()


@needs_broker
async def test_broker_down_then_restart_delivers_everything_exactly_once(
        topo: Topology, tmp_path: Path) -> None:
    path = str(tmp_path / "alerts.db")
    store = SQLiteAlertStore(path)
    store.open()
    metrics = SinkMetrics(CollectorRegistry())
    down = AmqpSink(topo.config(url="amqp://guest:guest@127.0.0.1:1/"), store, metrics=metrics)
    await down.start()  # must not fail with the broker unreachable
    alerts = [make_alert(i, SEVERITIES[i % 4]) for i in range(25)]
    for a in alerts:
        store.insert(a, ["amqp"])
    down.wake()
    await wait_for(lambda: sample(metrics, "sentinel_aggregator_sink_failures_total", reason="connect") >= 2,
                   what="connect failures")
    assert not down.connected
    assert store.outbox_depth("amqp") == len(alerts)
    assert sample(metrics, "sentinel_aggregator_sink_outbox_depth") == len(alerts)
    assert "connect" in down.last_error
    await down.shutdown()
    store.close()

    # "Restart": a new store on the same file and a sink with the right URL; no wake() needed.
    store = SQLiteAlertStore(path)
    store.open()
    try:
        up = AmqpSink(topo.config(), store, metrics=metrics)
        await up.start()
        try:
            await wait_for(lambda: up.connected, what="the sink to connect")
            collector = await consume(topo, topo.queue)
            await wait_for(lambda: len(collector.messages) >= len(alerts), what="all alerts")
            await drained(topo, collector, store)
            assert collector.ids == [a.alert_id for a in alerts]
            assert [m.routing_key for m in collector.messages] == [f"incidents.{a.severity}" for a in alerts]
            assert store.outbox_depth("amqp") == 0
        finally:
            await up.shutdown()
    finally:
        store.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy()
    await p.start()
    try:
        yield p
    finally:
        await p.kill()


@needs_broker
async def test_connection_lost_and_back_loses_nothing(
        topo: Topology, store: SQLiteAlertStore, proxy: TcpProxy) -> None:
    metrics = SinkMetrics(CollectorRegistry())
    sink = AmqpSink(topo.config(url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", batch_size=20), store,
                    metrics=metrics)
    await sink.start()
    try:
        await wait_for(lambda: sink.connected, what="the sink to connect")
        collector = await consume(topo, topo.queue)

        # 1. Happy path: exactly once, in order.
        first = [make_alert(i) for i in range(30)]
        for a in first:
            store.insert(a, ["amqp"])
        sink.wake()
        await wait_for(lambda: len(collector.messages) >= len(first), what="the first alerts")
        await drained(topo, collector, store)
        assert collector.ids == [a.alert_id for a in first]

        # 2. The broker goes away: alerts wait in the outbox, the sink notices and says so.
        await proxy.kill()
        second = [make_alert(100 + i) for i in range(30)]
        for a in second:
            store.insert(a, ["amqp"])
        sink.wake()
        await wait_for(lambda: not sink.connected and sample(metrics, "sentinel_aggregator_sink_connected") == 0,
                       what="the sink to notice")
        await asyncio.sleep(0.3)
        assert store.outbox_depth("amqp") == len(second)
        assert len(collector.messages) == len(first)

        # 3. Back: everything pending is published, in order, once (none of it reached the broker).
        await proxy.start()
        await wait_for(lambda: len(collector.messages) >= len(first) + len(second), what="the second alerts")
        await drained(topo, collector, store)
        assert collector.ids == [a.alert_id for a in first + second]
        assert store.outbox_depth("amqp") == 0
        failures = sum(sample(metrics, "sentinel_aggregator_sink_failures_total", reason=r)
                       for r in ("connect", "connection", "timeout", "error"))
        assert failures >= 1
    finally:
        await sink.shutdown()


@needs_broker
async def test_connection_killed_mid_stream_loses_nothing(
        topo: Topology, store: SQLiteAlertStore, proxy: TcpProxy) -> None:
    sink = AmqpSink(topo.config(url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/", batch_size=25), store)
    await sink.start()
    try:
        await wait_for(lambda: sink.connected, what="the sink to connect")
        collector = await consume(topo, topo.queue)
        alerts = [make_alert(i, SEVERITIES[i % 4]) for i in range(400)]
        for a in alerts:
            store.insert(a, ["amqp"])
        sink.wake()
        # Kill the connection as soon as the first messages are through, i.e. while publishing.
        await wait_for(lambda: len(collector.messages) >= 1, what="the first alert")
        await proxy.kill()
        await asyncio.sleep(0.2)
        await proxy.start()
        want = [a.alert_id for a in alerts]
        await wait_for(lambda: set(collector.ids) >= set(want), timeout=30, what="every alert")
        await drained(topo, collector, store)
        ids = collector.ids
        assert set(ids) == set(want)
        # Only alerts unconfirmed when the connection died can come twice: at most one batch.
        assert len(ids) - len(want) <= 25
        first_seen = list(dict.fromkeys(ids))
        assert first_seen == want  # in raise order
    finally:
        await sink.shutdown()


async def test_start_and_shutdown_without_broker_and_wake_from_another_thread(store: SQLiteAlertStore) -> None:
    sink = AmqpSink(AmqpSinkConfig(url="amqp://guest:guest@127.0.0.1:1/", reconnect_max_backoff_s=0.1), store)
    sink.wake()  # before start: a no-op
    await sink.start()
    await sink.start()  # idempotent
    store.insert(make_alert(0), ["amqp"])
    await asyncio.to_thread(sink.wake)
    await asyncio.sleep(0.2)
    assert store.outbox_depth("amqp") == 1
    await sink.shutdown()
    await sink.shutdown()
    sink.wake()  # after shutdown: a no-op
