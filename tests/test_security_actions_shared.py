"""The action hook's actions shared by a cluster's replicas (PostgreSQL): listed and decided at any replica,
each decision made once and its block request sent once, by the replica that approved it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from aggregator.alerting.security_actions import PgActionStore
from aggregator.analysis.security.action_store import ActionStore, MemoryActionStore
from aggregator.analysis.security.actions import Action
from aggregator.analysis.security.consumer import SecurityConsumer, parse_security_settings
from aggregator.api.auth import Roles, auth_middleware
from aggregator.api.security_api import SecurityApi
from tests.conftest import open_pg_store, pg_database, serve
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


def _action(n: int, subject: str) -> Action:
    return Action(action_id=f"a{n}", created_unix_nano=n, anomaly_type="coordinated_attack", service="chat",
                  subject_type="user", subject=subject, user=subject, api_key_hash=None, ip_address=None,
                  reason="r", suggested_duration_s=60.0, confidence=0.9)


@pytest.fixture(params=["memory", "postgresql"])
def action_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ActionStore]:
    """Each store with room for three actions: the single process's, and a cluster's."""
    if request.param == "memory":
        yield MemoryActionStore(3, tmp_path / "security_actions.json")
        return
    with pg_database() as url:
        store = open_pg_store(url)
        try:
            yield PgActionStore(store, max_actions=3)
        finally:
            store.close()


def test_both_stores_keep_one_pending_action_per_subject_and_decide_it_once(action_store: ActionStore) -> None:
    assert action_store.add(_action(1, "mallory")) and not action_store.add(_action(2, "mallory"))
    decided = action_store.decide("a1", "approved", "alice", 10)
    assert (decided.status, decided.decided_by, decided.decided_unix_nano) == ("approved", "alice", 10)
    with pytest.raises(ValueError, match=r"^action a1 was already decided by alice: it is approved, not pending$"):
        action_store.decide("a1", "rejected", "bob", 11)
    with pytest.raises(KeyError):
        action_store.decide("nope", "approved", "bob", 11)
    decided.status = "sent"
    action_store.finish(decided)
    assert action_store.add(_action(2, "mallory"))  # decided: the subject may have a new one
    for n in (3, 4):
        assert action_store.add(_action(n, f"u{n}"))
    # The newest three, newest first; filtered by status.
    assert [a.action_id for a in action_store.list(None)] == ["a4", "a3", "a2"]
    assert [a.action_id for a in action_store.list("pending")] == ["a4", "a3", "a2"]
    assert action_store.get("a1") is None and action_store.list("sent") == []
    got = action_store.get("a2")
    assert got is not None and got.to_dict() == _action(2, "mallory").to_dict()
    if isinstance(action_store, MemoryActionStore):  # written at every change: a restart finds them
        again = MemoryActionStore(3, action_store.path)
        again.restore()
        assert [a.to_dict() for a in again.list(None)] == [a.to_dict() for a in action_store.list(None)]
