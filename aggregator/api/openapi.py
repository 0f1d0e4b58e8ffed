"""The OpenAPI 3.1 description of the aggregator's HTTP interface (``openapi.yaml`` in this package).

Served as JSON at ``GET /api/v1/openapi.json``. :func:`route_coverage` compares it with the routes
an application actually has, so a test keeps the two in step.
"""

from __future__ import annotations

import functools
import importlib.resources
from typing import Any

import yaml
from aiohttp import web

__all__ = ["PAGE_ROUTES", "handle_openapi", "load_openapi", "route_coverage"]

#: The web page itself is not part of the API description.
PAGE_ROUTES = ("/", "/static")
_METHODS = frozenset({"get", "put", "post", "delete", "patch"})


@functools.cache
def load_openapi() -> dict[str, Any]:
    """The document (parsed once; do not change the returned dict)."""
    text = importlib.resources.files("aggregator.api").joinpath("openapi.yaml").read_text(encoding="utf-8")
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(load_openapi())


def _is_page(path: str) -> bool:
    return path == "/" or any(path == p or path.startswith(p + "/") for p in PAGE_ROUTES if p != "/")


def route_coverage(app: web.Application, doc: dict[str, Any] | None = None
                   ) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(method, path) pairs the app serves but the document lacks, and those documented but not served.

    HEAD routes (aiohttp adds one per GET) and the page's routes are left out.
    """
    doc = doc if doc is not None else load_openapi()
    served = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        path = resource.canonical
        if not _is_page(path):
            served.add((route.method.lower(), path))
    documented = {(m, path) for path, item in doc.get("paths", {}).items() for m in item if m in _METHODS}
    return served - documented, documented - served
