"""What happens to a batch once it is durably accepted: the analysis stage and its consumers.

The ingest worker hands every newly accepted batch (never a duplicate) to :class:`Analysis`,
which feeds it, in commit order, to each :class:`BatchConsumer` on one dedicated thread: their
work (sketches, forests, detectors) is CPU-bound and must neither block the event loop nor run
in parallel with itself. Consumers keep all their state per key, so they can later be
partitioned across replicas.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from sentinel.tasks import TaskSupervisor
from sentinel.wire import WireBatch

__all__ = ["Analysis", "BatchConsumer"]

log = logging.getLogger(__name__)


class BatchConsumer(Protocol):
    """The one method through which accepted batches reach the aggregator's analysis."""

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> None: ...

    def save(self) -> None:
        """Persist state to the data directory (called periodically and at shutdown)."""


class Analysis:
    """Runs consumers on accepted batches, in order, off the event loop; ``start``/``shutdown``."""

    def __init__(self, consumers: Sequence[BatchConsumer], *, save_interval_s: float = 60.0,
                 tasks: TaskSupervisor | None = None) -> None:
        self._consumers = list(consumers)
        self._tasks = tasks if tasks is not None else TaskSupervisor(None, "sentinel_aggregator")
        self._save_interval_s = save_interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator-analysis")
        self._saver: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._stopped = False
        #: Rows (and local anomalies, one each) submitted and not yet consumed: ingest refuses new
        #: batches beyond its limit, so a fleet faster than analysis is slowed at the door instead of
        #: growing this queue without bound.
        self.backlog_rows = 0

    async def start(self) -> None:
        self._saver = self._tasks.spawn("analysis-save", self._save_periodically)

    def submit(self, batch: WireBatch, arrival_ns: int) -> None:
        """Queue ``batch`` for every consumer; returns at once (work runs on the analysis thread)."""
        if self._stopped:
            return
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(self._consume, batch, arrival_ns))
        self._pending.add(future)
        rows = batch.batch.n + len(batch.anomalies)  # an anomaly costs analysis about what a row does
        self.backlog_rows += rows

        def done(f: asyncio.Future[None]) -> None:
            self._pending.discard(f)
            self.backlog_rows -= rows

        future.add_done_callback(done)

    async def between_batches(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the analysis thread after the batches submitted so far and before any later one.

        How a reload changes what consumers read (thresholds, rules) atomically: no batch ever sees
        half of a change.
        """
        await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _consume(self, batch: WireBatch, arrival_ns: int) -> None:
        for consumer in self._consumers:
            try:
                consumer.consume(batch, arrival_ns=arrival_ns)
            except Exception:  # one consumer's bug must not stop the others or lose the batch
                log.exception("%s failed on batch %s/%d", type(consumer).__name__, batch.sidecar, batch.seq)

    def _save(self) -> None:
        for consumer in self._consumers:
            try:
                consumer.save()
            except Exception:
                log.exception("%s could not save its state", type(consumer).__name__)

    async def _save_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._save_interval_s)
            await loop.run_in_executor(self._executor, self._save)

    async def drain(self) -> None:
        """Wait until every submitted batch has been consumed."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def shutdown(self) -> None:
        """Finish queued work, save every consumer's state; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        await self.drain()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._save)
        for consumer in self._consumers:
            close = getattr(consumer, "shutdown", None)  # consumers with threads of their own
            if callable(close):
                await loop.run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)
