"""Security events from RabbitMQ: a durable queue bound to the guardrail's ``security.events`` topic exchange.

:class:`SecurityEventConsumer` declares the exchange (topic, durable — the plan names a topic of that
name) and the queue (durable), binds them with ``amqp_binding_key`` (``#``: every event) and hands each
message's events — a JSON object, a list, or ``{"events": [...]}`` in the plan's schema — to
``submit``. A message is acknowledged once its events are submitted; one that is not valid JSON or
not valid events is rejected without requeue (counted, logged without its body: it may hold a prompt).
The connection is aio-pika's robust one: a broker restart is reconnected by itself. ``start`` /
idempotent ``shutdown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from aggregator.api.params import ParamError
from aggregator.api.security_api import parse_security_events
from sentinel.security_event import SecurityEvent

__all__ = ["SecurityEventConsumer"]

log = logging.getLogger(__name__)


class SecurityEventConsumer:
    def __init__(self, *, url: str, exchange: str, queue: str, binding_key: str,
                 submit: Callable[[Sequence[SecurityEvent]], Any], max_events: int = 1000,
                 clock: Callable[[], int] | None = None) -> None:
        self.url, self.exchange_name, self.queue_name, self.binding_key = url, exchange, queue, binding_key
        self._submit = submit
        self._max_events = max_events
        self._connection: AbstractRobustConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self.consumed = 0
        self.rejected = 0
        self.consuming = False  # the queue is bound and consumed (the robust connection re-binds it)
        self._clock = clock or time.time_ns

    async def start(self) -> None:
        """Connect and start consuming; a broker that is down is retried in the background."""
        self._task = asyncio.create_task(self._run(), name="security-events-amqp")

    async def _run(self) -> None:
        delay = 0.5
        while True:
            try:
                self._connection = await aio_pika.connect_robust(self.url, timeout=10)
                channel = await self._connection.channel()
                await channel.set_qos(prefetch_count=100)
                exchange = await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC,
                                                          durable=True)
                queue = await channel.declare_queue(self.queue_name, durable=True)
                await queue.bind(exchange, routing_key=self.binding_key)
                await queue.consume(self._on_message)
                self.consuming = True
                log.info("consuming security events from %s (exchange %s)", self.queue_name, self.exchange_name)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the broker is away: keep trying, the events wait in their queue
                log.warning("security events queue unavailable (%s: %s); retrying in %.1f s", type(e).__name__, e,
                            delay)
                if self._connection is not None:
                    await self._connection.close()
                    self._connection = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            events = parse_security_events(json.loads(message.body), self._max_events, self._clock())
        except (ValueError, ParamError) as e:
            self.rejected += 1
            log.warning("rejected a security event message (%d bytes): %s", len(message.body), str(e)[:200])
            await message.reject(requeue=False)
            return
        await asyncio.to_thread(self._submit, events)
        self.consumed += len(events)
        await message.ack()

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            await self._connection.close()
            self._connection = None
