"""The aggregator's HTTP API v1: alerts, silences, services, statistics, the live stream, roles.

The contract is API_SPEC.md; README.md in this package shows it in use. Wire it with
:func:`add_api_routes`.
"""

from aggregator.api.actions import AlertActions
from aggregator.api.auth import Roles, auth_middleware
from aggregator.api.openapi import load_openapi, route_coverage
from aggregator.api.routes import Api, add_api_routes

__all__ = ["AlertActions", "Api", "Roles", "add_api_routes", "auth_middleware", "load_openapi", "route_coverage"]
