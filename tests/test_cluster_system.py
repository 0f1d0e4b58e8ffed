"""Three ``sentinel aggregator`` processes in cluster mode (issue 17): partitions over RabbitMQ, state in
PostgreSQL, a replica SIGKILLed mid-stream.

Real RabbitMQ (127.0.0.1:5672, queues under a prefix of this test's own, deleted after) and PostgreSQL
(a database of its own, dropped after). Batches go to the replicas' ``POST /v1/ingest`` round robin,
each retried at the next replica until one answers 200 (accepted or duplicate), as a sidecar does.
Checked: every acknowledged row is analysed exactly once (the partitions' checkpointed row counts add
up to the rows acknowledged, before and after the kill); the dead replica's partitions are taken over
within 10 s; an error burst sent during the failover, on a service of a partition the dead replica
owned, is alerted, and the alert is on every surviving replica's API.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg
import pytest

from aggregator.cluster.partition import partition_of
from loadtest.procs import Child, free_port
from sentinel import wire
from sentinel.model import FeatureBatch
from tests.conftest import pg_database
from tests.faults.conftest import BackgroundLoop, Metrics, wait_until
from tests.test_alert_sinks_amqp import BROKER_URL, needs_broker
from tests.test_event_time import MSGPACK, _rows

pytestmark = [pytest.mark.system, needs_broker]

S = 1_000_000_000
PARTITIONS = 12
SERVICES = [f"svc-{i}" for i in range(24)]
BURST = "payments"


class Replica:
    def __init__(self, tmp: Path, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.port = free_port()
        config = tmp / f"{name}.yaml"
        own = {**settings, "cluster": {**settings["cluster"], "replica_id": name}}
        config.write_text(json.dumps({"aggregator": own}))
        self.child = Child(name, [sys.executable, "-m", "sentinel.cli", "aggregator", "--listen",
                                  f"127.0.0.1:{self.port}", "--grpc-listen", "", "--data-dir", str(tmp / name),
                                  "--shutdown-grace-s", "2", "--config", str(config)], log_dir=tmp)
        self.child.env = {k: v for k, v in self.child.env.items() if not k.startswith("SENTINEL_")}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        return False

    def cluster(self) -> dict[str, Any]:
        r = httpx.get(self.url + "/api/v1/cluster", timeout=5)
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def bursts(self) -> list[str]:
        r = httpx.get(self.url + "/api/v1/alerts", params={"limit": 1000}, timeout=5)
        r.raise_for_status()
        body = r.json()
        alerts = body["alerts"] if isinstance(body, dict) else body
        return [a["alert_id"] for a in alerts if a["anomaly_type"] == "error_burst" and a["service_name"] == BURST]


def _analysed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(rows), 0) FROM cluster_partitions").fetchone()
    return int(row[0]) if row else 0


def _owners(url: str, ttl_s: float) -> dict[int, str]:
    """Partition -> owner, for owners with a live heartbeat."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT c.partition, c.owner FROM cluster_partitions c JOIN cluster_replicas r ON "
                            "r.replica = c.owner WHERE r.seen_at > now() - make_interval(secs => %s)",
                            (ttl_s,)).fetchall()
    return {int(p): str(o) for p, o in rows}


class Sender:
    """Posts batches round robin over the live replicas, each retried at the next until it is acknowledged."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.client = httpx.Client(timeout=10)
        self.seq = 0
        self.acked_rows = 0
        self.retries = 0

    def send(self, rows: list[Any], sidecar: str = "load") -> None:
        self.seq += 1
        body = wire.encode(FeatureBatch.from_rows(rows), sidecar=sidecar, seq=self.seq)
        deadline = time.monotonic() + 30
        i = self.seq
        while time.monotonic() < deadline:
            target = self.replicas[i % len(self.replicas)]
            i += 1
            try:
                r = self.client.post(target.url + "/v1/ingest", content=body, headers=MSGPACK)
            except httpx.HTTPError:
                self.retries += 1
                continue
            if r.status_code == 200:
                self.acked_rows += len(rows)
                return
            assert r.status_code == 503 and "Retry-After" in r.headers, r.text
            self.retries += 1
            time.sleep(0.1)
        raise AssertionError(f"batch {self.seq} not acknowledged within 30 s")

    def load(self, batches: int) -> None:
        now = time.time_ns()
        for b in range(batches):
            self.send([r for s in SERVICES[b % 3::3] for r in _rows(s, now + b, 3, 0)])


def delete_queues(amqp_url: str, prefix: str, partitions: int) -> None:
    """Delete the partition queues ``<prefix>.p<n>`` a test's replicas declared."""
    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for p in range(partitions):
                await channel.queue_delete(f"{prefix}.p{p}")
    loop = BackgroundLoop()
    try:
        loop.run(delete())
    finally:
        loop.close()


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    prefix = f"sentinel.systest.{uuid.uuid4().hex[:10]}"
    with pg_database() as url:
        settings = {"store_url": url,
                    "cluster": {"amqp_url": BROKER_URL, "queue_prefix": prefix, "partitions": PARTITIONS,
                                "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": 2.5, "checkpoint_interval_s": 0.5},
                    "forest": {"enabled": False}, "detectors": {"error_burst": {"window_s": 1.0}},
                    "alerts": {"group_wait_s": 1}}
        try:
            yield url, settings
        finally:
            delete_queues(BROKER_URL, prefix, PARTITIONS)


