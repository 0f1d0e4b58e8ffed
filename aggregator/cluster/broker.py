"""The RabbitMQ side of cluster mode: one durable queue per partition, persistent messages, confirms.

Every queue is declared the same way by every replica (durable, ``x-single-active-consumer``: the
broker delivers a queue to one consumer at a time even if two replicas subscribed), so whichever
replica starts first creates them and a publish never meets a missing queue.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import aio_pika.abc

from aggregator.cluster.config import ClusterConfig

__all__ = ["QUEUE_ARGUMENTS", "Publisher", "declare_queue"]

QUEUE_ARGUMENTS: dict[str, Any] = {"x-single-active-consumer": True}
#: A publish not confirmed within this is a failure (ingest answers 503, the sidecar retries).
PUBLISH_TIMEOUT_S = 10.0
#: After a failed connection, publishes fail at once for this long instead of each trying (and, to a
#: host that drops packets, waiting PUBLISH_TIMEOUT_S): a broker that is down is answered 503 quickly.
RECONNECT_INTERVAL_S = 0.5


async def declare_queue(channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractQueue:
    return await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)


class Publisher:
    """Publishes a batch's parts to their partitions' queues and returns once the broker confirmed all.

    Connects on first use and again after the connection is lost; a broker that is down makes
    :meth:`publish` raise (ingest answers 503), it never waits for the broker to come back.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0
        self._last_error = ""

    async def _ready(self) -> aio_pika.abc.AbstractChannel:
        async with self._lock:
            if self._channel is not None and not self._channel.is_closed:
                return self._channel
            await self.close()
            if time.monotonic() < self._retry_at:
                raise ConnectionError(f"broker unreachable ({self._last_error}); next attempt in "
                                      f"{self._retry_at - time.monotonic():.1f} s")
            try:
                connection = await aio_pika.connect(self.config.amqp_url, timeout=PUBLISH_TIMEOUT_S)
            except Exception as e:
                self._retry_at = time.monotonic() + RECONNECT_INTERVAL_S
                self._last_error = str(e) or type(e).__name__
                raise
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                for p in range(self.config.partitions):
                    await declare_queue(channel, self.config.queue(p))
            except BaseException:
                await connection.close()
                raise
            self._connection, self._channel = connection, channel
            return channel

    async def publish(self, parts: dict[int, bytes], *, sidecar: str, seq: int, arrival_ns: int) -> None:
        """Publish every part (partition -> wire body) persistently; raises unless all were confirmed."""
        channel = await self._ready()
        exchange = channel.default_exchange
        async with asyncio.timeout(PUBLISH_TIMEOUT_S):
            # Every publish awaited to its end (a failure of one must not leave the others unobserved).
            results = await asyncio.gather(*(exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                 message_id=f"{sidecar}/{seq}/{p}",
                                 headers={"sidecar": sidecar, "seq": seq, "arrival_ns": arrival_ns}),
                routing_key=self.config.queue(p), mandatory=True) for p, body in parts.items()), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r

    async def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            await connection.close()
