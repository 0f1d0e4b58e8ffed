"""What waits for the forwarder: a bounded memory queue of sealed batches, backed by the spool.

* ``sidecar`` mode: batches go to memory; when memory is full they spill to the spool (if one is
  configured), otherwise exports are refused with UNAVAILABLE so the app's SDK retries — memory
  never grows past ``queue_max_batches``.
* ``store-and-forward`` mode: every batch is written to the spool (``durable=True``) before the
  export is acknowledged; the forwarder reads the spool in order.

The forwarder takes the oldest item with :meth:`get` and removes it only with :meth:`ack` (or
:meth:`drop`), so a batch whose send is interrupted is sent again with the same ``seq``.
Memory items go before spooled ones; spilled batches can therefore arrive after younger ones,
which the aggregator handles (it keys on event time and de-duplicates on ``seq``).

Spool calls block on disk, so they run on one dedicated thread, which also keeps them ordered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sidecar.metrics import SidecarMetrics
from sidecar.spool import Spool, SpoolFullError, SpoolRecord

__all__ = ["ForwardQueue", "QueueItem", "SealedBatch", "SpoolRefused"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long /readyz names a failed spool append (as a failed task is named until it has run 10 s).
SPOOL_ERROR_SHOWN_S = 10.0


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """One encoded wire body and what the queue needs to know about it."""

    seq: int
    rows: int
    body: bytes


@dataclass(frozen=True, slots=True)
class QueueItem:
    batch: SealedBatch
    record: SpoolRecord | None  # set when the item was read from the spool


class SpoolRefused(Exception):
    """The spool is full under the ``refuse`` policy, or cannot be written (retryable: UNAVAILABLE).

    ``reason`` is the ``dropped_rows_total`` reason for rows already acknowledged that it costs.
    """

    def __init__(self, message: str, *, reason: str = "spool_full") -> None:
        super().__init__(message)
        self.reason = reason


class ForwardQueue:
    def __init__(
        self,
        *,
        max_batches: int,
        spool: Spool | None,
        metrics: SidecarMetrics,
        enabled: bool = True,
    ) -> None:
        self._max = max_batches
        self._spool = spool
        self._metrics = metrics
        self._enabled = enabled
        self._mem: collections.deque[SealedBatch] = collections.deque()
        self._changed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool") if spool else None
        self._spool_refusing = False
        #: Why the last spool append failed (a directory gone read-only, a disk error); "" once one
        #: succeeds again. /readyz names it (:meth:`spool_problem`): every export is refused meanwhile
        #: in store-and-forward.
        self.spool_error = ""
        self._spool_failed_at = -math.inf
        self._closed = False
        # The spool record the forwarder holds (it keeps its own copy of the body): dropping it to
        # make room does not lose it unless its delivery then fails, so it is counted only then.
        self._inflight: SpoolRecord | None = None
        self._inflight_dropped = False

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @property
    def memory_batches(self) -> int:
        return len(self._mem)

    def has_capacity(self) -> bool:
        """Whether a new export can be taken without breaking the memory or spool bound."""
        if not self._enabled:
            return True
        if self._spool is not None:
            return not self._spool_refusing
        return len(self._mem) < self._max

    def spool_problem(self) -> str:
        """The spool's last write error while it is recent (``SPOOL_ERROR_SHOWN_S``), else ``""``.

        Time-bounded, not only cleared by the next good append: a pod taken out of service by its
        readiness gets no exports to prove the spool writable again.
        """
        if self.spool_error and time.monotonic() - self._spool_failed_at < SPOOL_ERROR_SHOWN_S:
            return self.spool_error
        return ""

    def retry_after_s(self) -> float:
        return 2.0

    async def put(self, batch: SealedBatch, *, durable: bool) -> None:
        if not self._enabled:
            self._metrics.dropped_rows.labels("no_aggregator").inc(batch.rows)
            return
        if durable or (len(self._mem) >= self._max and self._spool is not None):
            await self._append_to_spool(batch)
        elif len(self._mem) >= self._max:
            # Admission (has_capacity) was checked when the export arrived; the rows were
            # acknowledged, so they are kept beyond queue_max_batches rather than dropped. New
            # exports are refused until the queue is below it again; the excess is bounded by the
            # receive queue's bytes.
            self._mem.append(batch)
            self._metrics.queue_batches.set(len(self._mem))
        else:
            self._mem.append(batch)
            self._metrics.queue_batches.set(len(self._mem))
        self._changed.set()

    async def _append_to_spool(self, batch: SealedBatch) -> None:
        assert self._spool is not None
        try:
            dropped = await self._run(self._spool.append, batch.body, rows=batch.rows, seq=batch.seq)
        except SpoolFullError:
            self._spool_refusing = True
            raise SpoolRefused("spool full") from None
        except OSError as e:
            self._spool_write_failed(e)
            raise SpoolRefused(f"spool cannot be written ({self.spool_error})", reason="spool_error") from None
        if self.spool_error:
            log.warning("spool writable again")
            self.spool_error = ""
        for d in dropped:
            if self._inflight is not None and d.seq == self._inflight.seq:
                self._inflight_dropped = True  # the forwarder still delivers it: counted only if that fails
                continue
            self._metrics.dropped_rows.labels("spool_full").inc(d.rows)
        if dropped:
            log.warning("spool full: dropped the %d oldest batches", len(dropped))
        self._update_spool_gauges()

    def _spool_write_failed(self, e: OSError) -> None:
        """Count and show a failed spool write (an append, or the cursor written by an ack)."""
        self._metrics.spool_write_errors.inc()
        if not self.spool_error:  # once per episode, not a traceback per request
            log.error("spool cannot be written: %s; exports are refused until it can", e)
        self.spool_error = f"{type(e).__name__}: {e}"
        self._spool_failed_at = time.monotonic()

    def _update_spool_gauges(self) -> None:
        if self._spool is not None:
            self._metrics.spool_bytes.set(self._spool.bytes_used)
            self._metrics.spool_records.set(self._spool.pending_records)

    async def get(self) -> QueueItem:
        """The oldest batch not yet acknowledged; waits until there is one."""
        while True:
            if self._mem:
                return QueueItem(self._mem[0], None)
            if self._spool is not None and self._spool.pending_records:
                rec: SpoolRecord | None = await self._run(self._spool.peek)
                if rec is not None:
                    if self._inflight is None or self._inflight.seq != rec.seq:
                        self._inflight, self._inflight_dropped = rec, False
                    return QueueItem(SealedBatch(seq=rec.seq, rows=rec.rows, body=rec.body), rec)
            self._changed.clear()
            await self._changed.wait()

    async def ack(self, item: QueueItem) -> None:
        await self._remove(item)

    async def drop(self, item: QueueItem, reason: str) -> None:
        self._metrics.dropped_rows.labels(reason).inc(item.batch.rows)
        if item.record is not None and self._inflight_dropped and self._inflight is item.record:
            self._inflight_dropped = False  # counted once, under this reason
        await self._remove(item)

    async def _remove(self, item: QueueItem) -> None:
        if item.record is None:
            if self._mem and self._mem[0] is item.batch:
                self._mem.popleft()
                self._metrics.queue_batches.set(len(self._mem))
        else:
            try:
                await self._run(self._spool.ack, item.record)  # type: ignore[union-attr]
            except OSError as e:
                # The cursor could not be written (the directory became read-only after the segment
                # was opened, so appends still succeed): shown as the spool's problem in /readyz,
                # then raised so the supervised forwarder backs off and retries the ack.
                self._spool_write_failed(e)
                raise
            if self._inflight is item.record:
                self._inflight, self._inflight_dropped = None, False
            self._spool_refusing = False
            self._update_spool_gauges()

    def pending(self) -> int:
        """Batches waiting (memory and spool)."""
        return len(self._mem) + (self._spool.pending_records if self._spool else 0)

    async def close(self) -> None:
        """Spill what memory holds to the spool (or count it dropped) and close; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._inflight is not None and self._inflight_dropped:  # dropped for room and never delivered
            self._metrics.dropped_rows.labels("spool_full").inc(self._inflight.rows)
            self._inflight, self._inflight_dropped = None, False
        while self._mem:
            batch = self._mem.popleft()
            if self._spool is None:
                self._metrics.dropped_rows.labels("shutdown").inc(batch.rows)
                continue
            try:
                await self._append_to_spool(batch)
            except SpoolRefused:
                self._metrics.dropped_rows.labels("shutdown").inc(batch.rows)
        self._metrics.queue_batches.set(0)
        if self._spool is not None:
            await self._run(self._spool.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
