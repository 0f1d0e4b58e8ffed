"""The plan's API names: ``GET /api/v1/anomalies`` and ``GET /api/v1/baselines/{metric}``.

Clients built to the plan's interface find them here. ``/api/v1/anomalies`` is the alert list
under the plan's name: the alerts (stored anomalies, in the plan's alert schema — which is what
``Alert`` already is) with the plan's filters ``start``, ``end`` and ``severity``, the list's own
``service``, ``model``, ``type``, ``status``, ``limit`` and ``offset``, and the plan's field names
``service_name`` and ``anomaly_type`` accepted for ``service`` and ``type``. ``/api/v1/baselines/{metric}``
is one metric's baselines across every key (service, model, operation, region), with the filters of
``GET /api/v1/baselines``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from aggregator.alerting.store import AlertQuery
from aggregator.analysis.baselines.consumer import BaselineConsumer, baseline_filters
from aggregator.analysis.baselines.store import ALL_REGIONS, BaselineStore
from aggregator.api.actions import AlertActions
from aggregator.api.alerts_api import alert_page, parse_alert_query
from aggregator.api.params import ParamError, error_response

__all__ = ["ALIASES", "BaselineQuery", "PlanApi", "metric_baselines", "parse_anomaly_query"]

#: The plan's names for the alert list's filters.
ALIASES = {"service_name": "service", "anomaly_type": "type"}


def parse_anomaly_query(query: Mapping[str, str]) -> AlertQuery:
    """The alert list's parameters, with the plan's aliases; both spellings given and different: 400."""
    merged = dict(query)
    for alias, name in ALIASES.items():
        if alias in merged:
            value = merged.pop(alias)
            if merged.get(name, value) != value:
                raise ParamError(f"{alias}: {value!r} contradicts {name}={merged[name]!r}")
            merged[name] = value
    return parse_alert_query(merged)


def metric_baselines(store: BaselineStore | BaselineQuery, metric: str,
                     query: Mapping[str, str]) -> list[dict[str, Any]]:
    """``metric``'s summary under every key matching ``query`` (those of ``GET /api/v1/baselines``).

    Call with the baselines' lock held (the analysis thread updates them); a bad filter raises ``ValueError``.
    """
    out = []
    for item in store.query(**baseline_filters(query)):  # a store, or a cluster's view of every partition
        # The error rate is counted per key, not sketched: its calls, errors and their ratio.
        summary = ({"errors": item["errors"], "error_rate": item["error_rate"]} if metric == "error_rate"
                   else item["metrics"].get(metric))
        if summary is None:
            continue
        out.append({k: item[k] for k in ("service", "model", "operation", "region", "hour_of_week", "calls")}
                   | {"metric": metric, **summary})
    return out


class BaselineQuery(Protocol):
    """``BaselineStore.query``'s signature: a cluster's :class:`aggregator.cluster.views.ClusterView` has it."""

    def query(self, service: str | None = None, model: str | None = None, operation: str | None = None,
              region: str | None = ALL_REGIONS, hour: int | None = None) -> list[dict[str, Any]]: ...


class PlanApi:
    def __init__(self, actions: AlertActions, baselines: BaselineConsumer | None, *,
                 cluster: BaselineQuery | None = None) -> None:
        self.actions = actions
        self.baselines = baselines
        #: A cluster replica: the baselines of every partition (``baselines`` gives the metrics' names only).
        self.cluster = cluster

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v1/anomalies", self.anomalies)
        app.router.add_get("/api/v1/baselines/{metric}", self.metric)

    async def anomalies(self, request: web.Request) -> web.Response:
        return await alert_page(self.actions, request, parse_anomaly_query, "anomalies")

    async def metric(self, request: web.Request) -> web.Response:
        metric = request.match_info["metric"]
        if self.baselines is None:
            return error_response(404, "metric: this aggregator keeps no baselines")
        known = (*self.baselines.store.config.metrics, "error_rate")
        if metric not in known:
            return error_response(404, f"metric: {metric!r} has no baselines; the metrics are {', '.join(known)}")
        try:
            if self.cluster is not None:
                cluster = self.cluster
                items = await asyncio.to_thread(metric_baselines, cluster, metric, request.query)
            else:
                # BaselineConsumer's lock: the analysis thread updates (and reorders) the baselines while we read.
                with self.baselines._lock:
                    items = metric_baselines(self.baselines.store, metric, request.query)
        except ValueError as e:
            return error_response(400, str(e))
        return web.json_response({"metric": metric, "baselines": items, "count": len(items)})
