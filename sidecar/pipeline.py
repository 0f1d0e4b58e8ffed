"""The trace pipeline: extract feature rows, detect locally, batch, and hand sealed batches on.

Receivers call one method, :meth:`TracesConsumer.consume_traces`, whatever their transport. Errors
are classified once, here: :class:`Overloaded` is retryable (UNAVAILABLE / 503 with a retry hint);
nothing raised here is permanent, because a well-formed request is never refused for its content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sentinel import wire
from sentinel.detectors.local import LocalDetector
from sentinel.model import FeatureBatch, LocalAnomaly
from sidecar.extract import Extractor
from sidecar.forward_queue import ForwardQueue, SealedBatch, SpoolRefused
from sidecar.metrics import SidecarMetrics

__all__ = ["ConsumeResult", "Overloaded", "SeqSource", "TracePipeline", "TracesConsumer"]

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The sidecar cannot take more now; the client should retry after ``retry_after_s``."""

    def __init__(self, reason: str, retry_after_s: float = 1.0) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class ConsumeResult:
    """Outcome of an accepted request; ``rejected_spans`` > 0 is reported as partial success."""

    rejected_spans: int = 0
    message: str = ""


class TracesConsumer(Protocol):
    """The one method through which trace data moves from a receiver into the pipeline."""

    async def consume_traces(self, request: ExportTraceServiceRequest) -> ConsumeResult: ...


class SeqSource:
    """Batch sequence numbers, increasing across restarts.

    They start at the wall clock in microseconds (or just past the spool's last one, if larger), so
    a restarted sidecar without a spool never reuses a ``seq`` the aggregator has already seen.
    """

    def __init__(self, last_seq: int | None = None) -> None:
        start = time.time_ns() // 1000
        if last_seq is not None and last_seq >= start:
            start = last_seq + 1
        self._next = start

    def next(self) -> int:
        n = self._next
        self._next += 1
        return n


@dataclass
class _Pending:
    batches: list[FeatureBatch] = field(default_factory=list)
    anomalies: list[LocalAnomaly] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0


class TracePipeline:
    """Extract → detect → batch → :class:`ForwardQueue`.

    In ``store-and-forward`` mode every request's rows are sealed and written to the spool before
    :meth:`consume_traces` returns, so an acknowledged export is durable. In ``sidecar`` mode rows
    are batched by size and time and the request is acknowledged at once.
    """

    def __init__(
        self,
        *,
        extractor: Extractor,
        detector: LocalDetector,
        queue: ForwardQueue,
        metrics: SidecarMetrics,
        sidecar_id: str,
        seq: SeqSource,
        durable: bool,
        batch_max_rows: int,
        batch_timeout_s: float,
    ) -> None:
        self._extractor = extractor
        self._detector = detector
        self._queue = queue
        self._metrics = metrics
        self._sidecar_id = sidecar_id
        self._seq = seq
        self._durable = durable
        self._batch_max_rows = batch_max_rows
        self._batch_timeout_s = batch_timeout_s
        self._pending = _Pending()
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def consume_traces(self, request: ExportTraceServiceRequest) -> ConsumeResult:
        if self._closed:
            raise Overloaded("shutting down", retry_after_s=5.0)
        if not self._queue.has_capacity():
            raise Overloaded("forward queue full", retry_after_s=self._queue.retry_after_s())
        result = self._extractor.extract(request)
        m = self._metrics
        m.spans_received.inc(result.spans)
        m.llm_calls.inc(result.llm_calls)
        if result.bad_attributes:
            m.attribute_errors.inc(result.bad_attributes)
        if result.unknown_cost:
            m.unknown_cost.inc(result.unknown_cost)
        if not result.rows:
            return ConsumeResult()
        batch = FeatureBatch.from_rows(result.rows)
        anomalies = self._detector.process(batch)
        for a in anomalies:
            m.local_anomalies.labels(a.metric, a.method).inc()
            log.info(
                "local anomaly: %s %s=%.4g baseline=%.4g sigma=%.2f service=%s model=%s trace_id=%s",
                a.method, a.metric, a.value, a.baseline, a.sigma, a.service, a.model, a.trace_id,
            )
        if self._durable:
            # Seal this request's rows on their own and wait for the spool: the export is
            # acknowledged only once its rows are on disk.
            sealed = self._seal([batch], anomalies)
            try:
                await self._queue.put(sealed, durable=True)
            except SpoolRefused:
                raise Overloaded("spool full", retry_after_s=self._queue.retry_after_s()) from None
            return ConsumeResult()
        async with self._lock:
            p = self._pending
            if not p.batches:
                p.since = time.monotonic()
            p.batches.append(batch)
            p.anomalies.extend(anomalies)
            p.rows += batch.n
            if p.rows >= self._batch_max_rows:
                await self._flush_locked()
            elif self._timer is None or self._timer.done():
                self._timer = asyncio.create_task(self._flush_later(), name="batch-timeout")
        return ConsumeResult()

    def _seal(self, batches: list[FeatureBatch], anomalies: list[LocalAnomaly]) -> SealedBatch:
        batch = FeatureBatch.concat(batches)
        seq = self._seq.next()
        body = wire.encode(batch, sidecar=self._sidecar_id, seq=seq, anomalies=anomalies)
        return SealedBatch(seq=seq, rows=batch.n, body=body)

    async def _flush_locked(self) -> None:
        p = self._pending
        if not p.batches:
            return
        self._pending = _Pending()
        sealed = self._seal(p.batches, p.anomalies)
        try:
            await self._queue.put(sealed, durable=False)
        except SpoolRefused:
            # Rows of requests already acknowledged: nothing to refuse any more, so count them.
            self._metrics.dropped_rows.labels("spool_full").inc(sealed.rows)
            log.warning("spool full (refuse policy): dropped batch seq=%d (%d rows)", sealed.seq, sealed.rows)

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._batch_timeout_s)
        async with self._lock:
            await self._flush_locked()

    async def flush(self) -> None:
        """Seal whatever is pending now (used at shutdown and by tests)."""
        async with self._lock:
            await self._flush_locked()

    async def shutdown(self) -> None:
        """Stop taking requests and seal what is pending; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        await self.flush()
