"""Sends sealed batches to the aggregator (``POST /v1/ingest``), one at a time, in order.

Retries follow the OTLP exporters' habits: retryable outcomes are a ``frozenset`` of status codes
plus transport errors; the wait is ``2**n`` seconds (from 0.1 s) with ±20 % jitter, capped by
``retry_max_backoff_s``, raised to the server's ``Retry-After`` when it gives one, and cut short by
shutdown. A batch is retried until it is acknowledged, so nothing is lost while the aggregator is
away (the spool holds what memory cannot); only permanent refusals drop it, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass

import aiohttp

from sentinel import wire
from sentinel.retry import backoff_s
from sentinel.retry import retry_after as retry_after_of
from sentinel.tasks import TaskSupervisor
from sidecar.forward_queue import ForwardQueue, QueueItem
from sidecar.metrics import SidecarMetrics

__all__ = ["PERMANENT_STATUS", "RETRYABLE_STATUS", "Forwarder", "ForwarderConfig"]

log = logging.getLogger(__name__)

#: Statuses after which the same batch is sent again.
RETRYABLE_STATUS = frozenset({401, 403, 408, 429, 500, 502, 503, 504})
#: Statuses that mean the batch itself is refused: resending it cannot succeed.
PERMANENT_STATUS = frozenset({400, 413, 415, 422})
#: Statuses that say the aggregator is not there (a proxy or load balancer answering for it, or it
#: is shutting down), as a connection error does: local alerts page while they last.
UNREACHABLE_STATUS = frozenset({502, 503, 504})



@dataclass(frozen=True)
class ForwarderConfig:
    aggregator_url: str
    token: str = ""
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    timeout_s: float = 10.0
    max_backoff_s: float = 30.0


class Forwarder:
    """Takes batches from a :class:`ForwardQueue` and delivers them; ``start``/``shutdown``."""

    def __init__(
        self,
        config: ForwarderConfig,
        queue: ForwardQueue,
        metrics: SidecarMetrics,
        *,
        tasks: TaskSupervisor | None = None,
    ) -> None:
        self._config = config
        self._tasks = tasks if tasks is not None else TaskSupervisor(None, "sentinel_sidecar")
        self._queue = queue
        self._metrics = metrics
        self._client: aiohttp.ClientSession | None = None
        self._url = config.aggregator_url.rstrip("/") + "/v1/ingest"
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.last_error: str = ""
        #: Whether the last delivery attempt found the aggregator away (connection error, 502/503/504);
        #: what ``local_alerts.mode: offline`` pages on (:mod:`sidecar.local_alerts`).
        self.unreachable = False

    async def start(self) -> None:
        headers = {"Content-Type": wire.CONTENT_TYPE, "User-Agent": "llm-sentinel-sidecar"}
        if self._config.token:
            headers["Authorization"] = f"Bearer {self._config.token}"
        verify: ssl.SSLContext | bool = True
        c = self._config
        if c.ca_file or c.client_cert_file:
            verify = ssl.create_default_context(cafile=c.ca_file or None)
            if c.client_cert_file:  # mTLS: the aggregator asks for a certificate signed by its client CA
                verify.load_cert_chain(c.client_cert_file, c.client_key_file or None)
        # aiohttp's client, not httpx: aiohttp is loaded anyway (the OTLP/HTTP receiver and the ops
        # server); httpx with httpcore, h11 and anyio was ~10 MiB of the sidecar's RSS (issue 16).
        # trust_env: HTTP(S)_PROXY / NO_PROXY are honoured, as httpx did.
        self._client = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=c.timeout_s), trust_env=True,
            connector=aiohttp.TCPConnector(limit=2, ssl=verify),
        )
        # Supervised: an error the loop does not expect (a read-only spool failing its ack) restarts
        # it and shows in /readyz; the batch whose ack failed was delivered and is not sent again
        # by this process (after a restart of the sidecar it is, and answered "duplicate").
        self._task = self._tasks.spawn("forwarder", self._run)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            item = await self._queue.get()
            await self._deliver(item)

    async def _deliver(self, item: QueueItem) -> None:
        assert self._client is not None
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                async with self._client.post(self._url, data=item.batch.body) as r:
                    status, text = r.status, await r.text(errors="replace")
                    retry_after = retry_after_of(r)
            except (aiohttp.ClientError, TimeoutError) as e:
                reason = type(e).__name__
                self.last_error = f"{reason}: {e}"
                self.unreachable = True
                retry_after = None
            else:
                self.unreachable = status in UNREACHABLE_STATUS
                if 200 <= status < 300:
                    self.last_error = ""
                    self._metrics.forwarded_rows.inc(item.batch.rows)
                    self._metrics.forwarded_batches.inc()
                    await self._queue.ack(item)
                    return
                if status in PERMANENT_STATUS:
                    log.error("aggregator refused batch seq=%d (%d rows) with %d: %s; dropped",
                              item.batch.seq, item.batch.rows, status, text[:200])
                    await self._queue.drop(item, "rejected")
                    return
                reason = str(status)
                self.last_error = f"HTTP {status}"
            self._metrics.forward_retries.labels(reason).inc()
            delay = backoff_s(attempt, self._config.max_backoff_s, retry_after_s=retry_after)
            if attempt == 0 or attempt % 10 == 0:
                log.warning("forward of batch seq=%d failed (%s); retrying in %.1fs",
                            item.batch.seq, self.last_error, delay)
            attempt += 1
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            except TimeoutError:
                continue
            return  # shutting down: the batch stays queued (spilled to the spool by the queue)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the queue is empty or ``timeout_s`` passes; True if it emptied."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._queue.pending() and loop.time() < deadline:
            if self._task is not None and self._task.done():
                break
            await asyncio.sleep(0.02)
        return self._queue.pending() == 0

    async def shutdown(self) -> None:
        """Stop sending (the current attempt is abandoned, its batch stays queued); idempotent."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.close()
            self._client = None
