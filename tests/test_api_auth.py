"""Roles and the auth middleware: who may call what (aggregator/api/API_SPEC.md, "Auth")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.api.auth import Roles, required_role
from tests.test_api_support import ADMIN, INGEST, OPERATOR, VIEWER, Harness, insert, make_alert, start_api


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        yield harness


def test_role_of_each_kind_and_unknown() -> None:
    roles = Roles(["v"], ["o"], ["a"], ["i"])
    assert roles.enabled
    assert [roles.role_of(t) for t in ("v", "o", "a", "i", "x", "", "vv")] == [
        "viewer", "operator", "admin", "ingest", None, None, None]


def test_a_token_in_two_lists_gets_the_larger_role() -> None:
    assert Roles(["same"], [], ["same"]).role_of("same") == "admin"
    assert Roles(["same"], [], [], ["same"]).role_of("same") == "viewer"


def test_no_tokens_means_auth_disabled() -> None:
    assert not Roles().enabled
    assert not Roles([], [], [], [""]).enabled  # empty strings are not tokens
    assert Roles(ingest_tokens=["i"]).enabled


def test_required_role_table() -> None:
    assert required_role("GET", "/healthz") is None
    assert required_role("GET", "/static/app.js") is None
    assert required_role("GET", "/static") is None  # how aiohttp names a static resource
    assert required_role("GET", "/api/v1/openapi.json") is None
    assert required_role("GET", "/api/v1/alerts") == "viewer"
    assert required_role("GET", "/api/v1/stream") == "viewer"
    assert required_role("POST", "/api/v1/alerts/{alert_id}/ack") == "operator"
    assert required_role("DELETE", "/api/v1/silences/{silence_id}") == "operator"
    assert required_role("POST", "/api/v1/something/new") == "admin"  # closed by default


async def test_missing_and_unknown_tokens_are_401_with_www_authenticate(h: Harness) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwYXNz"},
                    {"Authorization": "Bearer"}):
        async with h.client(None) as c:
            r = await c.get("/api/v1/alerts", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.json()["status"] == "error"
        assert "nope" not in r.text


async def test_existing_read_routes_are_protected_too(h: Harness) -> None:
    async with h.client(None) as c:
        assert (await c.get("/api/v1/baselines")).status_code == 401
        assert (await c.get("/api/v1/candidates")).status_code == 401
    async with h.client(VIEWER) as c:
        assert (await c.get("/api/v1/baselines")).status_code == 200


async def test_public_paths_need_no_token(h: Harness) -> None:
    async with h.client(None) as c:
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"):
            assert (await c.get(path)).status_code == 200, path
        # Left to the ingest handler (which checks the ingest tokens itself).
        assert (await c.post("/v1/ingest", content=b"")).status_code == 200
        assert (await c.get("/api/v1/no-such-route")).status_code == 404


async def test_ingest_token_cannot_read_the_api(h: Harness) -> None:
    async with h.client(INGEST) as c:
        r = await c.get("/api/v1/alerts")
    assert r.status_code == 403
    assert "viewer" in r.json()["error"]


async def test_ack_needs_operator(h: Harness) -> None:
    a, b = make_alert(), make_alert()
    insert(h, a, b)
    async with h.client(VIEWER) as c:
        assert (await c.get(f"/api/v1/alerts/{a.alert_id}")).status_code == 200
        r = await c.post(f"/api/v1/alerts/{a.alert_id}/ack")
        assert r.status_code == 403
        assert "operator" in r.json()["error"]
        assert (await c.post("/api/v1/silences", json={"matchers": [], "duration": 60})).status_code == 403
    async with h.client(OPERATOR) as c:
        r = await c.post(f"/api/v1/alerts/{a.alert_id}/ack")
        assert r.status_code == 200
        assert r.json()["acknowledged_by"] == "operator_tokens[0]"  # the token's place is the default "by"
    async with h.client(ADMIN) as c:
        r = await c.post(f"/api/v1/alerts/{b.alert_id}/ack", json={"comment": "looking"})
        assert r.status_code == 200
        assert r.json()["acknowledged_by"] == "admin_tokens[0]"


async def test_without_tokens_everything_is_open(tmp_path: Path) -> None:
    async with start_api(tmp_path, tokens=False) as h:
        a = make_alert()
        insert(h, a)
        async with h.client(None) as c:
            assert (await c.get("/api/v1/alerts")).status_code == 200
            r = await c.post(f"/api/v1/alerts/{a.alert_id}/ack")
            assert r.status_code == 200
            assert r.json()["acknowledged_by"] == "anonymous"
