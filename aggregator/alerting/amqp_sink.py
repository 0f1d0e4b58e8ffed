"""The RabbitMQ alert sink: publishes each alert of the outbox to a topic exchange, with confirms.

Declared on every (re)connect, all durable (``SINKS.md`` has the full picture):

* the topic exchange ``incidents``; each alert is published with routing key ``incidents.<severity>``;
* the dead-letter exchange ``incidents.dlx`` (fanout) and its queue ``incidents.dlq``;
* the queue ``incidents.all`` bound with ``incidents.#`` (``x-message-ttl`` 24 h,
  ``x-dead-letter-exchange`` ``incidents.dlx``): what a consumer rejects without requeueing, or
  what waits longer than the TTL, lands in the DLQ. An empty ``queue`` declares none (the incident
  manager declares and binds its own).

Delivery: the sink reads its outbox rows in raise order and publishes them persistent, on a
channel with publisher confirms and ``mandatory``; a row is deleted only after the broker's ack.
A nack or a return (no queue bound) keeps the row and backs off; a lost connection backs off and
reconnects (``2**n`` with ±20 % jitter, capped by ``reconnect_max_backoff_s``) while alerts wait
in the outbox. A message the broker received but whose ack was lost with the connection (or the
process) is published again: at-least-once across failures, exactly once otherwise, and
``message_id`` = the outbox key (``alert_id``, ``<alert_id>#<n>`` for an alert's later notifications)
lets consumers de-duplicate.

We run our own reconnect loop on a plain connection rather than aio-pika's robust connection:
after a reconnect the outbox must be drained again anyway, and owning the loop makes the outage
visible (backoff, ``sink_connected``, ``sink_failures_total{reason="connect"}``).

What every sink shares (metrics, wake signal, task lifecycle) is :class:`aggregator.alerting.sink.OutboxSink`;
backoff is :mod:`sentinel.retry`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import re
import sqlite3
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import DeliveryError, PublishError

from aggregator.alerting.sink import OutboxSink, SinkMetrics
from aggregator.alerting.store import AlertStore, OutboxItem, StoreError
from sentinel.alerts import SEVERITIES, parse_time
from sentinel.config import ConfigError, setting
from sentinel.retry import backoff_s

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BINDING_KEY",
    "DEFAULT_DLQ",
    "DEFAULT_DLX",
    "DEFAULT_EXCHANGE",
    "DEFAULT_MESSAGE_TTL_S",
    "DEFAULT_QUEUE",
    "DEFAULT_RECONNECT_MAX_BACKOFF_S",
    "DEFAULT_TIMEOUT_S",
    "ROUTING_KEY_PREFIX",
    "AmqpSink",
    "AmqpSinkConfig",
]

log = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "incidents"
DEFAULT_QUEUE = "incidents.all"
DEFAULT_BINDING_KEY = "incidents.#"
DEFAULT_DLX = "incidents.dlx"
DEFAULT_DLQ = "incidents.dlq"
DEFAULT_MESSAGE_TTL_S = 86_400  # a day: long enough for any incident-manager outage worth waiting for
DEFAULT_MIN_SEVERITY = "low"
DEFAULT_BATCH_SIZE = 100
DEFAULT_RECONNECT_MAX_BACKOFF_S = 30.0
DEFAULT_TIMEOUT_S = 10.0
#: Routing key of an alert: this prefix and its severity (``incidents.critical``).
ROUTING_KEY_PREFIX = "incidents."
CONTENT_TYPE = "application/json"
MESSAGE_TYPE = "alert"
APP_ID = "llm-sentinel"

#: First retry delay; doubled per consecutive failure up to the sink's cap.
BASE_BACKOFF_S = 0.2
#: A failure is logged at WARNING the first time and then every this many times (the rest DEBUG).
LOG_EVERY = 10

_NAME_RE = re.compile(r"^[\w.:\-]{1,255}$")  # AMQP short strings; no spaces keeps the topology readable


def redact_url(url: str) -> str:
    """``url`` without its password, for logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- the AMQP sink ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AmqpSinkConfig:
    """The RabbitMQ sink's settings: the aggregator's ``amqp:`` section; :meth:`validate` names the key
    (``amqp.<field>``)."""

    url: str = setting("", "RabbitMQ sink: amqp:// URL (prefer SENTINEL_AMQP_URL: it holds the password); empty: no "
                       "broker, alerts stay in the store, API and page")
    exchange: str = setting(DEFAULT_EXCHANGE, "RabbitMQ topic exchange alerts are published to")
    queue: str = setting(DEFAULT_QUEUE, "queue declared and bound to binding_key (message_ttl_s TTL, dead letters "
                         "to dlq); empty: declare none (the incident manager owns its own)")
    binding_key: str = setting(DEFAULT_BINDING_KEY, "routing-key pattern queue is bound with")
    dlx: str = setting(DEFAULT_DLX, "dead-letter exchange of queue; empty: no dead-lettering")
    dlq: str = setting(DEFAULT_DLQ, "queue bound to dlx; empty: none")
    message_ttl_s: int = setting(DEFAULT_MESSAGE_TTL_S, "TTL of messages in queue (whole seconds); 0: none")
    min_severity: str = setting(DEFAULT_MIN_SEVERITY, "least severe alert published to RabbitMQ")
    batch_size: int = setting(DEFAULT_BATCH_SIZE, "alerts published per confirmed batch")
    reconnect_max_backoff_s: float = setting(DEFAULT_RECONNECT_MAX_BACKOFF_S, "longest wait between reconnects")
    #: Connect, declare and publisher-confirm timeout; an unconfirmed publish is retried on a new connection.
    timeout_s: float = setting(DEFAULT_TIMEOUT_S, "connect, declare and publisher-confirm timeout; an unconfirmed "
                               "publish is retried on a new connection")

    def validate(self) -> None:
        if self.url:  # empty: no broker (the sink is not started)
            self._validate_url()
        self._validate_rest()

    def _validate_url(self) -> None:
        try:
            parts = urllib.parse.urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise ConfigError(f"amqp.url: {e}") from None
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise ConfigError("amqp.url: must be amqp://[user:password@]host[:port][/vhost] or amqps://…")

    def _validate_rest(self) -> None:
        for key, value in (("exchange", self.exchange), ("queue", self.queue), ("dlx", self.dlx),
                           ("dlq", self.dlq)):
            if value and not _NAME_RE.match(value):
                raise ConfigError(f"amqp.{key}: {value!r} must be 1-255 letters, digits, '.', '_', ':' or '-'")
        if not self.exchange:
            raise ConfigError("amqp.exchange: must not be empty")
        if self.queue and not self.binding_key:
            raise ConfigError("amqp.binding_key: must not be empty when amqp.queue is set")
        if self.dlq and not self.dlx:
            raise ConfigError("amqp.dlq: needs amqp.dlx (the exchange it is bound to)")
        if self.dlx and self.dlx == self.exchange:
            raise ConfigError("amqp.dlx: must differ from amqp.exchange")
        if self.queue and self.queue == self.dlq:
            raise ConfigError("amqp.dlq: must differ from amqp.queue")
        if isinstance(self.message_ttl_s, bool) or not isinstance(self.message_ttl_s, int) or not (
                0 <= self.message_ttl_s <= 2**32 // 1000):
            raise ConfigError("amqp.message_ttl_s: must be a whole number of seconds, 0 (no TTL) or more")
        if self.min_severity not in SEVERITIES:
            raise ConfigError(f"amqp.min_severity: {self.min_severity!r} is not one of {', '.join(SEVERITIES)}")
        if self.batch_size < 1:
            raise ConfigError("amqp.batch_size: must be greater than 0")
        if not (self.reconnect_max_backoff_s > 0 and math.isfinite(self.reconnect_max_backoff_s)):
            raise ConfigError("amqp.reconnect_max_backoff_s: must be a positive number of seconds")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError("amqp.timeout_s: must be a positive number of seconds")

    def queue_arguments(self) -> dict[str, Any]:
        """The ``x-`` arguments of the declared queue (a consumer re-declaring it must pass the same)."""
        args: dict[str, Any] = {}
        if self.message_ttl_s:
            args["x-message-ttl"] = self.message_ttl_s * 1000
        if self.dlx:
            args["x-dead-letter-exchange"] = self.dlx
        return args


class _Retry(Exception):
    """The batch could not be delivered: back off, then retry; ``reconnect`` drops the connection first."""

    def __init__(self, reason: str, detail: str, *, reconnect: bool) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.reconnect = reconnect


def _timestamp(doc: dict[str, Any]) -> dt.datetime:
    """The alert's raise time for the message's ``timestamp`` property (stable across republishing)."""
    try:
        ns = parse_time(str(doc["timestamp"]))
    except (KeyError, ValueError):
        return dt.datetime.now(dt.UTC)
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)


