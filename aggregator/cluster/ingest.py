"""``POST /v1/ingest`` in cluster mode: de-duplicated across replicas in PostgreSQL, published per partition.

The handler, its checks and its bounded queue are :class:`aggregator.ingest.service.IngestService`'s;
only storing differs. For a group of batches, in one PostgreSQL transaction: insert each (sidecar,
seq) into ``cluster_dedup`` (a conflict: a duplicate, answered as such), split each new batch by
partition (:func:`aggregator.cluster.partition.split`) and publish its parts persistently, then
wait for the broker's confirms, and only then commit. So a 2xx means "in durable queues and marked
seen"; a publish that fails rolls the insert back (503 with Retry-After: the sidecar retries and
its batch is taken), and a broker or database that is down is a 503 too, never a silent loss.
The one window left is a commit failing after the confirms: the batch is then published and not
marked seen, and its retry is published again — the partition's consumer skips it (the seqs its
checkpoint covers, :mod:`aggregator.cluster.owner`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import psycopg
import psycopg_pool

from aggregator.cluster.broker import Publisher
from aggregator.cluster.config import ClusterConfig
from aggregator.cluster.db import create_schema
from aggregator.cluster.partition import split
from aggregator.ingest.config import IngestConfig
from aggregator.ingest.service import IngestService, _Pending
from aggregator.metrics import AggregatorMetrics
from sentinel.tasks import TaskSupervisor

__all__ = ["ClusterIngest"]

log = logging.getLogger(__name__)

#: Waiting longer than this for a database connection is a failure (503), not a queue.
CONNECT_TIMEOUT_S = 5.0


class ClusterIngest(IngestService):
    """Ingest of a cluster replica: PostgreSQL de-duplication, RabbitMQ partitions (no local journal rows)."""

    def __init__(self, config: IngestConfig, cluster: ClusterConfig, metrics: AggregatorMetrics, *,
                 tasks: TaskSupervisor | None = None) -> None:
        super().__init__(config, metrics, tasks=tasks)
        self.cluster = cluster
        self.publisher = Publisher(cluster)
        self._pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = psycopg_pool.AsyncConnectionPool(
            cluster.store_url, open=False, min_size=1, max_size=4, timeout=CONNECT_TIMEOUT_S,
            kwargs={"autocommit": True})

    async def start(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.cluster.store_url, autocommit=True) as conn:
            await create_schema(conn)
        await self._pool.open(wait=False)
        await super().start()

    async def shutdown(self) -> None:
        await super().shutdown()
        await self.publisher.close()
        await self._pool.close()

    async def _store(self, group: list[_Pending]) -> list[bool]:
        outcomes: list[bool] = []
        async with self._pool.connection() as conn, conn.transaction():
            fresh: list[_Pending] = []
            for p in group:
                e = p.entry
                # Waits on the row lock while another replica holds the same pair uncommitted.
                cur = await conn.execute("INSERT INTO cluster_dedup (sidecar, seq, received_at) VALUES (%s, %s, %s)"
                                         " ON CONFLICT DO NOTHING RETURNING 1", (e.sidecar, e.seq, e.received_at))
                new = await cur.fetchone() is not None
                outcomes.append(new)
                if new:
                    fresh.append(p)
            # Still inside the transaction: the pairs commit only if every part of every batch is confirmed.
            results = await asyncio.gather(*(self.publisher.publish(
                split(p.batch, self.cluster.partitions), sidecar=p.entry.sidecar, seq=p.entry.seq,
                arrival_ns=p.entry.received_at) for p in fresh), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    raise r  # rolls the transaction back: no pair of the group is marked seen
        return outcomes

    async def prune_journal(self) -> int:
        """Forget (sidecar, seq) pairs older than the journal's retention (the local journal is empty)."""
        older_than = time.time_ns() - int(self.cluster.dedup_retention_s * 1e9)
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute("DELETE FROM cluster_dedup WHERE received_at < %s", (older_than,))
                return cur.rowcount
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            log.error("cluster de-duplication retention pass failed: %s", e)
            return 0
