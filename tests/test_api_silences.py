"""Silences through the API: create, list by state, get, expire, delete; 400s naming the field; 404s."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sentinel.alerts import iso_time
from tests.test_api_support import OPERATOR, Harness, start_api

CHAT = [{"name": "service_name", "value": "chat", "op": "="}]


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        yield harness


async def test_create_get_list_expire_delete(h: Harness) -> None:
    async with h.client(OPERATOR) as c:
        r = await c.post("/api/v1/silences", json={"matchers": CHAT, "duration": 3600, "comment": "deploy"})
        assert r.status_code == 201
        s = r.json()
        assert s["state"] == "active" and s["created_by"] == "operator_tokens[0]" and s["comment"] == "deploy"
        assert s["matchers"] == CHAT
        later = iso_time(time.time_ns() + 3600 * 1_000_000_000)
        r = await c.post("/api/v1/silences", json={"matchers": [{"name": "severity", "value": "low|medium",
                                                                  "op": "=~"}],
                                                    "starts_at": later, "duration": 60})
        assert r.status_code == 201 and r.json()["state"] == "pending"
        pending = r.json()

        assert (await c.get(f"/api/v1/silences/{s['id']}")).json() == s
        listed = (await c.get("/api/v1/silences")).json()["silences"]
        assert [x["id"] for x in listed] == [s["id"], pending["id"]]
        assert [x["id"] for x in (await c.get("/api/v1/silences", params={"state": "pending"})).json()["silences"]
                ] == [pending["id"]]

        r = await c.post(f"/api/v1/silences/{s['id']}/expire")
        assert r.status_code == 200
        assert r.json()["state"] == "expired"
        expired = (await c.get("/api/v1/silences", params={"state": "expired"})).json()["silences"]
        assert [x["id"] for x in expired] == [s["id"]]
        assert (await c.get("/api/v1/silences", params={"state": "active,pending"})).json()["silences"][0][
            "id"] == pending["id"]

        assert (await c.delete(f"/api/v1/silences/{s['id']}")).json() == {"status": "ok"}
        assert (await c.get(f"/api/v1/silences/{s['id']}")).status_code == 404
        assert (await c.delete(f"/api/v1/silences/{s['id']}")).status_code == 404
        assert (await c.post(f"/api/v1/silences/{s['id']}/expire")).status_code == 404


async def test_the_manager_applies_a_silence_created_through_the_api(h: Harness) -> None:
    async with h.client(OPERATOR) as c:
        s = (await c.post("/api/v1/silences", json={"matchers": CHAT, "duration": 600})).json()
    assert [x.id for x in h.manager._silences] == [s["id"]]


@pytest.mark.parametrize(("body", "field"), [
    ({"matchers": [{"name": "pod", "value": "x"}], "duration": 60}, "matchers"),  # not a label
    ({"matchers": [{"name": "model", "value": "(", "op": "=~"}], "duration": 60}, "matchers"),  # bad regex
    ({"matchers": [{"name": "model", "value": "x", "op": "~"}], "duration": 60}, "matchers"),
    ({"matchers": [], "duration": 60}, "matchers"),
    ({"matchers": CHAT}, "ends_at"),
    ({"matchers": CHAT, "ends_at": "2000-01-01T00:00:00Z"}, "ends_at"),  # before starts_at (now)
    ({"matchers": CHAT, "ends_at": "soon"}, "starts_at/ends_at"),
    ({"matchers": CHAT, "duration": 60, "comment": 5}, "comment"),
    ([1, 2], "body"),
])
async def test_invalid_silences_are_400_naming_the_field(h: Harness, body: Any, field: str) -> None:
    async with h.client(OPERATOR) as c:
        r = await c.post("/api/v1/silences", json=body)
    assert r.status_code == 400
    assert r.json()["error"].startswith(f"{field}:"), r.json()


async def test_bad_body_and_state(h: Harness) -> None:
    async with h.client(OPERATOR) as c:
        r = await c.post("/api/v1/silences", content=b"")
        assert r.status_code == 400 and r.json()["error"].startswith("body:")
        r = await c.get("/api/v1/silences", params={"state": "gone"})
        assert r.status_code == 400 and r.json()["error"].startswith("state:")
        assert (await c.get("/api/v1/silences/unknown")).status_code == 404
