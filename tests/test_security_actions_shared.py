"""The action hook's actions shared by a cluster's replicas (PostgreSQL): listed and decided at any replica,
each decision made once and its block request sent once, by the replica that approved it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from aggregator.analysis.security.consumer import SecurityConsumer, parse_security_settings
from aggregator.analysis.security.pg_actions import PgActionStore
from aggregator.api.auth import Roles, auth_middleware
from aggregator.api.security_api import SecurityApi
from tests.conftest import open_pg_store, serve
from tests.test_security_signals import ev

ROLES = Roles(["view"], ["op-a", "op-b"])
VIEW, ALICE, BOB = ({"Authorization": f"Bearer {t}"} for t in ("view", "op-a", "op-b"))


@contextlib.asynccontextmanager
async def replica(pg_url: str, data_dir: Path, sent: list[tuple[str, dict[str, Any]]],
                  name: str) -> AsyncIterator[tuple[SecurityConsumer, httpx.AsyncClient]]:
    """One replica's security consumer and API (with the real auth), its actions in the shared database."""
    store = open_pg_store(pg_url)
    svc = SecurityConsumer(parse_security_settings({"max_events": 3, "action_webhook_url": "http://hook/block"}),
                           data_dir / name, send=lambda url, body: sent.append((name, body)),
                           action_store=PgActionStore(store, max_actions=100))
    app = web.Application(middlewares=[auth_middleware(ROLES)])
    SecurityApi(svc).add_routes(app)
    try:
        async with serve(app) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            yield svc, c
    finally:
        store.close()


async def test_an_action_raised_at_one_replica_is_approved_at_the_other_and_sent_once(pg_url: str,
                                                                                       tmp_path: Path) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    async with replica(pg_url, tmp_path, sent, "r0") as (r0, c0), replica(pg_url, tmp_path, sent, "r1") as (r1, c1):
        await asyncio.to_thread(r0.submit, [ev(i, user="mallory") for i in range(4)])
        # The same burst seen at the other replica too: still one pending action for the subject.
        await asyncio.to_thread(r1.submit, [ev(i, user="mallory") for i in range(4)])
        listed = [(await c.get("/api/v1/security/actions?status=pending", headers=VIEW)).json() for c in (c0, c1)]
        assert listed[0] == listed[1] and len(listed[1]["actions"]) == 1, listed
        action = listed[1]["actions"][0]
        assert (action["subject_type"], action["subject"], action["status"]) == ("user", "mallory", "pending")
        action_id = action["action_id"]

        r = await c1.post(f"/api/v1/security/actions/{action_id}/approve", headers=BOB)
        assert r.status_code == 200 and r.json()["status"] == "sent", r.json()
        assert [(who, body["action_id"], body["approved_by"]) for who, body in sent] == [
            ("r1", action_id, "operator_tokens[1]")]  # sent by the replica that approved it
        # A second decision, at the raising replica or the same one: 409 naming the action and who decided.
        for c, verb in ((c0, "approve"), (c1, "reject")):
            r = await c.post(f"/api/v1/security/actions/{action_id}/{verb}", headers=ALICE)
            assert r.status_code == 409, r.text
            assert r.json()["error"] == (f"action {action_id} was already decided by operator_tokens[1]: "
                                         "it is sent, not pending")
        shown = (await c0.get("/api/v1/security/actions", headers=VIEW)).json()["actions"]
        assert [(a["action_id"], a["status"], a["decided_by"]) for a in shown] == [
            (action_id, "sent", "operator_tokens[1]")]
        assert (await c0.post("/api/v1/security/actions/nope/approve", headers=ALICE)).status_code == 404
        assert len(sent) == 1 and (r0.actions.decided, r1.actions.decided) == (
            {"approved": 0, "rejected": 0}, {"approved": 1, "rejected": 0})

        # Two operators approving one action at once, at two replicas: one wins, it is sent once.
        await asyncio.to_thread(r1.submit, [ev(i, user="trudy") for i in range(4)])
        again = (await c0.get("/api/v1/security/actions?status=pending", headers=VIEW)).json()["actions"]
        assert [a["subject"] for a in again] == ["trudy"]
        answers = await asyncio.gather(*(c.post(f"/api/v1/security/actions/{again[0]['action_id']}/approve",
                                                headers=h) for c, h in ((c0, ALICE), (c1, BOB))))
        assert sorted(r.status_code for r in answers) == [200, 409]
        assert len(sent) == 2 and sent[1][1]["action_id"] == again[0]["action_id"]