class AmqpSink(OutboxSink):
    """Publishes the ``amqp`` outbox to RabbitMQ; one asyncio task, ``start``/``wake``/``shutdown``."""

    def __init__(self, config: AmqpSinkConfig, store: AlertStore, *, metrics: SinkMetrics | None = None) -> None:
        config.validate()
        super().__init__("amqp", store, config.min_severity, metrics)
        self._config = config
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def config(self) -> AmqpSinkConfig:
        return self._config

    @property
    def connected(self) -> bool:
        return self._exchange is not None and self._is_open()

    async def start(self) -> None:
        """Start the delivery task; it connects in the background, so a broker that is down fails nothing."""
        if self._startable:
            self._spawn(self._run())

    async def shutdown(self) -> None:
        """Stop publishing and close the connection; undelivered rows stay in the outbox. Idempotent."""
        await self._cancel()
        await self._disconnect()

    # --- the delivery loop ------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            # Cleared before draining: a wake during the drain makes the next wait return at once.
            self._wake.clear()
            retry = await self._deliver()
            if retry is None:
                if failures:
                    log.info("alert sink amqp: delivering again to %s", redact_url(self._config.url))
                failures = 0
                self.last_error = ""
                await self._wake.wait()
                continue
            if retry.reconnect:
                await self._disconnect()
            self.last_error = str(retry)
            self._metrics.failures.labels(self.name, retry.reason).inc()
            delay = backoff_s(failures, self._config.reconnect_max_backoff_s, base_s=BASE_BACKOFF_S)
            level = logging.WARNING if failures % LOG_EVERY == 0 else logging.DEBUG
            log.log(level, "alert sink amqp (%s): %s; alerts wait in the outbox, retrying in %.1fs",
                    redact_url(self._config.url), retry, delay)
            failures += 1
            # Not cut short by wake(): new alerts must not turn a broker outage into a reconnect storm.
            await asyncio.sleep(delay)

    async def _deliver(self) -> _Retry | None:
        """Connect if need be and publish until the outbox is empty; the failure, if any."""
        try:
            if not self.connected:
                await self._connect()
            while await self._publish_batch():
                pass
        except _Retry as e:
            return e
        except (StoreError, sqlite3.Error) as e:
            return _Retry("store", f"{type(e).__name__}: {e}", reconnect=False)
        except Exception as e:  # unforeseen: never let the task die, the outbox would stall silently
            log.exception("alert sink amqp: unexpected error")
            return _Retry("error", f"{type(e).__name__}: {e}", reconnect=True)
        return None

    def _is_open(self) -> bool:
        return (self._connection is not None and not self._connection.is_closed
                and self._channel is not None and not self._channel.is_closed)

    async def _connect(self) -> None:
        await self._disconnect()
        cfg = self._config
        try:
            connection = await aio_pika.connect(
                cfg.url, timeout=cfg.timeout_s, client_properties={"connection_name": "llm-sentinel-aggregator"})
        except asyncio.CancelledError:
            raise
        except Exception as e:
            raise _Retry("connect", f"{type(e).__name__}: {e}", reconnect=True) from e
        try:
            # Confirms: a row is deleted only once the broker has the message; returns raise (mandatory).
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await self._declare(channel)
        except BaseException as e:
            with contextlib.suppress(Exception):
                await connection.close()
            if isinstance(e, Exception):
                raise _Retry("declare", f"{type(e).__name__}: {e}", reconnect=True) from e
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._metrics.connected.labels(self.name).set(1)
        log.info("alert sink amqp: connected to %s, exchange %r", redact_url(cfg.url), cfg.exchange)

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        """The topology; idempotent, so declared on every connect (a broker may have lost it)."""
        cfg, t = self._config, self._config.timeout_s
        exchange = await channel.declare_exchange(cfg.exchange, aio_pika.ExchangeType.TOPIC, durable=True,
                                                  timeout=t)
        if cfg.dlx:
            dlx = await channel.declare_exchange(cfg.dlx, aio_pika.ExchangeType.FANOUT, durable=True, timeout=t)
            if cfg.dlq:
                dlq = await channel.declare_queue(cfg.dlq, durable=True, timeout=t)
                await dlq.bind(dlx, routing_key="", timeout=t)
        if cfg.queue:
            queue = await channel.declare_queue(cfg.queue, durable=True, arguments=cfg.queue_arguments(), timeout=t)
            await queue.bind(exchange, routing_key=cfg.binding_key, timeout=t)
        return exchange

    async def _disconnect(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._exchange = None
        self._metrics.connected.labels(self.name).set(0)
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=self._config.timeout_s)

    def _message(self, item: OutboxItem) -> tuple[aio_pika.Message, str] | None:
        """The message and routing key of a row; ``None`` when its payload is not an alert."""
        try:
            doc = json.loads(item.payload)
            severity = doc["severity"]
        except (ValueError, TypeError, KeyError):
            return None
        if severity not in SEVERITIES:
            return None
        message = aio_pika.Message(
            item.payload,
            content_type=CONTENT_TYPE,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=item.alert_id,  # consumers de-duplicate on it (at-least-once across failures)
            type=MESSAGE_TYPE,
            timestamp=_timestamp(doc),
            app_id=APP_ID,
        )
        return message, ROUTING_KEY_PREFIX + severity

    async def _publish_batch(self) -> bool:
        """Publish the next rows and delete the confirmed ones; True when there may be more."""
        cfg = self._config
        items = await asyncio.to_thread(self._store.outbox_pending, self.name, cfg.batch_size)
        if not items:
            return False
        exchange = self._exchange
        if exchange is None:
            raise _Retry("connect", "not connected", reconnect=True)
        batch: list[tuple[OutboxItem, aio_pika.Message, str]] = []
        for item in items:
            built = self._message(item)
            if built is None:
                log.error("alert sink amqp: outbox row %s is not an alert document; given up", item.alert_id)
                await asyncio.to_thread(self._store.outbox_failed, self.name, item.alert_id,
                                        "payload is not an alert document", dead=True)
                self._metrics.failures.labels(self.name, "invalid").inc()
                self._metrics.dead.labels(self.name).inc()
                continue
            batch.append((item, *built))
        # Published concurrently: the channel sends them in call order (its lock is FIFO) and the
        # confirms arrive pipelined, instead of one round trip per alert.
        results = await asyncio.gather(
            *(exchange.publish(m, rk, mandatory=True, timeout=cfg.timeout_s) for _, m, rk in batch),
            return_exceptions=True)
        done: list[str] = []
        refused: list[tuple[str, str, str]] = []  # (alert_id, reason, error)
        lost: BaseException | None = None
        for (item, _, _), result in zip(batch, results, strict=True):
            if not isinstance(result, BaseException):
                done.append(item.alert_id)
            elif isinstance(result, PublishError):
                refused.append((item.alert_id, "returned", "unroutable: no queue bound for the routing key"))
            elif isinstance(result, DeliveryError):
                refused.append((item.alert_id, "nack", "the broker nacked the message"))
            elif lost is None:
                lost = result
        if done:
            await asyncio.to_thread(self._store.outbox_done, self.name, done)
            self._metrics.sent.labels(self.name).inc(len(done))
        for alert_id, reason, error in refused:
            await asyncio.to_thread(self._store.outbox_failed, self.name, alert_id, error, dead=False)
            self._metrics.failures.labels(self.name, reason).inc()
        if lost is not None:
            # Unconfirmed: the broker may or may not have them; they are published again after reconnecting.
            reason = "timeout" if isinstance(lost, TimeoutError) else "connection"
            raise _Retry(reason, f"{type(lost).__name__}: {lost}", reconnect=True)
        if refused:
            raise _Retry(refused[0][1], f"{len(refused)} of {len(batch)} alerts: {refused[0][2]}", reconnect=False)
        return len(items) == cfg.batch_size
