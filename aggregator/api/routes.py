"""Wiring of the API v1 (aggregator/api/API_SPEC.md) into the aggregator's aiohttp application."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from aggregator.alerting.audit import AuditLog
from aggregator.alerting.feedback import FeedbackLog
from aggregator.alerting.precision_guard import PrecisionGuard
from aggregator.alerting.store import SideTableHost
from aggregator.analysis.baselines.consumer import BaselineConsumer
from aggregator.api.actions import AlertActions
from aggregator.api.alerts_api import AlertsApi
from aggregator.api.audit_api import AuditApi, audit_middleware
from aggregator.api.auth import Roles, auth_middleware
from aggregator.api.config_api import ConfigApi, LiveSettings
from aggregator.api.feedback_api import FeedbackApi
from aggregator.api.guard import guard_middleware
from aggregator.api.openapi import handle_openapi
from aggregator.api.plan_api import BaselineQuery, PlanApi
from aggregator.api.realtime import Realtime
from aggregator.api.services_api import HEALTH_WINDOW_S, ServicesApi, ServiceSeries
from aggregator.api.silences_api import SilencesApi
from aggregator.api.stream import DEFAULT_KEEPALIVE_S, Streams

__all__ = ["Api", "add_api_routes"]


class ClusterView(BaselineQuery, Protocol):
    """What the API reads of a cluster's partitions besides the series (aggregator.cluster.views.ClusterView)."""

    def latency(self, services: Iterable[str]) -> dict[str, dict[str, float | None]]: ...


@dataclass(frozen=True)
class Api:
    """The parts :func:`add_api_routes` registered (``streams.stop()`` ends the open streams)."""

    alerts: AlertsApi
    silences: SilencesApi
    services: ServicesApi
    streams: Streams
    realtime: Realtime
    plan: PlanApi
    feedback: FeedbackApi
    audit: AuditApi
    config: ConfigApi


def add_api_routes(app: web.Application, *, actions: AlertActions, series: ServiceSeries,
                   baselines: BaselineConsumer | None, roles: Roles, keepalive_s: float = DEFAULT_KEEPALIVE_S,
                   health_window_s: float = HEALTH_WINDOW_S, clock: Callable[[], int] = time.time_ns,
                   allowed_hosts: frozenset[str] = frozenset(),
                   registry: CollectorRegistry | None = None, feedback: FeedbackLog | None = None,
                   audit: AuditLog | None = None, guard: PrecisionGuard | None = None,
                   live: LiveSettings | None = None, cluster: ClusterView | None = None) -> Api:
    """Register every API v1 route except baselines and candidates, and the guard, auth and audit
    middlewares (for the whole app). ``registry`` takes the API's metrics (a private one when not
    given); ``feedback`` and ``audit`` default to tables in the actions' store; ``guard`` raises
    confidence floors from the feedback (none: measured only); ``live`` serves ``/api/v1/config``
    (none: 404); ``cluster`` (a cluster replica) answers services, their series and baselines for every
    partition (``series`` is then the view too, ``baselines`` gives the metrics' names).

    Call before the application starts (routes and middlewares freeze then). First the browser guard
    (:mod:`aggregator.api.guard`) refuses foreign ``Host``s (other than IP literals, ``localhost`` and
    ``allowed_hosts``) and cross-origin or non-JSON writes. The auth middleware leaves ``/v1/ingest``
    to the ingest handler and lets the public paths through (:mod:`aggregator.api.auth`); the audit
    middleware, inside it, records every successful write with the caller's role.
    """
    app.middlewares.append(guard_middleware(allowed_hosts))
    store = actions.store
    if not isinstance(store, SideTableHost):  # feedback and audit live in the store's database
        raise TypeError("add_api_routes: feedback and the audit log need a SQL alert store")
    feedback = feedback if feedback is not None else FeedbackLog(store)
    audit = audit if audit is not None else AuditLog(store)
    app.middlewares.append(auth_middleware(roles))
    app.middlewares.append(audit_middleware(audit, clock))
    api = Api(alerts=AlertsApi(actions, clock, feedback.precision_by_type), silences=SilencesApi(actions, clock),
              services=ServicesApi(actions, series, baselines, clock, window_s=health_window_s,
                                   latency=cluster.latency if cluster is not None else None),
              streams=Streams(actions.hub, keepalive_s=keepalive_s),
              realtime=Realtime(actions.hub, keepalive_s=keepalive_s),
              plan=PlanApi(actions, baselines, cluster=cluster),
              feedback=FeedbackApi(actions, feedback, clock, registry if registry is not None else CollectorRegistry(),
                                   guard),
              audit=AuditApi(audit), config=ConfigApi(live))
    api.alerts.add_routes(app)
    api.silences.add_routes(app)
    api.services.add_routes(app)
    api.streams.add_routes(app)
    api.realtime.add_routes(app)
    api.plan.add_routes(app)
    api.feedback.add_routes(app)
    api.audit.add_routes(app)
    api.config.add_routes(app)
    app.router.add_get("/api/v1/openapi.json", handle_openapi)
    return api
