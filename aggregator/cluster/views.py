"""What every replica answers for the whole cluster: services, their series, baselines and quality series.

Each partition's owner writes a summary of it with every checkpoint (the same ``UPDATE``, under the
partition's epoch): per service of the partition its health window, its last hour of series points,
its global latency baseline and its quality series, and the partition's all-week baselines as
``GET /api/v1/baselines`` serves them (:func:`summarise`). Any replica reads every partition's
summary back from ``cluster_partitions`` (:class:`ClusterView`, cached for ``REFRESH_S``), so every
replica answers the same, at most one checkpoint interval (``cluster.checkpoint_interval_s``) behind
the rows. What a summary does not hold — a series range other than the last hour, the seasonal
baselines (``hour=``) — is read from the partitions' checkpoints themselves (the state files of
their series and baseline consumers): one partition for a service's series, every partition for
seasonal baselines (one when a service is named).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
from aiohttp import web

from aggregator.alerting.store import SideTableHost
from aggregator.analysis.baselines import consumer as baselines_file
from aggregator.analysis.baselines.consumer import BaselineConsumer, baseline_filters
from aggregator.analysis.baselines.store import ALL_REGIONS, BaselineConfig, BaselineStore
from aggregator.analysis.pipeline import Consumer, innermost
from aggregator.analysis.quality.consumer import QualityConsumer
from aggregator.analysis.series import FILE_NAME as SERIES_FILE
from aggregator.analysis.series import SeriesConsumer
from aggregator.api.services_api import HEALTH_WINDOW_S, baseline_latency
from aggregator.cluster.checkpoint import unpack
from aggregator.cluster.partition import partition_of

__all__ = ["REFRESH_S", "SUMMARY_VERSION", "ClusterView", "summarise"]

SUMMARY_VERSION = 1
#: Summaries read at most this often per replica (an API poll of many clients costs one query).
REFRESH_S = 1.0


def summarise(consumers: Sequence[Consumer], *, window_s: float = HEALTH_WINDOW_S) -> bytes:
    """One partition's summary (msgpack), from its consumers; call it on the analysis thread."""
    inner = [innermost(c) for c in consumers]
    series = next((c for c in inner if isinstance(c, SeriesConsumer)), None)
    baselines = next((c for c in inner if isinstance(c, BaselineConsumer)), None)
    quality = next((c for c in inner if isinstance(c, QualityConsumer)), None)
    names = series.services() if series is not None else []
    latency = baseline_latency(baselines, names) if baselines is not None else {}
    services = {n: {"window": series.health_window(n, window_s=window_s), "series": series.series(n),
                    "baseline": latency.get(n), "quality": quality.series(n) if quality is not None else []}
                for n in names if series is not None}
    items: list[dict[str, Any]] = []
    if baselines is not None:
        with baselines._lock:  # the consumer's own lock, as the API takes it
            items = baselines.store.query()
    doc = {"version": SUMMARY_VERSION, "step_s": series.step_s if series is not None else 60,
           "services": services, "baselines": items}
    out: bytes = msgpack.packb(doc, use_bin_type=True)
    return out


def _matches(item: dict[str, Any], filters: dict[str, Any]) -> bool:
    for name in ("service", "model", "operation"):
        if filters.get(name) is not None and item[name] != filters[name]:
            return False
    region = filters.get("region", ALL_REGIONS)
    return region == ALL_REGIONS or bool(item["region"] == region)


def _sort_key(d: dict[str, Any]) -> tuple[tuple[bool, str], ...]:  # BaselineStore.query's order
    return tuple((v is not None, v or "") for v in (d["service"], d["model"], d["operation"], d["region"]))