def test_three_replicas_lose_nothing_and_count_nothing_twice_when_one_is_killed(
        tmp_path: Path, cluster_env: tuple[str, dict[str, Any]]) -> None:
    url, settings = cluster_env
    replicas = [Replica(tmp_path, f"r{i}", settings) for i in range(3)]
    try:
        for r in replicas:
            r.child.start()
        wait_until(lambda: all(r.ready() for r in replicas), 60, "three replicas ready")
        ttl = settings["cluster"]["heartbeat_ttl_s"]
        wait_until(lambda: len(_owners(url, ttl)) == PARTITIONS and set(_owners(url, ttl).values()) == {
            "r0", "r1", "r2"} and max(list(_owners(url, ttl).values()).count(n) for n in ("r0", "r1", "r2")) <= 4,
            30, "12 partitions spread over 3 replicas (at most ceil(12/3) each)")
        sender = Sender(replicas)
        sender.load(30)
        wait_until(lambda: _analysed(url) == sender.acked_rows, 30, "phase 1 analysed")
        status = replicas[0].cluster()
        assert sorted(p for r in status["replicas"] for p in r["partitions"]) == list(range(PARTITIONS))

        # The replica owning the burst's partition dies with messages in flight (delivered, some not yet
        # checkpointed or acknowledged); the burst and more load arrive during the failover, the dead
        # replica still in the senders' rotation (refused connections: retried at the next one).
        owners = _owners(url, ttl)
        victim = next(r for r in replicas if r.name == owners[partition_of(BURST, PARTITIONS)])
        survivors = [r for r in replicas if r is not victim]
        sender.load(30)
        assert victim.child.proc is not None
        victim.child.proc.kill()  # SIGKILL, this child's pid only
        victim.child.proc.wait(10)
        killed = time.monotonic()
        now = time.time_ns()
        sender.send(_rows(BURST, now - 8 * S, 40, 24), sidecar=BURST)
        sender.load(20)
        sender.send(_rows(BURST, now + 4 * S, 5, 0), sidecar=BURST)
        names = {r.name for r in survivors}
        took = wait_until(lambda: len(_owners(url, ttl)) == PARTITIONS and set(_owners(url, ttl).values()) == names,
                          15, "the dead replica's partitions taken over")
        handoff = time.monotonic() - killed
        assert handoff < 10, f"partitions taken over {handoff:.1f} s after the kill"
        wait_until(lambda: _analysed(url) == sender.acked_rows, 30,
                   f"every acknowledged row analysed ({sender.acked_rows})")
        time.sleep(2 * settings["cluster"]["checkpoint_interval_s"])  # nothing more arrives: no double count
        assert _analysed(url) == sender.acked_rows
        wait_until(lambda: all(r.bursts() for r in survivors), 30, "the burst alerted, on every replica")
        assert survivors[0].bursts() == survivors[1].bursts() and len(survivors[0].bursts()) == 1
        replayed = 0.0
        for r in survivors:
            m = Metrics(httpx.get(r.url + "/metrics", timeout=5).text)
            assert m("sentinel_aggregator_cluster_partitions_owned") == PARTITIONS / 2
            assert m("sentinel_aggregator_cluster_handoff_seconds_count") >= 1
            replayed += m("sentinel_aggregator_cluster_replayed_rows_total")
        sender.client.close()
        print(f"handoff {handoff:.2f} s (wait {took:.2f} s), {sender.acked_rows} rows, {sender.retries} retries, "
              f"{replayed:.0f} rows replayed")
        _stop_cleanly(survivors)
    finally:
        for r in replicas:
            r.child.stop(10)


def _stop_cleanly(replicas: list[Replica]) -> None:
    """SIGTERM each; each exits 0 (its partitions checkpointed and released)."""
    for r in replicas:
        assert r.child.stop(20) == 0, r.child.tail()


def _start_two(replicas: list[Replica], url: str, ttl: float) -> None:
    """Start r0 and r1 and wait until each owns half the partitions."""
    for r in replicas:
        r.child.start()
    wait_until(lambda: all(r.ready() for r in replicas), 60, "two replicas ready")
    half = PARTITIONS // 2
    wait_until(lambda: sorted(_owners(url, ttl).values()) == ["r0"] * half + ["r1"] * half, 30, "6 partitions each")


