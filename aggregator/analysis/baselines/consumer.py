"""Global baselines as an analysis consumer: fed by accepted batches, snapshotted, restored, served.

Wraps :class:`aggregator.analysis.baselines.store.BaselineStore` with the lock that lets the API
read while the analysis thread updates, the file in ``data_dir`` that makes baselines survive a
restart (written by the analysis stage), and the ``GET /api/v1/baselines`` handler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from aggregator.analysis.baselines.store import ALL_REGIONS, FORMAT_VERSION, BaselineConfig, BaselineStore
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.state import JsonStateFile
from aggregator.analysis.summaries import merge_into
from sentinel.summary import Summary
from sentinel.wire import WireBatch

__all__ = ["FILE_NAME", "BaselineConsumer", "baseline_filters"]

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


class BaselineConsumer:
    """A :class:`~aggregator.analysis.pipeline.Consumer`: every row updates the global baselines."""

    def __init__(self, config: BaselineConfig, data_dir: str | Path) -> None:
        self.store = BaselineStore(config)
        self.state_file = JsonStateFile(Path(data_dir) / FILE_NAME, version=FORMAT_VERSION, what="baselines")
        self._lock = threading.Lock()
        self._dirty = False

    def restore(self, state: Mapping[str, Any] | None) -> None:
        # In place: the confirmer reads this same store object.
        with self._lock:
            if state is None:
                self.store.clear()
                return
            self.store.from_doc(state)
        log.info("restored %d baselines from %s", len(self.store), self.state_file.path)

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        # Event time: baselines learn from every row, late ones included, in their own time.
        with self._lock:
            self.store.update(batch.batch)
            self._dirty = True
        return []

    def merge_summaries(self, summaries: list[Summary]) -> None:
        """Fold sidecars' summaries into the baselines (``forward: summaries``; see :mod:`.summaries`)."""
        with self._lock:
            merge_into(self.store, summaries)
            self._dirty = True

    def snapshot(self) -> dict[str, Any] | None:
        with self._lock:
            if not self._dirty:
                return None
            self._dirty = False
            return self.store.to_doc()

    def shutdown(self) -> None:
        """Nothing to stop."""

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
