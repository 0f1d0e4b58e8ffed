"""What happens to a batch once it is durably accepted: the analysis stage and its ordered consumers.

The ingest worker hands every newly accepted batch (never a duplicate) to :class:`Analysis`,
which feeds it, in commit order, to each :class:`Consumer` of :func:`pipeline` on one dedicated
thread: their work (sketches, forests, detectors) is CPU-bound and must neither block the event
loop nor run in parallel with itself. Consumers keep all their state per key, so they can later be
partitioned across replicas.

Every consumer has the same four methods. ``restore(state)`` at start (``None``: nothing saved, or
what was saved could not be used: start afresh), ``consume(batch)`` returning the candidates the
batch raised (handed on, in consumer order, to ``on_candidates``: the candidate log and the alert
manager), ``snapshot()`` returning the state to keep (``None``: unchanged since the last one),
and ``shutdown()``. The stage, not the consumer, reads and writes the state, through the
consumer's ``state_file`` (:mod:`aggregator.analysis.state`): every ``save_interval_s`` and at
shutdown.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.state import StateFile
from sentinel.tasks import TaskSupervisor
from sentinel.wire import WireBatch

__all__ = ["Analysis", "CandidateObserver", "Consumer", "feed", "innermost", "pipeline", "restore", "save"]

log = logging.getLogger(__name__)


class Consumer(Protocol):
    """One step of the analysis stage: fed every accepted batch, in commit order, on the analysis thread."""

    @property
    def state_file(self) -> StateFile | None:
        """Where the stage keeps this consumer's :meth:`snapshot` (``None``: it has no state of its own)."""

    def restore(self, state: Any) -> None:
        """Take back what :meth:`snapshot` returned before a restart (``None``: start afresh); at start."""

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        """Learn from ``batch``; the candidates it raised (often none)."""
        ...

    def snapshot(self) -> Any:
        """The state to keep (a value its ``state_file`` can write), ``None`` when unchanged since the last."""

    def shutdown(self) -> None:
        """Stop threads of its own, if any; idempotent (called after the last batch and snapshot)."""


@runtime_checkable
class CandidateObserver(Protocol):
    """A consumer that also learns from the other consumers' candidates (the security correlation)."""

    def observe_candidates(self, candidates: Sequence[Candidate]) -> None: ...


def pipeline(*, edge_alerts: Consumer | None = None, confirm: Consumer, baselines: Consumer,
             quality: Consumer | None = None,
             security: Consumer | None = None, detectors: Consumer, forest: Consumer | None,
             series: Consumer, alerts: Consumer) -> list[Consumer]:
    """The analysis consumers in the order every batch goes through them, and why that order.

    0. ``edge_alerts`` (alerts a sidecar raised while it could not reach the aggregator, reconciled
       with the alert manager) first: the alert exists when the batch's own anomalies (those it was
       raised on) are confirmed, so they fold into it instead of raising, and paging, another.
    1. ``confirm`` (sidecars' local anomalies judged against the global baselines) before
       ``baselines``: a forwarded anomaly is judged against the baselines as they were before its
       own batch, so a spike does not raise the p99 it is compared with.
    2. ``baselines`` (global per-key sketches): learn from every row, in event time.
    3. ``quality`` (evaluation scores and feedback joined to their calls; ``None`` when turned
       off) before the detectors: it notes the model version each key's rows answer with, which
       the detectors' answer-quality candidates of the same batch are labelled with.
    4. ``security`` (guardrail events; ``None`` when turned off) before the detectors: a user's
       security events of a batch are known when that batch's token or cost anomaly of the same
       user reaches the correlation (handed on through ``on_candidates``).
    5. ``detectors`` (the windowed detectors) and 6. ``forest`` (Isolation Forest; ``None`` when
       turned off): independent of each other; both read the batch only.
    7. ``series`` (per-service time series for the API and the page): reads the batch only.
    8. ``alerts`` last: a batch's own detections (handed on as each consumer returns them) are
       folded into the alerts before its rows can resolve one.

    Batches of ``forward: summaries`` sidecars carry summaries and a sample of rows: the caller
    wraps ``baselines`` (summaries merged exactly) and the consumers that count rows (``detectors``,
    ``series``, ``alerts``) in :mod:`aggregator.analysis.summaries`; the order is the same.
    """
    return [c for c in (edge_alerts, confirm, baselines, quality, security, detectors, forest, series, alerts)
            if c is not None]


