"""The OpenAPI document: valid OpenAPI 3.1, served publicly, and in step with the routes the app serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from openapi_spec_validator import validate

from aggregator.api.auth import PUBLIC_PATHS, required_role
from aggregator.api.openapi import load_openapi, route_coverage
from tests.test_api_support import start_api


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = load_openapi()
    assert doc["openapi"].startswith("3.1")
    validate(doc)


async def test_every_route_is_documented_and_every_documented_route_exists(tmp_path: Path) -> None:
    async with start_api(tmp_path) as h:
        undocumented, unserved = route_coverage(h.app)
        assert undocumented == set()
        assert unserved == set()
        async with h.client(None) as c:
            r = await c.get("/api/v1/openapi.json")  # public
        assert r.status_code == 200
        assert r.json() == load_openapi()


def test_route_coverage_notices_a_missing_route() -> None:
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/api/v1/secret", handler)
    app.router.add_get("/", handler)  # the page is not part of the API
    app.router.add_static("/static", Path(__file__).parent)
    undocumented, unserved = route_coverage(app)
    assert undocumented == {("get", "/api/v1/secret")}
    assert ("get", "/api/v1/alerts") in unserved


def test_security_in_the_document_matches_the_middleware() -> None:
    doc = load_openapi()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            public = op.get("security") == []
            if path == "/v1/ingest":
                assert op["security"] == [{"ingestToken": []}]
                continue
            assert public == (path in PUBLIC_PATHS), path
            assert public == (required_role(method.upper(), path) is None), path
            need = required_role(method.upper(), path)
            if need is not None:
                assert f"({need})" in op["summary"], (method, path, op["summary"])


async def test_the_aggregators_own_app_is_fully_documented_and_guarded(make_aggregator: Any) -> None:
    agg = await make_aggregator(grpc_listen="", viewer_tokens=["v"], operator_tokens=["o"], tokens=["i"])
    assert agg._runner is not None
    undocumented, unserved = route_coverage(agg._runner.app)
    assert undocumented == set() and unserved == set()
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        assert (await c.get("/api/v1/alerts")).status_code == 401
        assert (await c.get("/api/v1/alerts", headers={"Authorization": "Bearer i"})).status_code == 403
        assert (await c.get("/api/v1/services", headers={"Authorization": "Bearer v"})).json() == {"services": []}
        assert (await c.get("/api/v1/openapi.json")).status_code == 200
        assert (await c.get("/")).status_code == 200
