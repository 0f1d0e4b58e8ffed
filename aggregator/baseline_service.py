"""Global baselines as an aggregator component: fed by accepted batches, saved, restored, served.

Wraps :class:`aggregator.baselines.BaselineStore` with the lock that lets the API read while the
analysis thread updates, the file in ``data_dir`` that makes baselines survive a restart, and
the ``GET /api/v1/baselines`` handler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from aggregator.baselines import ALL_REGIONS, BaselineConfig, BaselineStore
from aggregator.summaries import merge_into
from sentinel.summary import Summary
from sentinel.wire import WireBatch

__all__ = ["FILE_NAME", "BaselineService", "baseline_filters"]

log = logging.getLogger(__name__)

FILE_NAME = "baselines.json"


def baseline_filters(query: Mapping[str, str]) -> dict[str, Any]:
    """``BaselineStore.query``'s arguments from ``?service=&model=&operation=&region=&hour=``.

    ``region`` absent: global and regional baselines; ``region=global``: the global ones only;
    ``hour`` (0–167, UTC hour of week) selects seasonal baselines. A bad ``hour`` raises ``ValueError``.
    """
    region: str | None = query.get("region", ALL_REGIONS)
    if region == "global":
        region = None
    hour: int | None = None
    if "hour" in query:
        try:
            hour = int(query["hour"])
        except ValueError:
            hour = -1
        if not 0 <= hour <= 167:
            raise ValueError("hour: must be an integer 0-167")
    return {"service": query.get("service"), "model": query.get("model"), "operation": query.get("operation"),
            "region": region, "hour": hour}


class BaselineService:
    def __init__(self, config: BaselineConfig, data_dir: str | Path) -> None:
        self.store = BaselineStore(config)
        self.path = Path(data_dir) / FILE_NAME
        self._lock = threading.Lock()
        self._dirty = False

    def restore(self) -> None:
        """Load the saved baselines, if any (a damaged file is logged and set aside, not fatal)."""
        if not self.path.exists():
            return
        try:
            self.store.load(self.path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = self.path.with_suffix(".damaged")
            self.path.replace(aside)
            log.error("baselines in %s could not be restored (%s); moved to %s, starting afresh", self.path, e, aside)
            return
        log.info("restored %d baselines from %s", len(self.store), self.path)

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> None:
        # Event time: baselines learn from every row, late ones included, in their own time.
        with self._lock:
            self.store.update(batch.batch)
            self._dirty = True

    def merge_summaries(self, summaries: list[Summary]) -> None:
        """Fold sidecars' summaries into the baselines (``forward: summaries``; ``aggregator/summaries.py``)."""
        with self._lock:
            merge_into(self.store, summaries)
            self._dirty = True

    def save(self) -> None:
        with self._lock:
            if not self._dirty:
                return
            self.store.save(self.path)
            self._dirty = False

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /api/v1/baselines?service=&model=&operation=&region=&hour=``.

        ``region`` absent: global and regional baselines; ``region=global``: the global ones only;
        ``hour`` (0–167, UTC hour of week) selects seasonal baselines.
        """
        try:
            filters = baseline_filters(request.query)
        except ValueError as e:
            return web.json_response({"status": "error", "error": str(e)}, status=400)
        with self._lock:
            items: list[dict[str, Any]] = self.store.query(**filters)
        return web.json_response({"baselines": items, "count": len(items)})
