"""The one interface every alert sink implements (RabbitMQ, webhooks).

Sinks never receive alerts directly: the alert manager writes each alert that is to be sent
(not silenced, not folded into a storm summary, passing ``wants``) and one outbox row per such
sink in one store transaction, then calls :meth:`Sink.wake`. The sink reads its rows from the
store (``outbox_pending``), delivers them in order and deletes each row (``outbox_done``) only
once delivery is confirmed, so an outage or a restart delays alerts but never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Coroutine
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from aggregator.alerting.store import AlertStore
from sentinel.alerts import SEVERITY_RANK, Alert

__all__ = ["OutboxSink", "Sink", "SinkMetrics", "WakeSignal", "severity_at_least"]


def severity_at_least(severity: str, minimum: str) -> bool:
    """``severity_at_least("high", "medium")`` is True (critical > high > medium > low)."""
    return SEVERITY_RANK[severity] <= SEVERITY_RANK[minimum]


class Sink(Protocol):
    #: The outbox key: unique per sink (``amqp``, ``webhook:<name>``), stable across restarts.
    name: str

    def wants(self, alert: Alert) -> bool:
        """Whether this sink is to be sent ``alert`` (its severity filter)."""

    def wake(self) -> None:
        """New outbox rows were committed (thread-safe: called from the analysis thread)."""

    async def start(self) -> None:
        """Begin delivering (rows left from before a restart first); must not fail when the far end is down."""

    async def shutdown(self) -> None:
        """Stop; what is undelivered stays in the outbox. Idempotent."""


class SinkMetrics:
    """The sinks' metrics; build one per registry and pass it to every sink (labels tell them apart)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.sent = Counter(
            "sentinel_aggregator_sink_sent", "Alerts delivered and confirmed by the far end, by sink", ["sink"],
            registry=r)
        self.failures = Counter(
            "sentinel_aggregator_sink_failures", "Failed connection or delivery attempts, by sink and reason "
            "(the row stays in the outbox unless the sink gives up on it)", ["sink", "reason"], registry=r)
        self.dead = Counter(
            "sentinel_aggregator_sink_dead", "Outbox rows given up on (kept in the store, never retried), by sink",
            ["sink"], registry=r)
        self.outbox_depth = Gauge(
            "sentinel_aggregator_sink_outbox_depth", "Alerts waiting in the outbox for the sink", ["sink"],
            registry=r)
        self.connected = Gauge(
            "sentinel_aggregator_sink_connected", "1 while the sink reaches its far end (AMQP: connection and "
            "topology up; webhook: the last request got an HTTP answer)", ["sink"], registry=r)

    def register(self, sink: str, store: AlertStore) -> None:
        """Create the sink's series (so they read 0, not absent) and read its outbox depth at scrape time."""
        self.sent.labels(sink)
        self.dead.labels(sink)
        self.connected.labels(sink).set(0)

        def depth() -> float:
            try:
                return float(store.outbox_depth(sink))
            except Exception:  # a closed or broken store must not break the whole scrape
                return math.nan

        self.outbox_depth.labels(sink).set_function(depth)


class WakeSignal:
    """An :class:`asyncio.Event` that any thread may set (the analysis thread commits the outbox rows)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> None:
        """Attach to the running loop (called by the sink's ``start``)."""
        self._loop = asyncio.get_running_loop()

    def set(self) -> None:
        loop = self._loop
        if loop is None:
            return  # not started: start() drains the outbox anyway
        with contextlib.suppress(RuntimeError):  # the loop is closed: shut down, the rows wait for a restart
            loop.call_soon_threadsafe(self._event.set)

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()


class OutboxSink:
    """What every outbox sink shares: its name, store, metrics, severity filter, wake signal and the
    one delivery task (``_spawn`` in ``start``, ``_cancel`` in ``shutdown``). Subclasses add the
    transport and the delivery loop."""

    def __init__(self, name: str, store: AlertStore, min_severity: str, metrics: SinkMetrics | None) -> None:
        self.name = name
        self._store = store
        self._min_severity = min_severity
        self._metrics = metrics if metrics is not None else SinkMetrics()
        self._metrics.register(name, store)
        self._wake = WakeSignal()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        #: The last failure (``""`` while delivering), for health endpoints and logs.
        self.last_error = ""

    def wants(self, alert: Alert) -> bool:
        return severity_at_least(alert.severity, self._min_severity)

    def wake(self) -> None:
        self._wake.set()

    def _spawn(self, run: Coroutine[Any, Any, None]) -> None:
        """Start the delivery task (``start`` checks ``_startable`` first)."""
        self._wake.bind()
        self._task = asyncio.create_task(run, name=f"alert-sink-{self.name}")

    @property
    def _startable(self) -> bool:
        return self._task is None and not self._stopped

    async def _cancel(self) -> None:
        """Stop the delivery task; idempotent. Undelivered rows stay in the outbox."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
