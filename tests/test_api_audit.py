"""The audit log: every write through the API recorded with who, role, when, what; append-only; admin only."""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.alerting.audit import AuditEntry
from tests.test_api_support import ADMIN, OPERATOR, VIEWER, Harness, insert, make_alert, start_api


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        yield harness


async def test_state_changes_are_audited_with_who_and_role(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    a = make_alert()
    insert(h, a)
    async with h.client(OPERATOR) as o:
        with caplog.at_level(logging.INFO, logger="sentinel.audit"):
            assert (await o.post(f"/api/v1/alerts/{a.alert_id}/ack",
                                 json={"by": "alice", "comment": "on it"})).status_code == 200
        # The JSON log line names the principal (the token's place in the settings) and its role, not the token.
        (line,) = [json.loads(r.getMessage())["audit"] for r in caplog.records if r.name == "sentinel.audit"]
        assert (line["who"], line["role"], line["action"]) == ("operator_tokens[0]", "operator", "alert.acknowledge")
        assert OPERATOR not in caplog.text
        assert (await o.post(f"/api/v1/alerts/{a.alert_id}/feedback",
                             json={"verdict": "false_positive"})).status_code == 201
        r = await o.post("/api/v1/silences", json={"matchers": [{"name": "service_name", "value": "chat"}],
                                                   "duration": 600, "comment": "deploy"})
        silence_id = r.json()["id"]
        assert (await o.post(f"/api/v1/silences/{silence_id}/expire")).status_code == 200
        assert (await o.delete(f"/api/v1/silences/{silence_id}")).status_code == 200
        # Failed writes and reads are not state changes.
        assert (await o.post("/api/v1/alerts/nope/ack")).status_code == 404
        assert (await o.get("/api/v1/alerts")).status_code == 200
    async with h.client(ADMIN) as c:
        doc = (await c.get("/api/v1/audit")).json()
        assert doc["total"] == 5
        actions = [e["action"] for e in reversed(doc["entries"])]
        assert actions == ["alert.acknowledge", "alert.feedback", "silence.create", "silence.expire",
                           "silence.delete"]
        ack, fb, create = doc["entries"][4], doc["entries"][3], doc["entries"][2]
        assert ack["who"] == "operator_tokens[0]" and ack["role"] == "operator" and ack["target"] == a.alert_id
        assert ack["detail"] == {"acknowledged_by": "alice", "anomaly_type": "latency_spike", "service_name": "chat",
                                 "comment": "on it"}
        assert fb["detail"]["verdict"] == "false_positive"
        assert create["target"] == silence_id and create["detail"]["comment"] == "deploy"
        assert create["at"].endswith("Z")
        only = (await c.get("/api/v1/audit", params={"action": "silence.create"})).json()
        assert [e["target"] for e in only["entries"]] == [silence_id]
        page = (await c.get("/api/v1/audit", params={"limit": 2, "offset": 1})).json()
        assert [e["action"] for e in page["entries"]] == ["silence.expire", "silence.create"]
        assert (await c.get("/api/v1/audit", params={"limit": 0})).status_code == 400
    async with h.client(VIEWER) as v:
        assert (await v.get("/api/v1/audit")).status_code == 403
    async with h.client(OPERATOR) as o:
        assert (await o.get("/api/v1/audit")).status_code == 403


async def test_the_audit_table_is_append_only(h: Harness) -> None:
    log = h.api.audit.audit
    log.append(AuditEntry(at=1, who="x", role="admin", action="test"))
    with h.store.connection() as db:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("UPDATE audit SET who='y'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute("DELETE FROM audit")
    entries, total = log.query()
    assert total == 1 and entries[0].who == "x"


async def test_without_auth_the_caller_is_anonymous(tmp_path: Path) -> None:
    async with start_api(tmp_path, tokens=False) as h:
        a = make_alert()
        insert(h, a)
        async with h.client(None) as c:
            assert (await c.post(f"/api/v1/alerts/{a.alert_id}/ack")).status_code == 200
            entry = (await c.get("/api/v1/audit")).json()["entries"][0]
        assert entry["who"] == "anonymous" and entry["role"] == "admin"