def innermost(consumer: Consumer) -> Any:
    """The consumer a wrapper (the summaries' views, a cluster's ``Shared``: an ``inner`` each) stands for."""
    inner: Any = consumer
    while hasattr(inner, "inner"):
        inner = inner.inner
    return inner


def restore(consumer: Consumer) -> None:
    """Restore ``consumer`` from its state file; one that cannot be restored is set aside (start afresh)."""
    state_file = consumer.state_file
    if state_file is None:
        consumer.restore(None)  # errors propagate: the process cannot start (e.g. the alert store)
        return
    try:
        consumer.restore(state_file.read())
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        state_file.set_aside(e)
        consumer.restore(None)


def save(consumer: Consumer) -> None:
    """Write ``consumer``'s snapshot to its state file, if it changed (errors propagate)."""
    state = consumer.snapshot()
    if state is not None and consumer.state_file is not None:
        consumer.state_file.write(state)


def feed(consumers: Sequence[Consumer], batch: WireBatch, arrival_ns: int,
         on_candidates: Callable[[list[Candidate]], None]) -> None:
    """``batch`` through ``consumers`` in order, each one's candidates to ``on_candidates`` before the next."""
    for consumer in consumers:
        try:
            found = consumer.consume(batch, arrival_ns=arrival_ns)
        except Exception:  # one consumer's bug must not stop the others or lose the batch
            log.exception("%s failed on batch %s/%d", type(consumer).__name__, batch.sidecar, batch.seq)
            continue
        if found:
            try:
                on_candidates(found)
            except Exception:
                log.exception("the candidates of %s could not be handed on", type(consumer).__name__)


class Analysis:
    """Runs consumers on accepted batches, in order, off the event loop; ``start``/``shutdown``.

    ``start`` restores every consumer's state (in order, before the first batch); the candidates a
    consumer returns go to ``on_candidates`` before the next consumer sees the batch.
    """

    def __init__(self, consumers: Sequence[Consumer], *, on_candidates: Callable[[list[Candidate]], None],
                 save_interval_s: float = 60.0, tasks: TaskSupervisor | None = None) -> None:
        self.consumers: tuple[Consumer, ...] = tuple(consumers)
        #: Where the candidates a consumer returns go (the candidate log and the alert manager).
        self.on_candidates = on_candidates
        #: Snapshots taken and not yet written (the write failed), by consumer: retried at the next save.
        self._unsaved: dict[int, Any] = {}
        self._tasks = tasks if tasks is not None else TaskSupervisor(None, "sentinel_aggregator")
        self._save_interval_s = save_interval_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aggregator-analysis")
        self._saver: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Future[None]] = set()
        self._started = False
        self._stopped = False
        #: Rows (and local anomalies, one each) submitted and not yet consumed: ingest refuses new
        #: batches beyond its limit, so a fleet faster than analysis is slowed at the door instead of
        #: growing this queue without bound.
        self.backlog_rows = 0

    async def start(self) -> None:
        """Restore every consumer (a damaged state file is set aside: that consumer starts afresh)."""
        loop = asyncio.get_running_loop()
        for consumer in self.consumers:
            await loop.run_in_executor(self._executor, restore, consumer)
        self._started = True
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

    def set_consumers(self, consumers: Sequence[Consumer]) -> None:
        """Replace the consumers (a reload enabling or disabling one); call it inside :meth:`between_batches`.

        A new consumer is restored by the caller; one left out is saved and shut down by the caller.
        """
        self.consumers = tuple(consumers)

    def _consume(self, batch: WireBatch, arrival_ns: int) -> None:
        feed(self.consumers, batch, arrival_ns, self.on_candidates)

    def _save(self) -> None:
        for consumer in self.consumers:
            i = id(consumer)
            try:
                state = consumer.snapshot()
                if state is None:
                    state = self._unsaved.get(i)  # unchanged since a snapshot that could not be written
                if state is None or consumer.state_file is None:
                    continue
                self._unsaved[i] = state
                consumer.state_file.write(state)
                del self._unsaved[i]
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
        if self._started:  # never started: nothing was restored, so nothing may overwrite the saved state
            await loop.run_in_executor(self._executor, self._save)
        for consumer in self.consumers:
            await loop.run_in_executor(self._executor, consumer.shutdown)
        self._executor.shutdown(wait=True)
