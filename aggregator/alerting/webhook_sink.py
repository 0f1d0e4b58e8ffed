"""The webhook alert sinks: each configured webhook POSTs its outbox rows, in order, one at a time.

``format: json`` posts the alert document as stored; ``format: slack`` posts a Slack-compatible
message (``text`` and ``blocks``: severity, type, service, model, value against baseline, runbook
link) that Slack incoming webhooks, Mattermost and most chat bridges accept.

Outcomes: 2xx delivers (the row is deleted); any other status except 408 and 429 below 500 is
permanent (the receiver refuses this alert; the row is kept as dead, logged, counted); 408, 429,
5xx, timeouts and connection errors are retried with exponential backoff (``backoff_s * 2**n``
±20 %, raised to ``Retry-After`` on 429/503, capped) until ``attempts`` tries in all, then the row
is dead too. Attempts are counted in the store, so a restart does not grant a row new ones. The
next alert waits for the one before it: order is preserved per webhook.

A webhook's outbox name is ``webhook:<name>``; see ``SINKS.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import sqlite3
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from aggregator.alerting.amqp_sink import BASE_BACKOFF_S
from aggregator.alerting.sink import OutboxSink, SinkMetrics
from aggregator.alerting.store import AlertStore, OutboxItem, StoreError
from sentinel.alerts import SEVERITIES
from sentinel.config import ConfigError, load_map
from sentinel.retry import backoff_s, retry_after
from sentinel.slack import slack_body

__all__ = [
    "DEFAULT_ATTEMPTS",
    "DEFAULT_BACKOFF_S",
    "DEFAULT_TIMEOUT_S",
    "FORMATS",
    "MAX_BACKOFF_S",
    "RETRYABLE_4XX",
    "WebhookConfig",
    "WebhookSink",
    "parse_webhooks",
]

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("json", "slack")
DEFAULT_FORMAT = "json"
DEFAULT_MIN_SEVERITY = "low"
DEFAULT_ATTEMPTS = 3
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_BACKOFF_S = 1.0
#: Cap of one wait between attempts, ``Retry-After`` included: a receiver asking for an hour gets this.
MAX_BACKOFF_S = 60.0
#: Client errors that say "later", not "never".
RETRYABLE_4XX = frozenset({408, 429})
#: Statuses whose ``Retry-After`` is honoured.
RETRY_AFTER_STATUS = frozenset({429, 503})
#: Rows read from the outbox at a time (they are then posted one by one).
BATCH_SIZE = 50
USER_AGENT = "llm-sentinel-aggregator"

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # part of the outbox key and of metric labels


@dataclass(frozen=True)
class WebhookConfig:
    """One webhook; :meth:`validate` names the setting at fault under ``key`` (``webhooks[0]``)."""

    name: str
    url: str
    format: str = DEFAULT_FORMAT
    min_severity: str = DEFAULT_MIN_SEVERITY
    attempts: int = DEFAULT_ATTEMPTS  # tries in all, the first included
    timeout_s: float = DEFAULT_TIMEOUT_S  # per phase: connect, write, each read
    backoff_s: float = DEFAULT_BACKOFF_S  # wait before the second try; doubled for each one after
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization; sent with every request

    def validate(self, key: str = "webhook") -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ConfigError(f"{key}.name: must be 1-64 letters, digits, '.', '_' or '-'")
        try:
            parts = urllib.parse.urlsplit(self.url)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except (TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{key}.url: {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{key}.url: must be an http:// or https:// URL, got {self.url!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"{key}.format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.min_severity not in SEVERITIES:
            raise ConfigError(f"{key}.min_severity: {self.min_severity!r} is not one of {', '.join(SEVERITIES)}")
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ConfigError(f"{key}.attempts: must be a whole number, 1 or more")
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ConfigError(f"{key}.timeout_s: must be a positive number of seconds")
        if not (self.backoff_s >= 0 and math.isfinite(self.backoff_s)):
            raise ConfigError(f"{key}.backoff_s: must be a number of seconds, 0 or more")
        if not isinstance(self.headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()):
            raise ConfigError(f"{key}.headers: must be a map of header names to strings")

    @property
    def sink_name(self) -> str:
        return f"webhook:{self.name}"


def parse_webhooks(items: Sequence[Mapping[str, Any]] | None) -> list[WebhookConfig]:
    """The ``webhooks`` setting (a list of maps) as validated configs; names must be unique.

    Errors name the entry and key: ``webhooks[1].url: …``.
    """
    out: list[WebhookConfig] = []
    seen: set[str] = set()
    if items is None:
        return out
    if not isinstance(items, list | tuple):
        raise ConfigError("webhooks: must be a list of maps")
    for i, raw in enumerate(items):
        key = f"webhooks[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{key}: must be a map with at least name and url")
        for k in ("name", "url"):  # unknown keys and bad values: load_map's, below
            if not raw.get(k):
                raise ConfigError(f"{key}.{k}: required")
        raw = dict(raw)
        headers = raw.get("headers", {})
        if isinstance(headers, Mapping):  # header values as strings (a YAML number is meant as its text)
            raw["headers"] = {str(k): str(v) for k, v in (headers or {}).items()}
        elif headers is None:
            raw["headers"] = {}
        config = load_map(WebhookConfig, raw, key)
        config.validate(key)
        if config.name in seen:
            raise ConfigError(f"{key}.name: {config.name!r} is used by an earlier webhook")
        seen.add(config.name)
        out.append(config)
    return out


# --- the sink ---------------------------------------------------------------------------------


class WebhookSink(OutboxSink):
    """Posts the ``webhook:<name>`` outbox to one URL; one asyncio task, ``start``/``wake``/``shutdown``."""

    def __init__(self, config: WebhookConfig, store: AlertStore, *, metrics: SinkMetrics | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        config.validate()
        super().__init__(config.sink_name, store, config.min_severity, metrics)
        self._config = config
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    @property
    def config(self) -> WebhookConfig:
        return self._config

    async def start(self) -> None:
        if not self._startable:
            return
        headers = {"User-Agent": USER_AGENT, **self._config.headers, "Content-Type": "application/json"}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=self._config.timeout_s, transport=self._transport,
            follow_redirects=False,  # a redirect is a misconfigured URL: permanent, like other 3xx/4xx
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        self._spawn(self._run())

    async def shutdown(self) -> None:
        """Stop (an attempt in flight is abandoned, its row stays in the outbox); idempotent."""
        await self._cancel()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()  # before draining: a wake during the drain makes the next wait return at once
            try:
                while await self._deliver_batch():
                    pass
            except Exception as e:
                # The store (or a bug), not the webhook: back off and read again; delivery state is all in
                # the store, and a task that died would stall the outbox silently.
                reason = "store" if isinstance(e, StoreError | sqlite3.Error) else "error"
                self._metrics.failures.labels(self.name, reason).inc()
                self.last_error = f"{type(e).__name__}: {e}"
                delay = backoff_s(failures, MAX_BACKOFF_S, base_s=BASE_BACKOFF_S)
                log.log(logging.WARNING if reason == "store" else logging.ERROR,
                        "alert sink %s: %s; retrying in %.1fs", self.name, self.last_error, delay,
                        exc_info=reason == "error")
                failures += 1
                await asyncio.sleep(delay)
                continue
            failures = 0
            await self._wake.wait()

    async def _deliver_batch(self) -> bool:
        items = await asyncio.to_thread(self._store.outbox_pending, self.name, BATCH_SIZE)
        for item in items:
            await self._deliver(item)
        return len(items) == BATCH_SIZE

    def _body(self, item: OutboxItem) -> bytes:
        if self._config.format == "json":
            return item.payload  # the alert document, byte for byte as stored
        doc = json.loads(item.payload)
        return json.dumps(slack_body(doc), separators=(",", ":")).encode()

    async def _give_up(self, item: OutboxItem, error: str) -> None:
        self.last_error = error
        log.error("alert sink %s: gave up on alert %s: %s", self.name, item.alert_id, error)
        await asyncio.to_thread(self._store.outbox_failed, self.name, item.alert_id, error, dead=True)
        self._metrics.dead.labels(self.name).inc()

    async def _deliver(self, item: OutboxItem) -> None:
        """Post one row until it is delivered or given up on."""
        assert self._client is not None
        cfg = self._config
        try:
            body = self._body(item)
        except (ValueError, TypeError, AttributeError) as e:
            self._metrics.failures.labels(self.name, "invalid").inc()
            await self._give_up(item, f"payload is not an alert document: {e}")
            return
        headers = {"X-Sentinel-Alert-Id": item.alert_id}  # lets a receiver de-duplicate
        attempt = item.attempts  # tries made before a restart count too
        while True:
            hint: float | None = None
            try:
                r = await self._client.post(cfg.url, content=body, headers=headers)
            except httpx.TimeoutException as e:
                reason, error = "timeout", f"timed out after {cfg.timeout_s}s ({type(e).__name__})"
                self._metrics.connected.labels(self.name).set(0)
            except httpx.HTTPError as e:
                reason, error = "transport", f"{type(e).__name__}: {e}"
                self._metrics.connected.labels(self.name).set(0)
            else:
                self._metrics.connected.labels(self.name).set(1)
                status = r.status_code
                if 200 <= status < 300:
                    await asyncio.to_thread(self._store.outbox_done, self.name, [item.alert_id])
                    self._metrics.sent.labels(self.name).inc()
                    self.last_error = ""
                    return
                reason, error = f"http_{status}", f"HTTP {status}: {r.text[:200]}"
                if status < 500 and status not in RETRYABLE_4XX:
                    self._metrics.failures.labels(self.name, reason).inc()
                    await self._give_up(item, f"refused ({error})")
                    return
                if status in RETRY_AFTER_STATUS:
                    hint = retry_after(r)
            self._metrics.failures.labels(self.name, reason).inc()
            attempt += 1
            if attempt >= cfg.attempts:
                await self._give_up(item, f"{error} (attempt {attempt} of {cfg.attempts})")
                return
            self.last_error = error
            await asyncio.to_thread(self._store.outbox_failed, self.name, item.alert_id, error, dead=False)
            delay = backoff_s(attempt - 1, MAX_BACKOFF_S, base_s=cfg.backoff_s, retry_after_s=hint)
            log.warning("alert sink %s: alert %s not delivered (%s); attempt %d of %d in %.1fs",
                        self.name, item.alert_id, error, attempt + 1, cfg.attempts, delay)
            await asyncio.sleep(delay)
