"""Long-running tasks that never die silently: restarted after an error, visible in ``/readyz``.

A background loop (the sidecar's forwarder, the aggregator's ingest worker, the webhook's
certificate reload) that ends with an unexpected exception used to end for good while the process
kept answering OK: a read-only spool ended the forwarder and nothing was forwarded again. Each such
loop now runs under :meth:`TaskSupervisor.spawn`: an exception is logged with its traceback,
counted (``<prefix>_task_restarts_total{task}``), and the loop is started again after a backoff
(0.1 s doubling to ``max_backoff_s``). From the failure until the restarted loop has run for
``settle_s`` without failing again, :meth:`TaskSupervisor.problem` names it, so ``/readyz`` answers
503 with the reason and ``<prefix>_task_up{task}`` is 0 — a crash loop stays visible.

Cancellation (shutdown) ends a supervised task quietly; a loop that returns has finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from sentinel.retry import backoff_s

__all__ = ["DEFAULT_SETTLE_S", "TaskSupervisor"]

log = logging.getLogger(__name__)

#: How long a restarted task must run without failing before it counts as healthy again.
DEFAULT_SETTLE_S = 10.0
DEFAULT_MAX_BACKOFF_S = 30.0


@dataclass
class _State:
    failures: int = 0
    last_error: str = ""
    failed_at: float | None = None  # monotonic time of the last failure
    restarted_at: float | None = None  # None while waiting to restart


class TaskSupervisor:
    """Runs and watches one process's long-running tasks; ``problem()`` feeds its readiness."""

    def __init__(self, registry: CollectorRegistry | None, prefix: str, *, settle_s: float = DEFAULT_SETTLE_S,
                 max_backoff_s: float = DEFAULT_MAX_BACKOFF_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._restarts = Counter(f"{prefix}_task_restarts", "Long-running tasks restarted after an unexpected "
                                 "error", ["task"], registry=registry)
        self._up = Gauge(f"{prefix}_task_up", "1 while a long-running task runs healthily; 0 from an error until "
                         "it has run settle_s again", ["task"], registry=registry)
        self.settle_s = settle_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._states: dict[str, _State] = {}

    def spawn(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None]:
        """Start ``run()`` as task ``name``; it is called again whenever it raises."""
        self._states[name] = _State()
        self._up.labels(name).set(1)
        return asyncio.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        state = self._states[name]
        attempt = 0
        while True:
            started = self._clock()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                now = self._clock()
                attempt = attempt + 1 if now - started < self.settle_s else 0
                state.failures += 1
                state.failed_at, state.restarted_at = now, None
                state.last_error = f"{type(e).__name__}: {e}"
                self._restarts.labels(name).inc()
                self._up.labels(name).set(0)
                delay = backoff_s(attempt, self._max_backoff_s)
                log.exception("task %s failed (%s); restarting in %.1f s", name, state.last_error, delay)
            await asyncio.sleep(delay)
            state.restarted_at = self._clock()
            asyncio.get_running_loop().call_later(self.settle_s, self._settled, name)

    def _settled(self, name: str) -> None:
        if not self.failing(name):
            self._up.labels(name).set(1)

    def failing(self, name: str) -> bool:
        s = self._states.get(name)
        if s is None or s.failed_at is None:
            return False
        return s.restarted_at is None or self._clock() - s.restarted_at < self.settle_s

    def problem(self) -> str:
        """``""`` when every task is healthy, else which ones failed and why (for ``/readyz``)."""
        failing = [f"task {name} failed ({s.last_error}), restarted {s.failures} times"
                   for name, s in sorted(self._states.items()) if self.failing(name)]
        return "; ".join(failing)
