"""The analysis tier of a cluster replica: which partitions it owns, their pipelines and checkpoints.

Ownership (all in PostgreSQL and RabbitMQ, nothing home-made):

- every replica renews a heartbeat row (``cluster_replicas``) each ``cluster.heartbeat_interval_s``;
  the live replicas are those seen within ``cluster.heartbeat_ttl_s``, and a replica owns at most
  ``ceil(partitions / live)``: it releases the excess (highest numbers first) and takes free
  partitions up to it, so partitions spread when a replica joins and move when one leaves or dies;
- a partition is owned by whoever holds its session advisory lock; PostgreSQL drops the locks of a
  replica whose connection ends (SIGKILL included), so the others can take them at once (their
  share grows once the dead replica's heartbeat expires);
- taking a partition increments its ``epoch`` (the fencing token); its checkpoints are written only
  under that epoch, and a replica whose write finds another epoch has lost it and drops it unacked;
- the partition's queue is consumed with ``x-single-active-consumer``: even two replicas believing
  they own it would not both get its messages.

Per owned partition a :class:`aggregator.cluster.checkpoint.Partition` (the analysis pipeline, one
instance each), fed on the replica's one analysis thread. Every ``cluster.checkpoint_interval_s``
each partition with new messages is checkpointed and, once the checkpoint is written, its messages
are acknowledged (one ``basic.ack`` with ``multiple``): a replica dying after a checkpoint but
before the ack has its messages redelivered to the next owner, which skips those its checkpoint
covers; one dying before the checkpoint has them analysed again from the previous checkpoint's
state. Either way each acknowledged row is counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.pipeline import Consumer
from aggregator.cluster.broker import declare_queue
from aggregator.cluster.checkpoint import Partition
from aggregator.cluster.config import ClusterConfig
from aggregator.cluster.db import create_schema, lock_namespace

__all__ = ["Coordinator"]

log = logging.getLogger(__name__)

HANDOFF_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)


@dataclass
class _Owned:
    partition: Partition
    channel: aio_pika.abc.AbstractChannel
    queue: aio_pika.abc.AbstractQueue
    tag: str = ""
    unacked: list[aio_pika.abc.AbstractIncomingMessage] = field(default_factory=list)
    pending: set[asyncio.Future[None]] = field(default_factory=set)
    checkpoint_at: float = field(default_factory=time.time)
    reported_rows: int = 0
    reported_skipped: int = 0
    reported_replayed: int = 0


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        p = "sentinel_aggregator_cluster_"
        self.owned = Gauge(p + "partitions_owned", "Partitions this replica owns (analyses)", registry=registry)
        self.live = Gauge(p + "live_replicas", "Replicas with a heartbeat within cluster.heartbeat_ttl_s",
                          registry=registry)
        self.checkpoint_age = Gauge(p + "checkpoint_age_seconds", "Age of the oldest checkpoint among the "
                                    "partitions owned (what a takeover would replay)", registry=registry)
        self.handoff = Histogram(p + "handoff_seconds", "From a partition's release (or its owner's last "
                                 "heartbeat) to this replica consuming it", buckets=HANDOFF_BUCKETS,
                                 registry=registry)
        self.rows = Counter(p + "rows_analysed", "Rows analysed in owned partitions (after a takeover, rows "
                            "since the partition's checkpoint are analysed again)", registry=registry)
        self.replayed = Counter(p + "replayed_rows", "Rows of redelivered messages analysed (their previous "
                                "owner stopped before checkpointing them)", registry=registry)
        self.skipped = Counter(p + "skipped_rows", "Rows of redelivered or re-published messages skipped: "
                               "their partition's checkpoint already covers them", registry=registry)
        self.takeovers = Counter(p + "partition_takeovers", "Partitions taken by this replica", registry=registry)
        self.fenced = Counter(p + "fenced_checkpoints", "Checkpoints refused because another replica took the "
                              "partition (epoch moved on); the partition is dropped unacknowledged",
                              registry=registry)


class Coordinator:
    """Owns partitions, runs their pipelines, checkpoints them; ``await start()``, ``await shutdown()``.

    ``build(directory)`` makes the consumers of one partition's pipeline with their state in
    ``directory``; their candidates go to ``on_candidates``; ``url`` is this replica's API URL
    (shown in ``GET /api/v1/cluster``); ``summarise(consumers)`` the summary written with each checkpoint.
    """

    def __init__(self, config: ClusterConfig, data_dir: str | Path, build: Callable[[Path], Sequence[Consumer]],
                 on_candidates: Callable[[list[Candidate]], None], *, registry: CollectorRegistry | None = None,
                 url: Callable[[], str] = lambda: "",
                 summarise: Callable[[Sequence[Consumer]], bytes] | None = None) -> None:
        self.config = config
        self.replica = config.replica()
        self.directory = Path(data_dir) / "partitions"
        self._build = build
        self._on_candidates = on_candidates
        self._url = url
        self._summarise = summarise
        self.metrics = _Metrics(registry)
        self.metrics.checkpoint_age.set_function(self._checkpoint_age)
        self.owned: dict[int, _Owned] = {}
        self.epochs: dict[int, int] = {}
        self._namespace = lock_namespace(config.queue_prefix)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-analysis")
        self._db: psycopg.AsyncConnection[Any] | None = None
        self._amqp: aio_pika.abc.AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._next_heartbeat = 0.0
        self._stopping = False
        #: Set once this replica has rebalanced at least once (readiness).
        self.balanced = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start coordinating; a database or broker that is down is retried in the background (logged)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="cluster-coordinator")

    async def shutdown(self) -> None:
        """Release every partition (checkpointed and acknowledged), remove the heartbeat, close."""
        if self._stopping:
            return
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for p in sorted(self.owned):
            try:
                await self._release(p)
            except Exception as e:  # the next owner replays from the last checkpoint: nothing is lost
                log.warning("partition %d: release at shutdown failed (%s)", p, e)
                await self._drop(p)
        with contextlib.suppress(psycopg.Error):
            if self._db is not None and not self._db.closed:
                await self._db.execute("DELETE FROM cluster_replicas WHERE replica = %s", (self.replica,))
        await self._disconnect()
        self._executor.shutdown(wait=True)

    async def _connect(self) -> None:
        if self._db is None or self._db.closed:
            self._db = await psycopg.AsyncConnection.connect(self.config.store_url, autocommit=True,
                                                             connect_timeout=5)
            await create_schema(self._db)
        if self._amqp is None or self._amqp.is_closed:
            self._amqp = await aio_pika.connect(self.config.amqp_url, timeout=10)

    async def _disconnect(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(psycopg.Error):
                await db.close()
        amqp, self._amqp = self._amqp, None
        if amqp is not None and not amqp.is_closed:
            with contextlib.suppress(Exception):
                await amqp.close()

    async def _run(self) -> None:
        tick = min(self.config.heartbeat_interval_s, self.config.checkpoint_interval_s) / 2
        while True:
            try:
                await self._connect()
                for p in [p for p, o in self.owned.items() if o.channel.is_closed]:
                    # The broker closed the channel (or the connection): its unacknowledged messages went
                    # back to the queue. Dropped, and taken again from its checkpoint at the next rebalance.
                    log.warning("partition %d: its channel closed; dropped until taken again", p)
                    await self._drop(p)
                await self._checkpoint_due()
                if time.monotonic() >= self._next_heartbeat:
                    await self._rebalance()
                    self._next_heartbeat = time.monotonic() + self.config.heartbeat_interval_s
                    self.balanced.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # database or broker lost: its locks (or channels) are gone with it
                log.error("cluster coordination failed (%s); dropping %d partitions, reconnecting", e,
                          len(self.owned))
                for p in list(self.owned):
                    await self._drop(p)
                await self._disconnect()
                await asyncio.sleep(self.config.heartbeat_interval_s)
            self.metrics.owned.set(len(self.owned))
            await asyncio.sleep(tick)

    async def between_batches(self, fn: Callable[[Partition], None]) -> None:
        """Run ``fn`` on each owned partition, on the analysis thread between two of its messages (a reload)."""
        loop = asyncio.get_running_loop()
        for owned in list(self.owned.values()):
            await loop.run_in_executor(self._executor, fn, owned.partition)

    def partitions(self) -> list[Partition]:
        """The analysis of each partition owned now (read them on the analysis thread, or only counters)."""
        return [o.partition for o in list(self.owned.values())]

    # -- ownership -------------------------------------------------------------------------------

    def _conn(self) -> psycopg.AsyncConnection[Any]:
        if self._db is None:
            raise RuntimeError("not connected to PostgreSQL")
        return self._db

    async def _heartbeat(self) -> None:
        await self._conn().execute("INSERT INTO cluster_replicas (replica, url) VALUES (%s, %s) ON CONFLICT "
                                   "(replica) DO UPDATE SET seen_at = now(), url = EXCLUDED.url",
                                   (self.replica, self._url()))

    async def _between_takes(self) -> None:
        """Housekeeping between two takes of one rebalance. A take waits for its checkpoint to be restored
        on the analysis thread, behind the redelivered messages of the partitions taken just before it,
        so taking a dead replica's share can last longer than ``heartbeat_ttl_s``: without this the
        taker's own heartbeat expired meanwhile (the others saw it dead too) and its partitions' checkpoints
        and acknowledgements stopped (their prefetch filled)."""
        if time.monotonic() >= self._next_heartbeat:
            await self._heartbeat()
            self._next_heartbeat = time.monotonic() + self.config.heartbeat_interval_s
        await self._checkpoint_due()

    async def _rebalance(self) -> None:
        db = self._conn()
        await self._heartbeat()
        ttl = self.config.heartbeat_ttl_s
        cur = await db.execute("SELECT count(*) FROM cluster_replicas WHERE seen_at > now() - make_interval("
                               "secs => %s)", (ttl,))
        row = await cur.fetchone()
        live = max(1, int(row[0]) if row else 1)
        self.metrics.live.set(live)
        await db.execute("DELETE FROM cluster_replicas WHERE seen_at < now() - make_interval(secs => %s)",
                         (ttl * 60,))
        cap = math.ceil(self.config.partitions / live)
        for p in sorted(self.owned)[cap:]:
            await self._release(p)
            await self._between_takes()
        if len(self.owned) >= cap:
            return
        n = self.config.partitions
        start = zlib.crc32(self.replica.encode()) % n  # replicas starting together try different partitions first
        for p in ((start + i) % n for i in range(n)):
            if len(self.owned) >= cap:
                break
            if p in self.owned:
                continue  # advisory locks stack within a session: never take one twice
            cur = await db.execute("SELECT pg_try_advisory_lock(%s, %s)", (self._namespace, p))
            got = await cur.fetchone()
            if got and got[0]:
                try:
                    await self._take(p)
                except BaseException:
                    if p not in self.owned:
                        with contextlib.suppress(psycopg.Error):
                            await db.execute("SELECT pg_advisory_unlock(%s, %s)", (self._namespace, p))
                    raise
                await self._between_takes()

    async def _take(self, p: int) -> None:
        db = self._conn()
        cur = await db.execute(
            "SELECT c.owner, extract(epoch FROM c.released_at), extract(epoch FROM r.seen_at) "
            "FROM cluster_partitions c LEFT JOIN cluster_replicas r ON r.replica = c.owner WHERE c.partition = %s",
            (p,))
        before = await cur.fetchone()
        cur = await db.execute(
            "INSERT INTO cluster_partitions (partition, epoch, owner, taken_at) VALUES (%s, 1, %s, now()) "
            "ON CONFLICT (partition) DO UPDATE SET epoch = cluster_partitions.epoch + 1, owner = EXCLUDED.owner, "
            "taken_at = now(), released_at = NULL RETURNING epoch, state", (p, self.replica))
        row = await cur.fetchone()
        assert row is not None
        epoch, blob = int(row[0]), row[1]
        loop = asyncio.get_running_loop()
        directory = self.directory / str(p)
        try:
            partition = await loop.run_in_executor(self._executor, Partition.open, p, epoch, directory, blob,
                                                   self._build, self._on_candidates)
        except ValueError as e:  # a checkpoint of another format: this partition starts afresh
            log.error("partition %d: checkpoint unusable (%s); starting afresh", p, e)
            partition = await loop.run_in_executor(self._executor, Partition.open, p, epoch, directory, None,
                                                   self._build, self._on_candidates)
        if self._amqp is None:
            raise RuntimeError("not connected to RabbitMQ")
        channel = await self._amqp.channel()
        await channel.set_qos(prefetch_count=self.config.prefetch)
        queue = await declare_queue(channel, self.config.queue(p))
        owned = _Owned(partition, channel, queue, reported_rows=partition.counts.rows)
        self.owned[p] = owned
        self.epochs[p] = epoch
        async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            self._received(owned, message)

        owned.tag = await queue.consume(received)
        self.metrics.takeovers.inc()
        if before is not None:  # taken from someone: since its release, or its owner's last heartbeat
            since = before[2] if before[0] else before[1]
            if since is not None:
                self.metrics.handoff.observe(max(0.0, time.time() - float(since)))
        log.info("partition %d taken (epoch %d, %d rows analysed so far)", p, epoch, partition.counts.rows)

    def _received(self, owned: _Owned, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if owned.channel.is_closed:
            return
        owned.unacked.append(message)  # first, before any await: the list is in delivery order
        headers = message.headers or {}
        arrival = headers.get("arrival_ns")
        arrival_ns = arrival if isinstance(arrival, int) else time.time_ns()
        future = asyncio.get_running_loop().run_in_executor(self._executor, self._consume, owned.partition,
                                                            message.body, arrival_ns, message.redelivered)
        owned.pending.add(future)
        future.add_done_callback(owned.pending.discard)

    def _consume(self, partition: Partition, body: bytes, arrival_ns: int, redelivered: bool | None) -> None:
        try:
            partition.consume(body, arrival_ns, redelivered=bool(redelivered))
        except Exception:  # a body no replica could decode: dropped (acknowledged) rather than blocking the queue
            log.exception("partition %d: message could not be analysed", partition.number)

    # -- checkpoints -----------------------------------------------------------------------------

    def _checkpoint_age(self) -> float:
        if not self.owned:
            return 0.0
        return max(0.0, time.time() - min(o.checkpoint_at for o in self.owned.values()))

    async def _checkpoint_due(self) -> None:
        now = time.time()
        for p, owned in list(self.owned.items()):
            # Early when half the prefetch is unacknowledged: the broker stops delivering at the full prefetch.
            if (now - owned.checkpoint_at >= self.config.checkpoint_interval_s
                    or len(owned.unacked) >= max(1, self.config.prefetch // 2)):
                await self._checkpoint(p, owned)

    def _snapshot(self, partition: Partition) -> tuple[bytes, bytes | None, int, int, int, int]:
        c = partition.counts
        summary = None
        if self._summarise is not None:
            try:
                summary = self._summarise(partition.consumers)
            except Exception:  # the API's view of this partition lags; the checkpoint itself must not fail
                log.exception("partition %d: summary failed; the previous one is kept", partition.number)
        return partition.checkpoint(), summary, c.rows, c.batches, partition.skipped_rows, partition.replayed_rows

    async def _checkpoint(self, p: int, owned: _Owned) -> bool:
        """Checkpoint ``owned`` and acknowledge what it covers; False when the partition was fenced."""
        if not owned.unacked:
            owned.checkpoint_at = time.time()
            return True
        messages, owned.unacked = owned.unacked, []
        loop = asyncio.get_running_loop()
        try:
            # Queued behind the consumption of every message in ``messages``: the state covers them all.
            blob, summary, rows, batches, skipped, replayed = await loop.run_in_executor(
                self._executor, self._snapshot, owned.partition)
        except Exception:
            owned.unacked = messages + owned.unacked
            log.exception("partition %d: checkpoint failed; its messages stay unacknowledged", p)
            return True
        cur = await self._conn().execute(
            "UPDATE cluster_partitions SET state = %s, summary = coalesce(%s, summary), rows = %s, batches = %s, "
            "checkpoint_at = now() WHERE partition = %s AND epoch = %s AND owner = %s",
            (blob, summary, rows, batches, p, owned.partition.epoch, self.replica))
        if cur.rowcount != 1:
            self.metrics.fenced.inc()
            log.warning("partition %d: taken by another replica (epoch moved on); dropped", p)
            await self._drop(p)
            return False
        if not owned.channel.is_closed:
            await messages[-1].ack(multiple=True)
        owned.checkpoint_at = time.time()
        self.metrics.skipped.inc(skipped - owned.reported_skipped)
        self.metrics.replayed.inc(replayed - owned.reported_replayed)
        owned.reported_skipped, owned.reported_replayed = skipped, replayed
        self.metrics.rows.inc(rows - owned.reported_rows)
        owned.reported_rows = rows
        return True

    async def _release(self, p: int) -> None:
        """Stop consuming ``p``, checkpoint and acknowledge what was analysed, then free it for another replica."""
        owned = self.owned[p]
        if not owned.channel.is_closed:
            await owned.queue.cancel(owned.tag)
        while owned.pending:
            await asyncio.gather(*list(owned.pending), return_exceptions=True)
        if not await self._checkpoint(p, owned):
            return
        await self._conn().execute("UPDATE cluster_partitions SET owner = '', released_at = now() "
                                   "WHERE partition = %s AND epoch = %s", (p, owned.partition.epoch))
        await self._drop(p)
        log.info("partition %d released", p)

    async def _drop(self, p: int) -> None:
        """Forget ``p`` without acknowledging: its unacknowledged messages go back to the queue."""
        owned = self.owned.pop(p, None)
        self.epochs.pop(p, None)
        if owned is None:
            return
        with contextlib.suppress(Exception):
            if not owned.channel.is_closed:
                await owned.channel.close()  # unacknowledged messages are requeued
        while owned.pending:
            await asyncio.gather(*list(owned.pending), return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(self._executor, owned.partition.shutdown)
        if self._db is not None and not self._db.closed:
            with contextlib.suppress(psycopg.Error):
                await self._db.execute("SELECT pg_advisory_unlock(%s, %s)", (self._namespace, p))
        self.metrics.owned.set(len(self.owned))
