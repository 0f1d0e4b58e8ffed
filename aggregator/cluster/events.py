"""Quality and security events that reach a replica outside a sidecar batch, routed to their partitions.

``POST /api/v1/feedback``, ``POST /api/v1/security-events`` and the ``security.events`` queue hand
their events to the one quality or security consumer of a single process; in a cluster those
consumers live in the partitions (:meth:`aggregator.app.Aggregator._partition_consumers`), so the
events are published, as a wire batch of no rows, to the partition queues the ingest publishes to
(:func:`aggregator.cluster.partition.split`: by service; a quality event naming none to every
partition). The batch's sidecar is ``api:<replica>`` with a seq that only grows, so the partitions'
de-duplication (the seqs their checkpoints cover) treats a redelivery as it treats a sidecar's.
The detections they raise reach the alert manager of the partition's owner, not the API's answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.cluster.broker import PUBLISH_TIMEOUT_S, Publisher
from aggregator.cluster.config import ClusterConfig
from aggregator.cluster.partition import split
from sentinel.model import FeatureBatch
from sentinel.quality import QualityEvent
from sentinel.security_event import SecurityEvent
from sentinel.wire import WireBatch

__all__ = ["EventRouter"]


class EventRouter:
    """Publishes events to their partitions: :meth:`publish` on the event loop, the ``submit_*`` from a thread."""

    def __init__(self, config: ClusterConfig, publisher: Publisher) -> None:
        self.config = config
        self.publisher = publisher
        self.sidecar = f"api:{config.replica()}"
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def _next_seq(self) -> int:
        # Above every seq this name published before a restart (the clock moved on), unique within the run.
        with self._seq_lock:
            self._seq = max(self._seq + 1, time.time_ns())
            return self._seq

    async def publish(self, *, quality: Sequence[QualityEvent] = (), security: Sequence[SecurityEvent] = ()) -> None:
        """Publish the events (raises unless the broker confirmed every part: the caller answers 503)."""
        if not quality and not security:
            return
        now = time.time_ns()
        seq = self._next_seq()
        batch = WireBatch(sidecar=self.sidecar, seq=seq, batch=FeatureBatch.empty(), created_unix_nano=now,
                          quality=list(quality), security=list(security))
        await self.publisher.publish(split(batch, self.config.partitions), sidecar=self.sidecar, seq=seq,
                                     arrival_ns=now)

    def _run(self, *, quality: Sequence[QualityEvent] = (), security: Sequence[SecurityEvent] = ()) -> None:
        if self._loop is None:
            raise RuntimeError("EventRouter: not bound to the event loop")
        future = asyncio.run_coroutine_threadsafe(self.publish(quality=quality, security=security), self._loop)
        try:
            future.result(timeout=2 * PUBLISH_TIMEOUT_S)
        except Exception as e:  # broker down or slow: the API answers 503, the queue's message is redelivered
            raise ConnectionError(f"partition queues unavailable: {e}") from e

    def submit_security(self, events: Sequence[SecurityEvent]) -> list[Candidate]:
        """For the ``security.events`` queue's consumer (a thread): published; no detection known yet."""
        self._run(security=events)
        return []

    def submit_quality(self, events: Sequence[QualityEvent]) -> int:
        """Published; how many name their service (the others join in whichever partition knows their call)."""
        self._run(quality=events)
        return sum(1 for e in events if e.service is not None)
