"""False-positive feedback: POST/GET /api/v1/alerts/{id}/feedback, its metric, precision in the summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.alerting.feedback import precision
from tests.test_api_support import ADMIN, OPERATOR, VIEWER, Harness, insert, make_alert, start_api

S = 1_000_000_000
T0 = 1_795_000_000 * S


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        yield harness


def test_precision_counts_true_and_false_positives_only() -> None:
    assert precision({"true_positive": 3, "false_positive": 1, "unsure": 10}) == 0.75
    assert precision({"unsure": 2}) is None


async def test_feedback_is_stored_with_who_and_when_and_moves_precision(h: Harness) -> None:
    spikes = [make_alert(ts=T0 + i * S) for i in range(4)]
    burst = make_alert(ts=T0, anomaly_type="error_burst")
    insert(h, *spikes, burst)
    span = {"start": str(T0 // S - 10), "end": str(T0 // S + 100)}
    async with h.client(VIEWER) as v, h.client(OPERATOR) as o:
        before = (await v.get("/api/v1/statistics/summary", params=span)).json()
        assert before["precision_by_type"] == {}
        r = await o.post(f"/api/v1/alerts/{spikes[0].alert_id}/feedback",
                         json={"verdict": "false_positive", "comment": "deploy noise", "by": "alice"})
        assert r.status_code == 201
        doc = r.json()
        assert doc["verdict"] == "false_positive" and doc["by"] == "alice" and doc["comment"] == "deploy noise"
        assert doc["anomaly_type"] == "latency_spike" and doc["at"].endswith("Z")
        for a in spikes[1:3]:
            assert (await o.post(f"/api/v1/alerts/{a.alert_id}/feedback",
                                 json={"verdict": "true_positive"})).status_code == 201
        await o.post(f"/api/v1/alerts/{spikes[3].alert_id}/feedback", json={"verdict": "unsure"})
        await o.post(f"/api/v1/alerts/{burst.alert_id}/feedback", json={"verdict": "false_positive"})
        summary = (await v.get("/api/v1/statistics/summary", params=span)).json()["precision_by_type"]
        assert summary["latency_spike"] == {"true_positive": 2, "false_positive": 1, "unsure": 1,
                                            "precision": pytest.approx(2 / 3)}
        assert summary["error_burst"]["precision"] == 0.0
        # A changed mind: the newest verdict counts.
        await o.post(f"/api/v1/alerts/{spikes[0].alert_id}/feedback", json={"verdict": "true_positive"})
        summary = (await v.get("/api/v1/statistics/summary", params=span)).json()["precision_by_type"]
        assert summary["latency_spike"]["precision"] == 1.0
        given = (await v.get(f"/api/v1/alerts/{spikes[0].alert_id}/feedback")).json()
        assert given["verdict"] == "true_positive"
        assert [f["verdict"] for f in given["feedback"]] == ["false_positive", "true_positive"]
        assert given["feedback"][1]["by"] == "operator_tokens[0]"  # the caller's token by default
        # Outside the range: not counted.
        later = (await v.get("/api/v1/statistics/summary", params={"start": str(T0 // S + 100)})).json()
        assert later["precision_by_type"] == {}
    counter = h.api.feedback.counter
    assert counter.labels("latency_spike", "true_positive")._value.get() == 3
    assert counter.labels("error_burst", "false_positive")._value.get() == 1


async def test_feedback_needs_an_operator_a_verdict_and_a_known_alert(h: Harness) -> None:
    a = make_alert()
    insert(h, a)
    path = f"/api/v1/alerts/{a.alert_id}/feedback"
    async with h.client(VIEWER) as v:
        assert (await v.post(path, json={"verdict": "true_positive"})).status_code == 403
    async with h.client(ADMIN) as c:
        r = await c.post(path, json={"verdict": "wrong"})
        assert r.status_code == 400 and r.json()["error"].startswith("verdict:")
        r = await c.post(path, json={"verdict": "unsure", "comment": "x" * 1001})
        assert r.status_code == 400 and r.json()["error"].startswith("comment:")
        r = await c.post(path, content=b"[1]", headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("body:")
        r = await c.post("/api/v1/alerts/nope/feedback", json={"verdict": "unsure"})
        assert r.status_code == 404
        assert (await c.get("/api/v1/alerts/nope/feedback")).status_code == 404
