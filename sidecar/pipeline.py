"""The trace pipeline: extract feature rows, detect locally, batch, and hand sealed batches on.

Receivers call :meth:`TracesConsumer.consume_traces` (and ``consume_metrics``, whose GenAI
histograms become rows for keys no spans come for), whatever their transport. Errors
are classified once, here: :class:`Overloaded` is retryable (UNAVAILABLE / 503 with a retry hint);
nothing raised here is permanent, because a well-formed request is never refused for its content.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sentinel import wire
from sentinel.model import FeatureBatch, LocalAnomaly, Row
from sentinel.quality import QualityEvent
from sentinel.security_event import SecurityEvent
from sentinel.summary import Summary
from sidecar.detectors.local import LocalDetector
from sidecar.extract import Extractor
from sidecar.forward_queue import ForwardQueue, SealedBatch, SpoolRefused
from sidecar.genai_metrics import GenAiMetricsReader
from sidecar.local_alerts import LocalAlerter
from sidecar.log_signals import has_signal_records, signals_from_logs
from sidecar.metrics import SidecarMetrics
from sidecar.status import StatusSource
from sidecar.summaries import Summariser

__all__ = ["SLICE_SPANS", "ConsumeResult", "Overloaded", "SeqSource", "TracePipeline", "TracesConsumer"]

#: Spans extracted between two yields to the event loop (about a millisecond of work). 32 was tried:
#: it cost a quarter to a half of the end-to-end rate (loadtest/bench_sidecar.py, figures 2-3) and
#: did not measurably lower the export p99, whose tail was garbage collection (sentinel/gc_policy.py).
SLICE_SPANS = 128

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
    """The one method through which trace data moves from a receiver into the pipeline.

    ``request`` is a lean ``ExportTraceServiceRequest`` (:func:`sidecar.otlp_lite.parse_traces`)
    and ``size`` its serialized size in bytes (for the receive queue's bound).
    """

    async def consume_traces(self, request: Any, size: int = 0) -> ConsumeResult: ...

    async def consume_metrics(self, request: Any, size: int = 0) -> ConsumeResult:
        """Take a parsed ``ExportMetricsServiceRequest`` (its GenAI histograms may become rows)."""
        ...


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
    quality: list[QualityEvent] = field(default_factory=list)
    security: list[SecurityEvent] = field(default_factory=list)
    rows: int = 0
    since: float = 0.0


class TracePipeline:
    """Receive queue → extract → detect → batch → :class:`ForwardQueue`.

    :meth:`consume_traces` only queues the (already parsed) request and returns, so the app's
    export is answered in well under a millisecond; one worker task processes requests in slices
    of :data:`SLICE_SPANS` spans and yields to the event loop between slices, so a large request
    never holds other exports up for long. The receive queue is bounded in bytes
    (``receive_queue_max_bytes``); when it is full, or the forward queue is, exports are refused
    with :class:`Overloaded`.

    In ``store-and-forward`` mode the export is answered only once the batch holding its rows is
    in the spool (one batch per request), so an acknowledged export is durable. In ``sidecar``
    mode rows are batched by size (``batch_max_rows``) and time (``batch_timeout_s``).
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
        receive_queue_max_bytes: int = 16 * 1024 * 1024,
        metrics_reader: GenAiMetricsReader | None = None,
        status: StatusSource | None = None,
        local_alerts: LocalAlerter | None = None,
        summariser: Summariser | None = None,
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
        self._max_queued_bytes = receive_queue_max_bytes
        self._metrics_reader = metrics_reader
        self._status = status
        self._local_alerts = local_alerts
        self._summariser = summariser
        self._summary_timer: asyncio.Task[None] | None = None
        # (service, request model, operation) -> when span rows last came for it (monotonic s)
        self._span_keys: dict[tuple[Any, Any, Any], float] = {}
        self._queued_bytes = 0
        self._requests: asyncio.Queue[_Work | None] = asyncio.Queue()
        self._pending = _Pending()
        self._timer: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="trace-pipeline")
        if self._summariser is not None:
            self._summary_timer = asyncio.create_task(self._summaries_periodically(), name="summary-flush")

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    async def consume_traces(self, request: Any, size: int = 0) -> ConsumeResult:
        """Take a lean request (:func:`sidecar.otlp_lite.parse_traces`) of ``size`` bytes."""
        return await self._take(request, size, metrics=False)

    async def consume_metrics(self, request: Any, size: int = 0) -> ConsumeResult:
        """Take a parsed ``ExportMetricsServiceRequest``: GenAI histograms of keys no spans come for
        become rows (:mod:`sidecar.genai_metrics`); without a metrics reader this does nothing."""
        if self._metrics_reader is None:
            return ConsumeResult()
        return await self._take(request, size, metrics=True)

    async def consume_logs(self, request: Any, size: int = 0) -> ConsumeResult:
        """Take a parsed ``ExportLogsServiceRequest``: its evaluation, feedback and security event
        records are forwarded (:mod:`sidecar.log_signals`); other records only pass through."""
        if not has_signal_records(request):
            return ConsumeResult()
        return await self._take(request, size, metrics=False, logs=True)

    async def _take(self, request: Any, size: int, *, metrics: bool, logs: bool = False) -> ConsumeResult:
        if self._closed:
            raise Overloaded("shutting down", retry_after_s=5.0)
        if not self._queue.has_capacity():
            raise Overloaded("forward queue full", retry_after_s=self._queue.retry_after_s())
        if self._queued_bytes and self._queued_bytes + size > self._max_queued_bytes:
            raise Overloaded("receive queue full", retry_after_s=1.0)
        done: asyncio.Future[None] | None = None
        if self._durable:
            done = asyncio.get_running_loop().create_future()
        self._queued_bytes += size
        self._requests.put_nowait(_Work(request, size, done, metrics, logs))
        if done is not None:
            await done  # raises Overloaded if the spool refused the batch
        return ConsumeResult()

    async def _work(self) -> None:
        while True:
            work = await self._requests.get()
            if work is None:
                return
            try:
                await self._process(work)
            except Overloaded as e:
                if work.done is not None and not work.done.done():
                    work.done.set_exception(e)
            except Exception as e:  # one bad request must not stop the pipeline
                log.exception("trace pipeline failed on a request")
                if work.done is not None and not work.done.done():
                    work.done.set_exception(Overloaded(f"internal error: {e}"))
            else:
                if work.done is not None and not work.done.done():
                    work.done.set_result(None)
            finally:
                self._queued_bytes -= work.size
            # Drop the request before waiting for the next: ``work`` would otherwise keep the last
            # parsed request (its protobuf arena and the bytes of every attribute) alive while the
            # pipeline is idle (issue 16, the sidecar's RSS).
            del work

    async def _process(self, work: _Work) -> None:
        if work.logs:
            signals = signals_from_logs(work.request, capture_user=self._extractor.settings.capture_user)
            if signals.bad:
                self._metrics.attribute_errors.inc(signals.bad)
            await self._emit([], signals.quality, signals.security)
            return
        if work.metrics:
            await self._emit(self._rows_from_metrics(work.request))
            return
        m = self._metrics
        extract_spans = self._extractor.extract_spans
        rows: list[Row] = []
        quality: list[QualityEvent] = []
        security: list[SecurityEvent] = []
        for resource_spans in work.request.resource_spans:
            resource = self._extractor.resource(resource_spans)
            if resource.bad_attributes:
                m.attribute_errors.inc(resource.bad_attributes)
            for scope_spans in resource_spans.scope_spans:
                spans = scope_spans.spans
                for i in range(0, len(spans), SLICE_SPANS):
                    result = extract_spans(resource, spans[i:i + SLICE_SPANS])
                    m.spans_received.inc(result.spans)
                    m.llm_calls.inc(result.llm_calls)
                    if result.bad_attributes:
                        m.attribute_errors.inc(result.bad_attributes)
                    if result.unknown_cost:
                        m.unknown_cost.inc(result.unknown_cost)
                    rows.extend(result.rows)
                    quality.extend(result.quality)
                    security.extend(result.security)
                    await asyncio.sleep(0)  # let the receivers answer other exports
        # Everything extraction reads is in ``rows`` now: let the parsed request (its protobuf arena
        # and attribute bytes, about the size of the request) go before detection and batching
        # allocate theirs, so the two are never held at once (issue 16, the sidecar's peak RSS).
        work.request = None
        if self._metrics_reader is not None and rows:
            self._note_span_keys(rows)
        await self._emit(rows, quality, security)

    def _note_span_keys(self, rows: list[Row]) -> None:
        now = time.monotonic()
        keys = self._span_keys
        for key in {(r[1], r[7], r[5]) for r in rows}:  # service, request_model, operation
            keys[key] = now
        assert self._metrics_reader is not None
        if len(keys) > self._metrics_reader.config.max_series:
            keys.clear()  # forget which keys spans cover rather than grow: metrics rows resume briefly

    def _spans_cover(self, key: tuple[Any, Any, Any]) -> bool:
        assert self._metrics_reader is not None
        seen = self._span_keys.get(key)
        return seen is not None and time.monotonic() - seen <= self._metrics_reader.config.span_window_s

    def _rows_from_metrics(self, request: Any) -> list[Row]:
        assert self._metrics_reader is not None
        result = self._metrics_reader.read(request, self._spans_cover)
        if result.rows:
            self._metrics.metric_rows.inc(len(result.rows))
        if result.capped_values:
            self._metrics.metric_values_thinned.inc(result.capped_values)
        return result.rows

    async def _emit(self, rows: list[Row], quality: Sequence[QualityEvent] = (),
                    security: Sequence[SecurityEvent] = ()) -> None:
        """Detect on ``rows`` and hand them, with the request's quality and security events, to the
        forward queue (batched, or sealed when durable)."""
        if not rows and not quality and not security:
            return
        if quality:
            self._metrics.quality_events.inc(len(quality))
        if security:
            self._metrics.security_events.inc(len(security))
        # Detection runs once per request: its cost is mostly per call, not per row. Each step of
        # a millisecond or more is its own turn of the event loop, so exports are answered between.
        batch = FeatureBatch.from_rows(rows)
        await asyncio.sleep(0)
        anomalies = self._detector.process(batch) if rows else []
        await asyncio.sleep(0)
        self._record(anomalies)
        if self._local_alerts is not None:
            self._local_alerts.observe(anomalies)  # raised now, sealed into the batch of these anomalies
        if self._summariser is not None:
            batch = self._summariser.add(batch, anomalies)  # counted in summaries; anomalous and sampled rows go on
            if self._summariser.full:
                await self.flush_summaries()
            if batch.n == 0 and not anomalies and not quality and not security:
                return
        batches = [batch]
        if self._durable:
            sealed = await self._seal(batches, anomalies, quality, security)
            try:
                await self._queue.put(sealed, durable=True)
            except SpoolRefused as e:
                raise Overloaded(str(e), retry_after_s=self._queue.retry_after_s()) from None
            return
        async with self._lock:
            p = self._pending
            if not p.batches:
                p.since = time.monotonic()
            p.batches.extend(batches)
            p.anomalies.extend(anomalies)
            p.quality.extend(quality)
            p.security.extend(security)
            p.rows += sum(b.n for b in batches)
            if p.rows >= self._batch_max_rows:
                await self._flush_locked()
            elif self._timer is None or self._timer.done():
                self._timer = asyncio.create_task(self._flush_later(), name="batch-timeout")

    def _record(self, anomalies: list[LocalAnomaly]) -> None:
        for a in anomalies:
            self._metrics.local_anomalies.labels(a.metric, a.method).inc()
            log.info(
                "local anomaly: %s %s=%.4g baseline=%.4g sigma=%.2f service=%s model=%s trace_id=%s",
                a.method, a.metric, a.value, a.baseline, a.sigma, a.service, a.model, a.trace_id,
            )

    async def _seal(self, batches: list[FeatureBatch], anomalies: list[LocalAnomaly],
                    quality: Sequence[QualityEvent] = (), security: Sequence[SecurityEvent] = (),
                    summaries: list[Summary] | None = None) -> SealedBatch:
        # Sealing ~2,000 rows is 2-5 ms (concatenating, dictionary-encoding the string columns,
        # packing): three turns of the event loop, so an export that arrives meanwhile waits for
        # one of them at most (issue 16, the export p99). The sequence number, status and edge
        # alerts are still taken right before the body is packed, with no turn between.
        batch = FeatureBatch.concat(batches)
        await asyncio.sleep(0)
        columns = wire.encode_columns(batch)
        await asyncio.sleep(0)
        seq = self._seq.next()
        status = self._status.snapshot() if self._status is not None else None
        edge_alerts = self._local_alerts.take() if self._local_alerts is not None else []
        body = wire.encode(batch, sidecar=self._sidecar_id, seq=seq, anomalies=anomalies, quality=quality,
                           security=security, status=status, edge_alerts=edge_alerts,
                           summaries=summaries or (), summarised=self._summariser is not None, columns=columns)
        return SealedBatch(seq=seq, rows=batch.n, body=body)

    async def _flush_locked(self) -> None:
        p = self._pending
        if not p.batches:
            return
        self._pending = _Pending()
        sealed = await self._seal(p.batches, p.anomalies, p.quality, p.security)
        try:
            await self._queue.put(sealed, durable=False)
        except SpoolRefused as e:
            # Rows of requests already acknowledged: nothing to refuse any more, so count them.
            self._metrics.dropped_rows.labels(e.reason).inc(sealed.rows)
            log.warning("%s: dropped batch seq=%d (%d rows)", e, sealed.seq, sealed.rows)

    async def flush_summaries(self) -> None:
        """Seal every summary held into a batch of its own (``forward: summaries``)."""
        if self._summariser is None or not self._summariser.pending:
            return
        sealed = await self._seal([FeatureBatch.empty()], [], summaries=self._summariser.take())
        try:
            await self._queue.put(sealed, durable=self._durable)
        except SpoolRefused:
            log.warning("spool full (refuse policy): dropped summary batch seq=%d", sealed.seq)

    async def _summaries_periodically(self) -> None:
        assert self._summariser is not None
        while True:
            await asyncio.sleep(self._summariser.config.flush_s)
            try:
                await self.flush_summaries()
            except Exception:  # the next period tries again; the summaries are kept meanwhile only if not taken
                log.exception("summary flush failed")

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._batch_timeout_s)
        async with self._lock:
            await self._flush_locked()

    async def flush(self) -> None:
        """Process every queued request and seal whatever is pending now."""
        while self._requests.qsize() or self._queued_bytes:
            await asyncio.sleep(0.001)
            if self._worker is None or self._worker.done():
                break
        async with self._lock:
            await self._flush_locked()

    async def shutdown(self) -> None:
        """Stop taking requests, process those already taken, seal what is pending; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            self._requests.put_nowait(None)
            await self._worker
            self._worker = None
        if self._timer is not None and not self._timer.done():
            self._timer.cancel()
        if self._summary_timer is not None:
            self._summary_timer.cancel()
        async with self._lock:
            await self._flush_locked()
        await self.flush_summaries()


@dataclass(slots=True)  # not frozen: _process drops ``request`` once it is extracted
class _Work:
    request: Any
    size: int
    done: asyncio.Future[None] | None
    metrics: bool = False  # an ExportMetricsServiceRequest, not a lean trace request
    logs: bool = False  # an ExportLogsServiceRequest with signal records
