"""Broker outage across an aggregator restart: RabbitMQ unreachable while alerts are raised, the
aggregator restarted, the broker back (and its connection cut once more): every alert arrives on
the queue bound to ``incidents.#`` exactly once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from pathlib import Path

import aio_pika
from prometheus_client import CollectorRegistry

from aggregator.alerting.amqp_sink import AmqpSinkConfig
from aggregator.alerting.manager import AlertManagerConfig
from aggregator.alerting.store import AlertQuery
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from tests.conftest import free_port
from tests.tcp_proxy import TcpProxy

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
S = 1_000_000_000


def candidate(i: int) -> Candidate:
    t = time.time_ns()
    return Candidate(anomaly_type="error_burst", service=f"svc-{i}", model="gpt-4o", detection_method="binomial_z",
                     confidence=0.95, metric="error_rate", value=0.3, baseline=0.02, threshold=0.1,
                     deviation_sigma=8.0, window_start=t - 60 * S, window_end=t, context={"trace_ids": []})


async def start(data_dir: Path, port: int, exchange: str, suffix: str) -> Aggregator:
    agg = Aggregator(AggregatorConfig(
        listen="127.0.0.1:0", data_dir=str(data_dir), grpc_listen="", shutdown_grace_s=1.0,
        amqp=AmqpSinkConfig(url=f"amqp://guest:guest@127.0.0.1:{port}/", exchange=exchange,
                            queue=f"incidents.all-{suffix}"),
        # Outbox rows as raised: the outage is the subject.
        alerts=AlertManagerConfig(group_wait_s=0)), registry=CollectorRegistry())
    await agg.start()
    return agg


async def test_alerts_survive_broker_outage_and_restart_exactly_once(tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    exchange_name = f"incidents-outage-{suffix}"
    port = free_port()  # nothing listens here yet: the broker is "down"
    connection = await aio_pika.connect(AMQP_URL)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(f"outage-consumer-{suffix}", auto_delete=True)
    await queue.bind(exchange, "incidents.#")
    proxy = TcpProxy(port)
    agg: Aggregator | None = None
    try:
        # 1. Broker unreachable: alerts are raised and wait in the outbox.
        agg = await start(tmp_path, port, exchange_name, suffix)
        await asyncio.to_thread(agg.alerts.emit, [candidate(i) for i in range(5)])
        assert agg.alert_store.outbox_depth("amqp") == 5
        await asyncio.sleep(0.5)
        assert await queue.get(fail=False) is None
        # 2. The aggregator restarts (the outbox is on disk), still without a broker; more alerts.
        await agg.shutdown()
        agg = await start(tmp_path, port, exchange_name, suffix)
        await asyncio.to_thread(agg.alerts.emit, [candidate(i) for i in range(5, 8)])
        assert agg.alert_store.outbox_depth("amqp") == 8
        # 3. The broker comes back: everything is published.
        await proxy.start()
        deadline = time.monotonic() + 30
        while agg.alert_store.outbox_depth("amqp") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert agg.alert_store.outbox_depth("amqp") == 0
        # 4. The connection is cut while more alerts are raised; the broker is back again.
        await proxy.kill()
        await asyncio.to_thread(agg.alerts.emit, [candidate(i) for i in range(8, 10)])
        await asyncio.sleep(0.3)
        await proxy.start()
        deadline = time.monotonic() + 30
        while agg.alert_store.outbox_depth("amqp") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert agg.alert_store.outbox_depth("amqp") == 0

        ids: Counter[str] = Counter()
        services: set[str] = set()
        deadline = time.monotonic() + 10
        while sum(ids.values()) < 10 and time.monotonic() < deadline:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                continue
            await message.ack()
            body = json.loads(message.body)
            ids[body["alert_id"]] += 1
            services.add(body["service_name"])
        await asyncio.sleep(0.5)
        assert await queue.get(fail=False) is None  # nothing beyond the ten
        assert len(ids) == 10 and set(ids.values()) == {1}
        assert services == {f"svc-{i}" for i in range(10)}
        stored = {a.alert_id for a in agg.alert_store.query(AlertQuery())[0]}
        assert set(ids) == stored
    finally:
        if agg is not None:
            await agg.shutdown()
        await proxy.kill()
        ch = await connection.channel()
        await ch.exchange_delete(exchange_name)
        await ch.queue_delete(f"incidents.all-{suffix}")
        await connection.close()
