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

A database found down is not waited for by every request (the pool would hold each one for its
whole timeout, 5 s, before the 503: fault 16 in tests/faults/README.md): until a connection of
its own succeeds — tried at most every ``DB_PROBE_INTERVAL_S`` — batches are refused at once, and
then the pool is replaced, since the old one backs its reconnection off to tens of seconds.
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
#: While the database is down, one connection attempt per this long; the batches between are refused at once.
DB_PROBE_INTERVAL_S = 0.5


class ClusterStoreError(Exception):
    """A batch not stored because the cluster's database or broker is unavailable (its message names which)."""


class ClusterIngest(IngestService):
    """Ingest of a cluster replica: PostgreSQL de-duplication, RabbitMQ partitions (no local journal rows)."""

    store_failed = "not stored"

    def __init__(self, config: IngestConfig, cluster: ClusterConfig, metrics: AggregatorMetrics, *,
                 tasks: TaskSupervisor | None = None) -> None:
        super().__init__(config, metrics, tasks=tasks)
        self.cluster = cluster
        self.publisher = Publisher(cluster)
        self._pool = self._new_pool()
        #: Why the database was found down (``None``: it is not known to be), and when to try it next.
        self._db_down: str | None = None
        self._next_probe = 0.0

    def _new_pool(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        return psycopg_pool.AsyncConnectionPool(self.cluster.store_url, open=False, min_size=1, max_size=4,
                                                timeout=CONNECT_TIMEOUT_S, kwargs={"autocommit": True})

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
        if self._db_down is not None:
            await self._probe()
        try:
            return await self._store_group(group)
        except psycopg.OperationalError as e:  # PoolTimeout included: no connection within CONNECT_TIMEOUT_S
            if self._db_down is None:
                log.error("cluster database unavailable (%s): batches refused until it is back", e)
            self._db_down = str(e) or type(e).__name__
            self._next_probe = time.monotonic() + DB_PROBE_INTERVAL_S
            raise ClusterStoreError(f"cluster database unavailable: {self._db_down}") from e
        except psycopg.Error as e:
            raise ClusterStoreError(f"cluster database error: {e}") from e
        except Exception as e:  # the publish: connection refused or lost, no confirm in time, a nack
            raise ClusterStoreError(f"broker unavailable: {e or type(e).__name__}") from e

    async def _probe(self) -> None:
        """Raise unless a fresh connection to the database succeeds; when it does, a fresh pool."""
        now = time.monotonic()
        if now < self._next_probe:
            raise ClusterStoreError(f"cluster database unavailable: {self._db_down}")
        self._next_probe = now + DB_PROBE_INTERVAL_S
        try:
            conn = await psycopg.AsyncConnection.connect(self.cluster.store_url, autocommit=True, connect_timeout=2)
        except psycopg.Error as e:
            self._db_down = str(e) or type(e).__name__
            raise ClusterStoreError(f"cluster database unavailable: {self._db_down}") from e
        await conn.close()
        old, self._pool = self._pool, self._new_pool()
        await self._pool.open(wait=False)
        await old.close(timeout=1.0)  # its connections died with the server; its retries are cancelled
        log.info("cluster database back: batches accepted again")
        self._db_down = None

    async def _store_group(self, group: list[_Pending]) -> list[bool]:
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
