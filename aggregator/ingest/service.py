"""``POST /v1/ingest``: check, decode and measure a wire batch, then commit it to the journal.

The handler is thin: authenticate, check the media type and size, decode with
:func:`sentinel.wire.decode`, count late rows, and hand the batch to one bounded queue. A single
worker takes batches off the queue in arrival order and commits them, a group at a time, on one
dedicated thread (SQLite stays off the event loop and writes stay ordered). The handler answers
only once its batch is committed, so a 2xx always means "durably stored".

Errors are classified once: bad input is permanent (401, 413, 415, 400: the sidecar drops the
batch and counts it); overload and storage failures are retryable (503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

from aggregator.analysis.pipeline import Analysis
from aggregator.ingest.auth import (
    ANY_SIDECAR,
    IngestTokens,
    ServiceBinding,
    parse_sidecar_services,
    parse_sidecar_tokens,
    unbound_anomalies,
)
from aggregator.ingest.clock_check import ClockCheck
from aggregator.ingest.config import IngestConfig
from aggregator.ingest.event_time import clamp_future
from aggregator.ingest.journal import IngestJournal, JournalEntry, is_full
from aggregator.metrics import AggregatorMetrics
from sentinel import service, wire
from sentinel.tasks import TaskSupervisor

__all__ = ["IngestService", "late_rows"]

log = logging.getLogger(__name__)

#: Most batches committed in one transaction (group commit when batches queue up).
GROUP_MAX = 64


def late_rows(time_unix_nano: npt.NDArray[np.int64], *, arrival_ns: int, late_after_ns: int) -> int:
    """Rows whose event time is older than ``arrival_ns - late_after_ns``.

    >>> late_rows(np.array([0, 10, 20], dtype=np.int64), arrival_ns=25, late_after_ns=10)
    2
    """
    return int(np.count_nonzero(time_unix_nano < arrival_ns - late_after_ns))


@dataclass
class _Pending:
    entry: JournalEntry
    batch: wire.WireBatch
    done: asyncio.Future[bool]
    future_rows: int = 0
    #: Local anomalies dropped for naming a service none of the batch's rows has.
    unbound_anomalies: int = 0
    #: Rows plus anomalies reserved against analysis_queue_max_rows until analysis owns them.
    reserved: int = 0


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "error", "error": message}, status=status, headers=headers)


class IngestService:
    """The ingest handler, its bounded queue, the journal worker and the journal retention timer.

    ``await start()`` opens the journal; ``await shutdown()`` (idempotent) stops the worker once
    the queue is empty and closes it. :meth:`handle` is the aiohttp handler for ``/v1/ingest``.
    """

    #: What a failed :meth:`_store` is called in its 503 and its log line (cluster ingest stores elsewhere).
    store_failed = "journal commit failed"

    def __init__(
        self,
        config: IngestConfig,
        metrics: AggregatorMetrics,
        *,
        clock: Callable[[], int] = time.time_ns,
        analysis: Analysis | None = None,
        tasks: TaskSupervisor | None = None,
    ) -> None:
        self.config = config
        self._tasks = tasks if tasks is not None else TaskSupervisor(None, "sentinel_aggregator")
        self.analysis = analysis
        self.metrics = metrics
        self.journal = IngestJournal(config.data_dir, dedup_window=config.dedup_window)
        self._clock = clock
        self._tokens = IngestTokens(config.tokens, parse_sidecar_tokens(config.sidecar_tokens))
        self._services = ServiceBinding(parse_sidecar_services(config.sidecar_services))
        self._late_after_ns = int(config.late_after_s * 1e9)
        self._max_skew_ns = int(config.max_future_skew_s * 1e9)
        self._future_warned_at = -math.inf
        #: The fleet's view of this aggregator's clock (arrival minus seal time, median over sidecars).
        self.clock_check = ClockCheck(config.clock_offset_warn_s)
        self._retry_after = {"Retry-After": str(config.retry_after_s)}
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=config.ingest_queue_max_batches)
        # One thread: SQLite work is serialised and runs in the order it was submitted.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator-journal")
        self._commit_gate = asyncio.Lock()
        self._worker: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._held = 0
        self._reserved = 0  # rows + anomalies of batches decoded and not yet handed to analysis
        self._opened = False
        self._stopped = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._in_thread(self.journal.open)
        self._opened = True
        self._worker = self._tasks.spawn("ingest-worker", self._work)
        self._pruner = self._tasks.spawn("journal-prune", self._prune_periodically)
        log.info("ingest journal %s", self.journal.path)

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._commit_gate.locked():
            self._commit_gate.release()
        if self._worker is not None:
            # Whatever is still queued gets committed (its handler may be gone, the sidecar then
            # retries and is answered "duplicate"), bounded by the queue's size.
            await self._queue.join()
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._opened:
            await self._in_thread(self.journal.close)
        self._executor.shutdown(wait=True)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- test seam -------------------------------------------------------------------------------

    async def pause(self) -> None:
        """Hold the worker before its next commit, so the queue fills (tests use it to see 503)."""
        await self._commit_gate.acquire()

    def set_tokens(self, tokens: list[str], sidecar_tokens: dict[str, Any]) -> None:
        """Replace the ingest tokens (a reload): one assignment, so a request is checked against old or new."""
        self._tokens = IngestTokens(tokens, parse_sidecar_tokens(sidecar_tokens))

    def resume(self) -> None:
        if self._commit_gate.locked():
            self._commit_gate.release()

    @property
    def queued(self) -> int:
        """Batches in the queue, not yet taken by the worker."""
        return self._queue.qsize()

    @property
    def held(self) -> int:
        """Batches taken by the worker and not yet committed."""
        return self._held

    # -- the handler -----------------------------------------------------------------------------

    def _refuse(self, outcome: str, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.batches_received.labels(outcome).inc()
        return _error(status, message, headers)

    async def handle(self, request: web.Request) -> web.Response:
        arrival = self._clock()
        scope = ANY_SIDECAR
        if self._tokens.enabled:
            found = self._tokens.scope(request.headers.get("Authorization", ""))
            if found is None:
                return self._refuse("unauthorized", 401, "missing or wrong bearer token",
                                    {"WWW-Authenticate": 'Bearer realm="sentinel"'})
            scope = found
        if request.content_type != wire.CONTENT_TYPE:
            return self._refuse("unsupported", 415, f"Content-Type must be {wire.CONTENT_TYPE}, "
                                f"got {request.content_type!r}")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            return self._refuse("unsupported", 415, f"Content-Encoding must be identity, got {encoding!r}")
        limit = self.config.max_body_bytes
        too_large = f"body is larger than max_body_bytes ({limit})"
        if request.content_length is not None and request.content_length > limit:
            return self._refuse("too_large", 413, too_large)
        if self._stopped:
            return self._refuse("overloaded", 503, "aggregator is shutting down, retry later", self._retry_after)
        if self._queue.full():
            return self._refuse("overloaded", 503, "ingest queue is full, retry later", self._retry_after)
        if self._analysis_behind():
            return self._analysis_refusal()
        try:
            async with asyncio.timeout(service.BODY_TIMEOUT_S):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._refuse("too_large", 413, too_large)
        except TimeoutError:
            return self._refuse("timeout", 408, f"body not received within {service.BODY_TIMEOUT_S:g} s",
                                {"Connection": "close"})
        if len(body) > limit:
            return self._refuse("too_large", 413, too_large)
        try:
            batch = wire.decode(body, max_anomalies=self.config.max_anomalies_per_batch)
        except wire.WireFormatError as e:
            return self._refuse("invalid", 400, str(e))
        if not IngestTokens.covers(scope, batch.sidecar):
            return self._refuse("forbidden", 403, f"this token may not send batches as sidecar {batch.sidecar!r} "
                                f"(sidecar_tokens binds it to {', '.join(scope)})")
        if self._services.enabled and batch.batch.n:
            other = self._services.forbidden(batch.sidecar, batch.batch.strings["service"])
            if other is not None:
                return self._refuse("forbidden", 403, f"sidecar {batch.sidecar!r} may not report service {other!r} "
                                    "(sidecar_services)")
        unbound = unbound_anomalies(batch)
        future = clamp_future(batch, arrival_ns=arrival, max_skew_ns=self._max_skew_ns)
        entry = JournalEntry(
            sidecar=batch.sidecar,
            seq=batch.seq,
            received_at=arrival,
            created_unix_nano=batch.created_unix_nano,
            rows=batch.batch.n,
            late_rows=late_rows(batch.batch.numeric["time_unix_nano"], arrival_ns=arrival,
                                late_after_ns=self._late_after_ns),
            body=body,
        )
        # Checked again now that the batch's size is known, and reserved in the same step (no await
        # in between): concurrent requests that all passed the first check cannot together overshoot.
        if self._analysis_behind():
            return self._analysis_refusal()
        pending = _Pending(entry, batch, asyncio.get_running_loop().create_future(), future, unbound)
        self._reserve(pending, batch.batch.n + len(batch.anomalies))
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            self._release(pending)
            return self._refuse("overloaded", 503, "ingest queue is full, retry later", self._retry_after)
        self._update_gauge()
        try:
            stored = await asyncio.shield(pending.done)
        except Exception as e:  # set by the worker: the commit failed, nothing was stored
            return self._refuse("error", 503, f"{self.store_failed}: {e}", self._retry_after)
        if not stored:
            return web.json_response({"status": "duplicate"})
        return web.json_response({"status": "accepted", "rows": entry.rows, "late_rows": entry.late_rows,
                                  "future_rows": pending.future_rows})

    def _analysis_behind(self) -> bool:
        """Whether analysis is ``analysis_queue_max_rows`` behind, counting batches reserved for it.

        A batch taken below the bound may end above it, by at most one batch: a bound of rows must
        not refuse for ever a batch larger than itself.
        """
        if self.analysis is None:
            return False
        return self.analysis.backlog_rows + self._reserved >= self.config.analysis_queue_max_rows

    def _analysis_refusal(self) -> web.Response:
        return self._refuse("overloaded", 503, "analysis is behind (analysis_queue_max_rows), retry later",
                            self._retry_after)

    def _reserve(self, p: _Pending, cost: int) -> None:
        if self.analysis is not None:
            p.reserved = cost
            self._reserved += cost

    def _release(self, p: _Pending) -> None:
        self._reserved -= p.reserved
        p.reserved = 0

    # -- the worker ------------------------------------------------------------------------------

    def _update_gauge(self) -> None:
        self.metrics.ingest_queue_batches.set(self._queue.qsize() + self._held)

    async def _work(self) -> None:
        while True:
            group = [await self._queue.get()]
            while len(group) < GROUP_MAX and not self._queue.empty():
                group.append(self._queue.get_nowait())
            self._held = len(group)
            self._update_gauge()
            try:
                async with self._commit_gate:
                    await self._commit(group)
            finally:
                self._held = 0
                self._update_gauge()
                for p in group:
                    self._queue.task_done()
                    if not p.done.done():  # the commit raised: its handler answers 503 instead of waiting for ever
                        self._release(p)
                        p.done.set_exception(RuntimeError("ingest worker failed before the commit ended"))

    async def _commit(self, group: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            stored = await self._store(group)
        except Exception as e:  # any storage failure is retryable for the sidecar: 503, never lost silently
            if is_full(e):
                self.metrics.journal_full.inc()
                e = sqlite3.OperationalError(f"{e}: the volume of data_dir ({self.config.data_dir}) is full; free "
                                             "space or lower journal_retention_s (commits resume by themselves)")
            log.error("%s (%d batches): %s", self.store_failed, len(group), e)
            for p in group:
                self._release(p)
                if not p.done.done():
                    p.done.set_exception(e)
            return
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        m = self.metrics
        for p, ok in zip(group, stored, strict=True):
            entry = p.entry
            if ok and self.analysis is not None:
                self.analysis.submit(p.batch, entry.received_at)  # the backlog takes over the reservation
            self._release(p)
            if ok:
                m.batches_received.labels("accepted").inc()
                m.rows_ingested.inc(entry.rows)
                m.rows_late.inc(entry.late_rows)
                self.clock_check.observe(entry.sidecar, entry.created_unix_nano, entry.received_at)
                if p.batch.anomalies_dropped:
                    m.local_anomalies.labels("over_limit").inc(p.batch.anomalies_dropped)
                if p.unbound_anomalies:
                    m.local_anomalies.labels("unbound").inc(p.unbound_anomalies)
                    log.warning("sidecar %s: %d local anomalies name a service none of the batch's rows has; "
                                "dropped (outcome unbound)", entry.sidecar, p.unbound_anomalies)
                if p.future_rows:
                    m.rows_future.inc(p.future_rows)
                    self._warn_future(entry.sidecar, p.future_rows)
                sealed = entry.created_unix_nano
                if sealed and sealed < entry.received_at - self._late_after_ns:
                    m.batches_replayed.inc()
            else:
                m.batches_received.labels("duplicate").inc()
                m.duplicate_batches.inc()
            if not p.done.done():
                p.done.set_result(ok)

    async def _store(self, group: list[_Pending]) -> list[bool]:
        """Store the group durably; per batch True (stored) or False (a duplicate). Raises: nothing stored.

        The journal here; cluster mode (:mod:`aggregator.cluster.ingest`) publishes to the partitions instead.
        """
        stored: list[bool] = await self._in_thread(self.journal.append_many, [p.entry for p in group])
        return stored

    def _warn_future(self, sidecar: str, rows: int) -> None:
        # A sidecar whose clock is ahead sends such rows in every batch: one line a minute is enough.
        now = time.monotonic()
        if now - self._future_warned_at >= 60.0:
            self._future_warned_at = now
            log.warning("sidecar %s: %d rows stamped more than max_future_skew_s after arrival (is its clock "
                        "ahead?); analysed at arrival time (sentinel_aggregator_rows_future_total)", sidecar, rows)

    # -- retention -------------------------------------------------------------------------------

    async def prune_journal(self) -> int:
        """Delete journal batches older than ``journal_retention_s``; returns how many."""
        older_than = self._clock() - int(self.config.journal_retention_s * 1e9)
        deleted: int = await self._in_thread(lambda: self.journal.prune(older_than=older_than))
        self.metrics.journal_pruned_batches.inc(deleted)
        return deleted

    async def _prune_periodically(self) -> None:
        while True:
            try:
                deleted = await self.prune_journal()
                if deleted:
                    log.info("journal retention: deleted %d batches", deleted)
            except sqlite3.Error as e:
                log.error("journal retention pass failed: %s", e)
            await asyncio.sleep(self.config.journal_prune_interval_s)
