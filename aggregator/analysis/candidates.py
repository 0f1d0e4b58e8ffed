"""Where detection candidates go: the alert manager, a bounded log, metrics and an API.

Every analysis consumer returns the :class:`aggregator.analysis.detectors.Candidate` s a batch
raised; the analysis stage hands them to the aggregator's one sink (``Aggregator._emit`` in
``aggregator/app.py``), which gives each batch of them to :meth:`CandidateLog.emit` (thread-safe:
it runs on the analysis thread) and to the alert manager (``aggregator/alerting/manager.py``).
The log keeps the newest ``max_items`` in memory, serves them at ``GET /api/v1/candidates`` and counts each in
``sentinel_aggregator_candidates_total{anomaly_type, detection_method}``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from aggregator.analysis.detectors.candidate import Candidate

__all__ = ["CandidateLog"]


class CandidateLog:
    def __init__(self, *, max_items: int = 10_000, registry: CollectorRegistry | None = None) -> None:
        self._items: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_items)
        self._lock = threading.Lock()
        self._seq = 0
        self.counter = Counter("sentinel_aggregator_candidates", "Detection candidates by type and method",
                               ["anomaly_type", "detection_method"], registry=registry)

    def emit(self, candidates: Iterable[Candidate]) -> None:
        now = time.time_ns()
        with self._lock:
            for c in candidates:
                self._seq += 1
                self._items.append({"id": self._seq, "detected_at": now, **c.to_dict()})
                self.counter.labels(c.anomaly_type, c.detection_method).inc()

    def recent(self, *, anomaly_type: str | None = None, service: str | None = None, limit: int = 100,
               after_id: int = 0) -> list[dict[str, Any]]:
        """Newest first, filtered."""
        with self._lock:
            items = list(self._items)
        out: list[dict[str, Any]] = []
        for item in reversed(items):
            if item["id"] <= after_id:
                break
            if anomaly_type and item["anomaly_type"] != anomaly_type:
                continue
            if service and item["service"] != service:
                continue
            out.append(item)
            if len(out) >= limit:
                break
        return out

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /api/v1/candidates?type=&service=&limit=100&after_id=``."""
        q = request.query
        try:
            limit = int(q.get("limit", "100"))
            after_id = int(q.get("after_id", "0"))
        except ValueError:
            return web.json_response({"status": "error", "error": "limit and after_id must be integers"}, status=400)
        if not 1 <= limit <= 10_000:
            return web.json_response({"status": "error", "error": "limit must be between 1 and 10000"}, status=400)
        items = self.recent(anomaly_type=q.get("type"), service=q.get("service"), limit=limit, after_id=after_id)
        return web.json_response({"candidates": items, "count": len(items)})
