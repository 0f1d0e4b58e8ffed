"""The live feed: alert events fanned out to every watcher (Server-Sent Events, gRPC ``Watch``).

The alert manager calls :meth:`AlertHub.publish` from the analysis thread; each subscriber has a
bounded queue on the event loop. A subscriber that falls more than ``max_queue`` events behind
loses the oldest ones and is told so (``lagged`` in its next event) rather than holding memory
for a client that does not read: the store and ``GET /api/v1/alerts`` have everything.

Events: ``{"event": "alert" | "update" | "resolved", "alert": {...}}``: ``alert`` when raised,
``update`` when de-duplication, a member joining or resolving, a notification, acknowledgement or
correlation changed it, ``resolved`` when it (its last member) resolved.

In a cluster (``store_url``) each replica's hub also carries the other replicas' events: their
writes to the shared PostgreSQL store send ``NOTIFY``, and the aggregator publishes what its
store's listener reads back (:meth:`aggregator.alerting.pg_store.PgAlertStore.listen`), so the
API, the page's stream and gRPC ``Watch`` of every replica see every replica's alerts.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["AlertFilter", "AlertHub", "Subscription"]

DEFAULT_MAX_QUEUE = 1000


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """The filters of the alert list, applied to live events (empty: everything)."""

    severity: tuple[str, ...] = ()
    service: str | None = None
    model: str | None = None
    anomaly_type: str | None = None
    status: tuple[str, ...] = ()

    def matches(self, alert: dict[str, Any]) -> bool:
        if self.severity and alert.get("severity") not in self.severity:
            return False
        if self.status and alert.get("status") not in self.status:
            return False
        if self.service and alert.get("service_name") != self.service:
            return False
        if self.model and alert.get("model") != self.model and not any(
                (m.get("labels") or {}).get("model") == self.model for m in alert.get("members") or ()):
            return False  # neither the alert's model nor one of its members' (as the store's query)
        return not (self.anomaly_type and alert.get("anomaly_type") != self.anomaly_type)


class Subscription:
    """One watcher's queue; iterate it with ``async for event in sub``."""

    def __init__(self, hub: AlertHub, flt: AlertFilter, max_queue: int) -> None:
        self.filter = flt
        self._hub = hub
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._max = max_queue
        self._wake = asyncio.Event()
        self.lagged = 0  # events dropped since the last one delivered
        self.closed = False

    def _put(self, event: dict[str, Any]) -> None:  # on the loop
        if not self.filter.matches(event["alert"]):
            return
        if len(self._events) >= self._max:
            self._events.popleft()
            self.lagged += 1
        self._events.append(event)
        self._wake.set()

    def _close(self) -> None:
        self.closed = True
        self._wake.set()

    async def get(self) -> dict[str, Any] | None:
        """The next event (``None`` once the hub closed)."""
        while not self._events:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        event = self._events.popleft()
        if self.lagged:
            event = {**event, "lagged": self.lagged}
            self.lagged = 0
        return event

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.get()) is not None:
            yield event

    def unsubscribe(self) -> None:
        self._hub._remove(self)


class AlertHub:
    """Thread-safe publish, per-subscriber bounded queues on one event loop."""

    def __init__(self, *, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_queue = max_queue
        self._subs: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop subscribers live on (the aggregator's)."""
        self._loop = loop

    def subscribe(self, flt: AlertFilter | None = None) -> Subscription:
        """Call on the loop. Unsubscribe when done (or use it as ``async for`` inside try/finally)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = Subscription(self, flt or AlertFilter(), self.max_queue)
        with self._lock:
            self._subs.add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, event: str, alert: dict[str, Any]) -> None:
        """From any thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        item = {"event": event, "alert": alert}
        try:
            if _on_loop(loop):
                self._deliver(item)
            else:
                loop.call_soon_threadsafe(self._deliver, item)
        except RuntimeError:  # the loop closed between the check and the call: nobody is watching
            pass

    def _deliver(self, item: dict[str, Any]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub._put(item)

    def close(self) -> None:
        """End every subscription (at shutdown), so streams finish instead of hanging."""
        loop = self._loop
        with self._lock:
            subs = list(self._subs)
            self._subs.clear()
        for sub in subs:
            if loop is not None and not loop.is_closed() and not _on_loop(loop):
                loop.call_soon_threadsafe(sub._close)
            else:
                sub._close()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
