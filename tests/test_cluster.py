"""Cluster mode in process (aggregator/cluster/): partitioning, ingest through PostgreSQL and RabbitMQ,
two replicas sharing the partitions. Real PostgreSQL (a database per test) and RabbitMQ (queues with a
prefix per test, deleted after); skipped when either is unreachable. The multi-process failover suite is
tests/test_cluster_system.py."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from aggregator.app import Aggregator
from aggregator.cluster.checkpoint import PartitionCounts, pack, unpack
from aggregator.cluster.config import ClusterConfig
from aggregator.cluster.db import create_schema
from aggregator.cluster.ingest import ClusterIngest, ClusterStoreError
from aggregator.cluster.partition import partition_of, split
from aggregator.config import SECRET_KEYS, AggregatorConfig
from aggregator.ingest.config import IngestConfig
from aggregator.metrics import AggregatorMetrics
from sentinel import wire
from sentinel.config import ConfigError, load
from sentinel.model import FeatureBatch
from tests.conftest import pg_database, wait_for
from tests.test_alert_sinks_amqp import BROKER_URL, _broker_up, needs_broker
from tests.test_event_time import MSGPACK, _rows

T0 = 1_762_432_501_234_000_000


def test_partition_is_crc32_of_the_service() -> None:
    assert partition_of("checkout", 32) == zlib.crc32(b"checkout") % 32  # not Python's salted hash()
    assert partition_of(None, 32) == partition_of("", 32) == 0
    assert {partition_of(f"svc-{i}", 8) for i in range(200)} == set(range(8))


def test_split_keeps_every_row_once_and_groups_by_service() -> None:
    rows = [r for s in ("a", "b", "c", "d", "e") for r in _rows(s, T0, 7, 2)]
    batch = wire.decode(wire.encode(FeatureBatch.from_rows(rows), sidecar="s1", seq=5, created_unix_nano=T0))
    parts = split(batch, 4)
    seen: list[str | None] = []
    for p, body in parts.items():
        b = wire.decode(body)
        assert (b.sidecar, b.seq, b.created_unix_nano) == ("s1", 5, T0)
        assert {partition_of(s, 4) for s in b.batch.strings["service"]} <= {p}
        seen += b.batch.strings["service"]
    assert sorted(s or "" for s in seen) == sorted(s or "" for s in batch.batch.strings["service"])
    empty = split(wire.decode(wire.encode(FeatureBatch.empty(), sidecar="s1", seq=6)), 4)
    assert list(empty) == [partition_of("s1", 4)]


def test_checkpoint_round_trip() -> None:
    counts = PartitionCounts()
    counts.record("s1", 3, 10)
    back, files = unpack(pack(counts, {"x.json": b"{}"}))
    assert back.rows == 10 and back.is_seen("s1", 3) and not back.is_seen("s1", 4) and files == {"x.json": b"{}"}


def test_cluster_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"cluster\.amqp_url: cluster mode needs store_url"):
        AggregatorConfig(cluster=ClusterConfig(amqp_url=BROKER_URL)).validate()
    with pytest.raises(ConfigError, match=r"cluster\.partitions"):
        ClusterConfig(partitions=0).validate()
    assert not AggregatorConfig().cluster.enabled  # the default stays one process


def test_cluster_section_from_env_and_yaml(tmp_path: Path) -> None:
    env = {"SENTINEL_STORE_URL": "postgresql://db/sentinel", "SENTINEL_CLUSTER_AMQP_URL": BROKER_URL,
           "SENTINEL_CLUSTER_PARTITIONS": "8", "SENTINEL_CLUSTER_HEARTBEAT_TTL_S": "10s"}
    c = load(AggregatorConfig, env=env)
    assert (c.cluster.amqp_url, c.cluster.partitions, c.cluster.heartbeat_ttl_s) == (BROKER_URL, 8, 10.0)
    # The section gets the process settings it needs (not settings of its own).
    assert (c.cluster.store_url, c.cluster.dedup_retention_s) == ("postgresql://db/sentinel", c.journal_retention_s)
    assert c.cluster.enabled
    path = tmp_path / "settings.yaml"
    path.write_text("store_url: postgresql://db/sentinel\ncluster: {amqp_url: 'amqp://h/', prefetch: 64}\n")
    c = load(AggregatorConfig, env={}, config_file=path)
    assert (c.cluster.amqp_url, c.cluster.prefetch) == ("amqp://h/", 64)
    with pytest.raises(ConfigError, match=r"cluster\.prefetch: must be greater than 0"):
        load(AggregatorConfig, env={"SENTINEL_CLUSTER_PREFETCH": "0"})
    assert "cluster.amqp_url" in SECRET_KEYS


async def _delete_queues(prefix: str, partitions: int) -> None:
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        for p in range(partitions):
            await channel.queue_delete(f"{prefix}.p{p}")


@pytest.fixture
async def cluster_settings(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    if not _broker_up():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    prefix = f"sentinel.test.{uuid.uuid4().hex[:10]}"
    with pg_database() as url:
        yield {"store_url": url, "cluster": ClusterConfig(amqp_url=BROKER_URL, queue_prefix=prefix, partitions=8,
                                                          heartbeat_interval_s=0.3, heartbeat_ttl_s=2.0,
                                                          checkpoint_interval_s=0.3),
               "forest": {"enabled": False}}
        await _delete_queues(prefix, 8)


async def _replica(tmp_path: Path, name: str, settings: dict[str, Any]) -> Aggregator:
    agg = Aggregator(AggregatorConfig(listen="127.0.0.1:0", grpc_listen="", data_dir=str(tmp_path / name),
                                      shutdown_grace_s=1.0,
                                      **{**settings, "cluster": dataclasses.replace(settings["cluster"],
                                                                                    replica_id=name)}),
                     registry=CollectorRegistry())
    await agg.start()
    return agg


def _analysed_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(rows), 0) FROM cluster_partitions").fetchone()
    return int(row[0]) if row else 0


async def test_two_replicas_share_partitions_and_analyse_each_row_once(
        tmp_path: Path, cluster_settings: dict[str, Any]) -> None:
    a = await _replica(tmp_path, "a", cluster_settings)
    b = await _replica(tmp_path, "b", cluster_settings)
    try:
        await wait_for(lambda: len(a.cluster.owned) == 4 and len(b.cluster.owned) == 4,  # type: ignore[union-attr]
                       timeout=20, what="partitions spread 4/4")
        sent = 0
        async with httpx.AsyncClient() as client:
            for seq in range(20):
                rows = [r for s in ("checkout", "search", "chat", "billing") for r in _rows(s, T0 + seq, 5, 0)]
                body = wire.encode(FeatureBatch.from_rows(rows), sidecar="s1", seq=seq)
                target = a if seq % 2 else b
                r = await client.post(target.url + "/v1/ingest", content=body, headers=MSGPACK)
                assert r.status_code == 200 and r.json()["status"] == "accepted", r.text
                sent += len(rows)
                # The same batch at the other replica: a duplicate, across replicas.
                r = await client.post((b if seq % 2 else a).url + "/v1/ingest", content=body, headers=MSGPACK)
                assert r.json()["status"] == "duplicate"
            url = cluster_settings["store_url"]
            for _ in range(200):
                if await asyncio.to_thread(_analysed_rows, url) == sent:
                    break
                await asyncio.sleep(0.1)
            assert await asyncio.to_thread(_analysed_rows, url) == sent
            status = (await client.get(a.url + "/api/v1/cluster")).json()
        assert {r["replica"] for r in status["replicas"]} == {"a", "b"}
        assert sorted(p for r in status["replicas"] for p in r["partitions"]) == list(range(8))
        assert all(p["epoch"] >= 1 for p in status["partition_table"])
    finally:
        await b.shutdown()
    # b left gracefully: a takes its partitions, from their checkpoints.
    try:
        await wait_for(lambda: len(a.cluster.owned) == 8, timeout=20, what="a owns all")  # type: ignore[union-attr]
        assert await asyncio.to_thread(_analysed_rows, cluster_settings["store_url"]) == sent
    finally:
        await a.shutdown()


@needs_broker
async def test_ingest_answers_503_when_the_broker_is_down_and_does_not_mark_the_batch_seen(
        tmp_path: Path) -> None:
    # A port bound and not listening: refused at once, and no other test (xdist worker) can take it meanwhile.
    with pg_database() as url, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        settings = {"store_url": url, "forest": {"enabled": False},
                    "cluster": ClusterConfig(amqp_url=f"amqp://guest:guest@127.0.0.1:{port}/", partitions=4)}
        agg = await _replica(tmp_path, "a", settings)
        try:
            body = wire.encode(FeatureBatch.from_rows(_rows("checkout", T0, 3, 0)), sidecar="s1", seq=1)
            async with httpx.AsyncClient(timeout=30) as client:  # a loaded machine: the 503 may be slow
                r = await client.post(agg.url + "/v1/ingest", content=body, headers=MSGPACK)
                assert r.status_code == 503 and r.headers["Retry-After"] == "1"
                assert "not stored: broker unavailable" in r.json()["error"], r.text
                # Within RECONNECT_INTERVAL_S of the failed connection: refused without another attempt.
                again = await client.post(agg.url + "/v1/ingest", content=body, headers=MSGPACK)
            assert again.status_code == 503 and "next attempt in" in again.json()["error"], again.text
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT count(*) FROM cluster_dedup").fetchone() == (0,)
        finally:
            await agg.shutdown()


def _ingest(tmp_path: Path, store_url: str) -> ClusterIngest:
    config = IngestConfig.from_settings(AggregatorConfig(data_dir=str(tmp_path)))
    return ClusterIngest(config, ClusterConfig(amqp_url=BROKER_URL, store_url=store_url),
                         AggregatorMetrics(CollectorRegistry()))


async def test_a_database_found_down_is_refused_at_once_and_probed_until_it_answers(
        tmp_path: Path, pg_url: str) -> None:
    with socket.socket() as closed:  # bound, not listening: refused at once
        closed.bind(("127.0.0.1", 0))
        ingest = _ingest(tmp_path / "a", f"postgresql://postgres@127.0.0.1:{closed.getsockname()[1]}/x")
        ingest._db_down, ingest._next_probe = "connection refused", time.monotonic() + 60
        with pytest.raises(ClusterStoreError, match="cluster database unavailable: connection refused"):
            await ingest._store([])  # before the next probe: refused without asking the pool
        ingest._next_probe = 0.0
        with pytest.raises(ClusterStoreError, match="cluster database unavailable"):
            await ingest._store([])  # the probe's own connection is refused
        assert ingest._next_probe > time.monotonic() and ingest._db_down is not None
    # The database answers: the probe succeeds, the pool is replaced, batches are stored again.
    ingest = _ingest(tmp_path / "b", pg_url)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await create_schema(conn)
    old, ingest._db_down = ingest._pool, "was down"
    try:
        assert await ingest._store([]) == []
        assert ingest._db_down is None and ingest._pool is not old
    finally:
        await ingest._pool.close()


async def test_a_stale_owner_cannot_overwrite_the_checkpoint_and_drops_the_partition(
        tmp_path: Path, cluster_settings: dict[str, Any]) -> None:
    settings = {**cluster_settings,
                "cluster": dataclasses.replace(cluster_settings["cluster"], partitions=8, checkpoint_interval_s=60.0)}
    a = await _replica(tmp_path, "a", settings)
    try:
        coordinator = a.cluster
        assert coordinator is not None
        await wait_for(lambda: len(coordinator.owned) == 8, timeout=20, what="a owns all")
        p = partition_of("checkout", 8)
        epoch = coordinator.epochs[p]
        async with httpx.AsyncClient() as client:
            body = wire.encode(FeatureBatch.from_rows(_rows("checkout", T0, 5, 0)), sidecar="s1", seq=1)
            assert (await client.post(a.url + "/v1/ingest", content=body, headers=MSGPACK)).status_code == 200
        await wait_for(lambda: bool(coordinator.owned[p].unacked), what="the message delivered")
        # Another replica took the partition meanwhile (its epoch is newer): a's checkpoint must not land.
        with psycopg.connect(cluster_settings["store_url"], autocommit=True) as conn:
            conn.execute("UPDATE cluster_partitions SET epoch = epoch + 1, owner = 'b', rows = 0 WHERE partition = %s",
                         (p,))
        assert not await coordinator._checkpoint(p, coordinator.owned[p])
        assert p not in coordinator.owned and p not in coordinator.epochs
        with psycopg.connect(cluster_settings["store_url"]) as conn:
            assert conn.execute("SELECT epoch, owner, rows FROM cluster_partitions WHERE partition = %s",
                                (p,)).fetchone() == (epoch + 1, "b", 0)
        assert coordinator.metrics.fenced._value.get() == 1
    finally:
        await a.shutdown()
