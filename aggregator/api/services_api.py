"""``/api/v1/services``, ``/api/v1/services/{service}/health`` and ``/api/v1/services/{service}/series``.

A service's health combines three sources: the last ``window_s`` (5 minutes) of its traffic from
:class:`aggregator.analysis.series.SeriesConsumer` (in the service's own event time: the window ends at its
newest event, so replayed or simulated traffic is judged like live traffic), its unresolved alerts
from the store, and its global latency baseline (p50/p95 over every model and operation of the
service, all regions, all week) from :class:`aggregator.analysis.baselines.consumer.BaselineConsumer`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from aiohttp import web

from aggregator.alerting.store import MAX_PAGE, AlertQuery
from aggregator.analysis.baselines.consumer import BaselineConsumer
from aggregator.analysis.baselines.store import BaselineKey, MetricBaseline
from aggregator.api.actions import AlertActions
from aggregator.api.params import ParamError, error_response, opt_time
from sentinel.alerts import SEVERITIES, Alert, iso_time

__all__ = ["HEALTH_WINDOW_S", "ServiceSeries", "ServicesApi", "baseline_latency", "health_doc", "health_status"]

HEALTH_WINDOW_S = 300
_CRITICAL = frozenset({"critical", "high"})


def health_status(open_alerts: Iterable[Alert]) -> str:
    """critical with an unresolved critical or high alert, warning with any other unresolved one, else ok."""
    severities = {a.severity for a in open_alerts}
    if severities & _CRITICAL:
        return "critical"
    return "warning" if severities else "ok"


def health_doc(service: str, window: dict[str, Any] | None, open_alerts: Sequence[Alert],
               baseline: dict[str, float | None] | None, window_s: float) -> dict[str, Any]:
    """The ``ServiceHealth`` document (API_SPEC.md) from the window's figures, alerts and baseline."""
    by_severity = collections.Counter(a.severity for a in open_alerts)
    w = window or {}
    newest = w.get("last_seen_ns")
    return {
        "service": service, "status": health_status(open_alerts), "open_alerts": len(open_alerts),
        "open_by_severity": {s: by_severity[s] for s in SEVERITIES if by_severity[s]},
        "last_seen": iso_time(newest) if newest else None, "window_s": window_s,
        "calls": w.get("calls", 0), "error_rate": w.get("error_rate", 0.0),
        "latency_ms_p50": w.get("latency_ms_p50"), "latency_ms_p95": w.get("latency_ms_p95"),
        "tokens_per_min": w.get("tokens_per_min", 0.0), "cost_usd_per_hour": w.get("cost_usd_per_hour", 0.0),
        "baseline": baseline or {"latency_ms_p50": None, "latency_ms_p95": None},
    }


def baseline_latency(baselines: BaselineConsumer, services: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """Each service's global latency p50/p95: the sketches of all its (model, operation) keys merged."""
    store = baselines.store
    out: dict[str, dict[str, float | None]] = {}
    # BaselineConsumer's lock: the analysis thread updates (and reorders) the baselines while we read.
    with baselines._lock:
        for service in services:
            merged = MetricBaseline(store.config.relative_accuracy)
            for item in store.query(service=service, region=None):
                kb = store.baseline(BaselineKey(item["service"], item["model"], item["operation"], None))
                latency = kb.metrics.get("latency_ms") if kb is not None else None
                if latency is not None:
                    merged.merge(latency)
            p50 = merged.quantile(0.50) if merged.count else None
            p95 = merged.quantile(0.95) if merged.count else None
            out[service] = {"latency_ms_p50": p50, "latency_ms_p95": p95}
    return out


class ServiceSeries(Protocol):
    """What the API reads of the services' series: a :class:`SeriesConsumer`, or a cluster's
    :class:`aggregator.cluster.views.ClusterView` (every partition's)."""

    @property
    def step_s(self) -> int: ...

    def services(self) -> list[str]: ...

    def health_window(self, service: str, now_ns: int | None = None,
                      window_s: float = HEALTH_WINDOW_S) -> dict[str, Any] | None: ...

    def series(self, service: str, start_ns: int | None = None,
               end_ns: int | None = None) -> dict[str, Any] | None: ...


class ServicesApi:
    def __init__(self, actions: AlertActions, series: ServiceSeries, baselines: BaselineConsumer | None,
                 clock: Callable[[], int], *, window_s: float = HEALTH_WINDOW_S,
                 latency: Callable[[list[str]], dict[str, dict[str, float | None]]] | None = None) -> None:
        self.actions = actions
        self.series = series
        self.baselines = baselines
        self.clock = clock
        self.window_s = window_s
        # Each service's global latency baseline; a cluster's comes from every partition's summary.
        self.latency = latency if latency is not None else self._latency

    def _latency(self, names: list[str]) -> dict[str, dict[str, float | None]]:
        return baseline_latency(self.baselines, names) if self.baselines is not None else {}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/services", self.list)
        app.router.add_get("/api/v1/services/{service}/health", self.health)
        app.router.add_get("/api/v1/services/{service}/series", self.get_series)

    def healths(self, only: str | None = None) -> list[dict[str, Any]]:
        """ServiceHealth of every known service (seen in traffic or with an unresolved alert), or of ``only``."""
        by_service: dict[str, list[Alert]] = collections.defaultdict(list)
        for a in self.actions.store.unresolved():
            if a.service_name and (only is None or a.service_name == only):
                by_service[a.service_name].append(a)
        known = set(self.series.services()) | set(by_service)
        names = sorted(known) if only is None else [only] if only in known else []
        baselines = self.latency(names)
        return [health_doc(n, self.series.health_window(n, window_s=self.window_s), by_service.get(n, []),
                           baselines.get(n), self.window_s) for n in names]

    async def list(self, request: web.Request) -> web.Response:
        return web.json_response({"services": await asyncio.to_thread(self.healths)})

    async def health(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        docs = await asyncio.to_thread(self.healths, service)
        if not docs:
            return error_response(404, f"service: {service!r} was never seen")
        return web.json_response(docs[0])

    async def get_series(self, request: web.Request) -> web.Response:
        """Buckets of [start, end) (default: the hour up to the service's newest event) and the alerts raised."""
        service = request.match_info["service"]
        try:
            start, end = opt_time(request.query, "start"), opt_time(request.query, "end")
            if start is not None and end is not None and end <= start:
                raise ParamError("end: must be after start")
        except ParamError as e:
            return error_response(400, str(e))
        doc = await asyncio.to_thread(self._series, service, start, end)
        if doc is None:
            return error_response(404, f"service: {service!r} was never seen")
        return web.json_response(doc)

    def _series(self, service: str, start: int | None, end: int | None) -> dict[str, Any] | None:
        doc = self.series.series(service, start, end)
        if doc is not None and doc["points"]:
            # The alerts of exactly the charted buckets.
            start = doc["points"][0]["t"] * 1_000_000_000
            end = (doc["points"][-1]["t"] + doc["step_s"]) * 1_000_000_000
        else:
            end = end if end is not None else self.clock()
            start = start if start is not None else end - 3600 * 1_000_000_000
        alerts, total = self.actions.store.query(AlertQuery(start=start, end=end, service=service, limit=MAX_PAGE))
        if doc is None:
            if not total:
                return None
            doc = {"service": service, "step_s": self.series.step_s, "points": []}
        doc["alerts"] = [{"t": round(a.first_seen / 1e9, 3), "alert_id": a.alert_id, "anomaly_type": a.anomaly_type,
                          "severity": a.severity, "metric": a.details.metric} for a in reversed(alerts)]
        return doc