class ClusterView:
    """The cluster's services and baselines from the partitions' summaries (thread-safe; reads block)."""

    def __init__(self, store: SideTableHost, *, partitions: int, baselines: BaselineConfig,
                 refresh_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.partitions = partitions
        self.baseline_config = baselines
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._docs: list[dict[str, Any]] = []
        self._read_at = -float("inf")

    def docs(self) -> list[dict[str, Any]]:
        """Every partition's summary (read again when older than ``refresh_s``)."""
        with self._lock:
            if self._clock() - self._read_at >= self.refresh_s:
                with self.store.connection() as db:
                    rows = db.execute("SELECT summary FROM cluster_partitions WHERE summary IS NOT NULL "
                                      "ORDER BY partition").fetchall()
                docs = [msgpack.unpackb(bytes(r[0]), raw=False) for r in rows]
                self._docs = [d for d in docs if isinstance(d, dict) and d.get("version") == SUMMARY_VERSION]
                self._read_at = self._clock()
            return self._docs

    def _service(self, service: str) -> dict[str, Any] | None:
        for d in self.docs():
            s = d["services"].get(service)
            if s is not None:
                return dict(s)
        return None

    # -- what ServicesApi reads (the SeriesConsumer's methods it uses) ------------------------------

    @property
    def step_s(self) -> int:
        docs = self.docs()
        return int(docs[0]["step_s"]) if docs else 60

    def services(self) -> list[str]:
        return sorted({n for d in self.docs() for n in d["services"]})

    def health_window(self, service: str, now_ns: int | None = None,
                      window_s: float = HEALTH_WINDOW_S) -> dict[str, Any] | None:
        s = self._service(service)
        return s["window"] if s is not None else None

    def series(self, service: str, start_ns: int | None = None, end_ns: int | None = None) -> dict[str, Any] | None:
        if start_ns is None and end_ns is None:  # the default range: the summary's hour
            s = self._service(service)
            return s["series"] if s is not None else None
        states = self._files([partition_of(service, self.partitions)], SERIES_FILE)
        if not states:
            return None
        with tempfile.TemporaryDirectory() as tmp:  # a consumer's path only: nothing is written there
            series = SeriesConsumer(tmp)
            series.restore(states[0])
            return series.series(service, start_ns, end_ns)

    def latency(self, services: Iterable[str]) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for n in services:
            s = self._service(n)
            if s is not None and s["baseline"] is not None:
                out[n] = s["baseline"]
        return out

    def quality_series(self, service: str) -> list[dict[str, Any]]:
        s = self._service(service)
        return list(s["quality"]) if s is not None else []

    # -- baselines ---------------------------------------------------------------------------------

    def query(self, service: str | None = None, model: str | None = None, operation: str | None = None,
              region: str | None = ALL_REGIONS, hour: int | None = None) -> list[dict[str, Any]]:
        """What ``BaselineStore.query`` answers, over every partition."""
        filters = {"service": service, "model": model, "operation": operation, "region": region}
        if hour is None:
            items = [i for d in self.docs() for i in d["baselines"] if _matches(i, filters)]
            return sorted(items, key=_sort_key)
        parts = [partition_of(service, self.partitions)] if service is not None else list(range(self.partitions))
        items = []
        for state in self._files(parts, baselines_file.FILE_NAME):
            store = BaselineStore(self.baseline_config)
            store.from_doc(state)
            items += store.query(service, model, operation, region, hour)
        return sorted(items, key=_sort_key)

    async def handle_baselines(self, request: web.Request) -> web.Response:
        """``GET /api/v1/baselines`` of a cluster replica (the parameters of a single process's)."""
        try:
            filters = baseline_filters(request.query)
        except ValueError as e:
            return web.json_response({"status": "error", "error": str(e)}, status=400)
        items = await asyncio.to_thread(lambda: self.query(**filters))
        return web.json_response({"baselines": items, "count": len(items)})

    def _files(self, partitions: Sequence[int], name: str) -> list[dict[str, Any]]:
        """The state file ``name`` of each of ``partitions``' checkpoints (those that have one)."""
        with self.store.connection() as db:
            rows = db.execute("SELECT state FROM cluster_partitions WHERE state IS NOT NULL AND partition = ANY(?) "
                              "ORDER BY partition", (list(partitions),)).fetchall()
        out = []
        for r in rows:
            _, files = unpack(bytes(r[0]))
            data = files.get(name)
            if data is not None:
                out.append(json.loads(data))
        return out