def test_a_replica_stopped_and_restarted_hands_its_partitions_over_and_back(
        tmp_path: Path, cluster_env: tuple[str, dict[str, Any]]) -> None:
    url, settings = cluster_env
    ttl = settings["cluster"]["heartbeat_ttl_s"]
    replicas = [Replica(tmp_path, f"r{i}", settings) for i in range(2)]
    try:
        _start_two(replicas, url, ttl)
        sender = Sender(replicas)
        sender.load(20)
        # SIGTERM: r1 checkpoints and releases its partitions (nothing to replay), r0 takes them.
        assert replicas[1].child.stop(20) == 0, replicas[1].child.tail()
        sender.replicas = replicas[:1]
        wait_until(lambda: list(_owners(url, ttl).values()) == ["r0"] * PARTITIONS, 15, "r0 owning every partition")
        sender.load(20)
        wait_until(lambda: _analysed(url) == sender.acked_rows, 30, "every row analysed by r0")
        # Back (same id and data directory): the partitions spread again, from their checkpoints.
        replicas[1].child.start()
        wait_until(replicas[1].ready, 60, "r1 ready again")
        wait_until(lambda: sorted(_owners(url, ttl).values()) == ["r0"] * 6 + ["r1"] * 6, 30, "6 each again")
        sender.replicas = replicas
        sender.load(20)
        wait_until(lambda: _analysed(url) == sender.acked_rows, 30, f"every row analysed ({sender.acked_rows})")
        time.sleep(2 * settings["cluster"]["checkpoint_interval_s"])
        assert _analysed(url) == sender.acked_rows
        m = Metrics(httpx.get(replicas[0].url + "/metrics", timeout=5).text)
        assert m("sentinel_aggregator_cluster_skipped_rows_total") == 0  # graceful: nothing redelivered twice
        sender.client.close()
        _stop_cleanly(replicas)
    finally:
        for r in replicas:
            r.child.stop(10)


def _services(r: Replica) -> dict[str, int]:
    doc = httpx.get(r.url + "/api/v1/services", timeout=5).json()
    return {s["service"]: s["calls"] for s in doc["services"]}


def _get(r: Replica, path: str) -> Any:
    resp = httpx.get(r.url + path, timeout=5)
    resp.raise_for_status()
    return resp.json()


def test_two_replicas_answer_for_the_whole_cluster_and_follow_one_configuration(
        tmp_path: Path, cluster_env: tuple[str, dict[str, Any]]) -> None:
    """Security events from the security.events queue analysed in their service's partition, services and
    baselines answered alike by both replicas, a configuration change at one followed by the other."""
    url, settings = cluster_env
    ttl = settings["cluster"]["heartbeat_ttl_s"]
    own = uuid.uuid4().hex[:10]
    exchange, queue = f"sentinel.systest.security.{own}", f"sentinel.systest.security-events.{own}"
    settings = {**settings, "security": {"amqp_url": BROKER_URL, "amqp_exchange": exchange, "amqp_queue": queue,
                                         "max_events": 2}}
    replicas = [Replica(tmp_path, f"r{i}", settings) for i in range(2)]
    loop = BackgroundLoop()
    try:
        _start_two(replicas, url, ttl)
        sender = Sender(replicas)
        sender.load(12)
        now = time.time()

        async def publish() -> None:
            connection = await aio_pika.connect(BROKER_URL)
            async with connection:
                channel = await connection.channel()
                ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                events = [{"threat_type": "jailbreak", "timestamp": now + i, "confidence": 0.7,
                           "service_name": SERVICES[1], "user_id": "mallory"} for i in range(3)]
                await ex.publish(aio_pika.Message(json.dumps(events).encode()), routing_key="guardrail")

        loop.run(publish())
        wait_until(lambda: all(sum(_services(r).values()) == sender.acked_rows for r in replicas), 30,
                   f"every replica lists every service's calls ({sender.acked_rows})")
        assert _services(replicas[0]) == _services(replicas[1]) and set(_services(replicas[0])) == set(SERVICES)
        baselines = [_get(r, "/api/v1/baselines?region=global") for r in replicas]
        assert baselines[0] == baselines[1] and baselines[0]["count"] == len(SERVICES)

        def attacks(r: Replica) -> list[str]:
            alerts = _get(r, "/api/v1/alerts?limit=1000")["alerts"]
            return [a["service_name"] for a in alerts if a["anomaly_type"] == "coordinated_attack"]

        wait_until(lambda: all(attacks(r) == [SERVICES[1]] for r in replicas), 30,
                   "the attack alerted from the service's partition, on both replicas")
        resp = httpx.put(replicas[0].url + "/api/v1/config", json={"settings": {"alerts.min_confidence": 0.8}},
                         timeout=30)
        assert resp.status_code == 200 and resp.json()["version"] == 2, resp.text
        wait_until(lambda: _get(replicas[1], "/api/v1/config")["settings"]["alerts.min_confidence"] == 0.8, 10,
                   "r1 follows the change made at r0")
        assert [v["version"] for v in _get(replicas[1], "/api/v1/config/history")["versions"]] == [2, 1]
        sender.client.close()
        _stop_cleanly(replicas)
    finally:
        for r in replicas:
            r.child.stop(10)

        async def delete() -> None:
            connection = await aio_pika.connect(BROKER_URL)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(queue)
                await channel.exchange_delete(exchange)

        try:
            loop.run(delete())
        finally:
            loop.close()
