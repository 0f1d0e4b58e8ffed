"""Wiring of the API v1 (aggregator/api/API_SPEC.md) into the aggregator's aiohttp application."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from aggregator.api.actions import AlertActions
from aggregator.api.alerts_api import AlertsApi
from aggregator.api.auth import Roles, auth_middleware
from aggregator.api.openapi import handle_openapi
from aggregator.api.plan_api import PlanApi
from aggregator.api.realtime import Realtime
from aggregator.api.services_api import HEALTH_WINDOW_S, ServicesApi
from aggregator.api.silences_api import SilencesApi
from aggregator.api.stream import DEFAULT_KEEPALIVE_S, Streams
from aggregator.baseline_service import BaselineService
from aggregator.series import SeriesService

__all__ = ["Api", "add_api_routes"]


@dataclass(frozen=True)
class Api:
    """The parts :func:`add_api_routes` registered (``streams.stop()`` ends the open streams)."""

    alerts: AlertsApi
    silences: SilencesApi
    services: ServicesApi
    streams: Streams
    realtime: Realtime
    plan: PlanApi


def add_api_routes(app: web.Application, *, actions: AlertActions, series: SeriesService,
                   baselines: BaselineService | None, roles: Roles, keepalive_s: float = DEFAULT_KEEPALIVE_S,
                   health_window_s: float = HEALTH_WINDOW_S, clock: Callable[[], int] = time.time_ns) -> Api:
    """Register every API v1 route except baselines and candidates, and the auth middleware (for the whole app).

    Call before the application starts (routes and middlewares freeze then). The middleware leaves
    ``/v1/ingest`` to the ingest handler and lets the public paths through (:mod:`aggregator.api.auth`).
    """
    app.middlewares.append(auth_middleware(roles))
    api = Api(alerts=AlertsApi(actions, clock), silences=SilencesApi(actions, clock),
              services=ServicesApi(actions, series, baselines, clock, window_s=health_window_s),
              streams=Streams(actions.hub, keepalive_s=keepalive_s),
              realtime=Realtime(actions.hub, keepalive_s=keepalive_s),
              plan=PlanApi(actions, baselines))
    api.alerts.add_routes(app)
    api.silences.add_routes(app)
    api.services.add_routes(app)
    api.streams.add_routes(app)
    api.realtime.add_routes(app)
    api.plan.add_routes(app)
    app.router.add_get("/api/v1/openapi.json", handle_openapi)
    return api
