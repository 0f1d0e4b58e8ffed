"""GET /api/v1/alerts (filters, pages, 400s), GET one, ack (200/404/409), the summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sentinel.alerts import parse_time
from tests.test_api_support import OPERATOR, Harness, S, insert, make_alert, start_api

T0 = parse_time("2026-11-23T10:00:00Z")


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        insert(harness,
               make_alert(severity="critical", service="chat", ts=T0),
               make_alert(severity="high", service="chat", anomaly_type="error_burst", ts=T0 + 60 * S),
               make_alert(severity="medium", service="search", model="claude", ts=T0 + 120 * S),
               make_alert(severity="low", service="search", status="resolved", ts=T0 + 180 * S),
               make_alert(severity="high", service="embed", status="acknowledged", ts=T0 + 240 * S))
        yield harness


async def test_list_newest_first_with_total(h: Harness) -> None:
    async with h.client() as c:
        body = (await c.get("/api/v1/alerts")).json()
    assert body["total"] == 5 and body["limit"] == 100 and body["offset"] == 0
    stamps = [a["timestamp"] for a in body["alerts"]]
    assert stamps == sorted(stamps, reverse=True)
    assert body["alerts"][0]["service_name"] == "embed"
    assert set(body["alerts"][0]) >= {"alert_id", "summary", "fingerprint", "details", "context", "status"}


@pytest.mark.parametrize(("params", "expected"), [
    ({"severity": "critical,high"}, 3),
    ({"severity": "high", "status": "open"}, 1),
    ({"status": "open,acknowledged"}, 4),
    ({"service": "search"}, 2),
    ({"model": "claude"}, 1),
    ({"type": "error_burst"}, 1),
    ({"start": "2026-11-23T10:01:00Z"}, 4),
    ({"start": str(T0 // S + 60), "end": "2026-11-23T10:03:00Z"}, 2),  # unix seconds; end exclusive
    ({"service": "nobody"}, 0),
])
async def test_filters(h: Harness, params: dict[str, str], expected: int) -> None:
    async with h.client() as c:
        body = (await c.get("/api/v1/alerts", params=params)).json()
    assert body["total"] == expected
    assert len(body["alerts"]) == expected


async def test_pages(h: Harness) -> None:
    async with h.client() as c:
        first = (await c.get("/api/v1/alerts", params={"limit": 2})).json()
        second = (await c.get("/api/v1/alerts", params={"limit": 2, "offset": 2})).json()
        last = (await c.get("/api/v1/alerts", params={"limit": 2, "offset": 4})).json()
    assert [len(p["alerts"]) for p in (first, second, last)] == [2, 2, 1]
    assert {p["total"] for p in (first, second, last)} == {5}
    ids = [a["alert_id"] for p in (first, second, last) for a in p["alerts"]]
    assert len(set(ids)) == 5
    assert second["offset"] == 2 and second["limit"] == 2


@pytest.mark.parametrize(("params", "name"), [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"severity": "urgent"}, "severity"), ({"status": "closed"}, "status"),
    ({"start": "yesterday"}, "start"), ({"end": "nan"}, "end"),
    ({"start": "2026-11-23T11:00:00Z", "end": "2026-11-23T10:00:00Z"}, "end"),
])
async def test_bad_parameters_are_400_naming_them(h: Harness, params: dict[str, str], name: str) -> None:
    async with h.client() as c:
        r = await c.get("/api/v1/alerts", params=params)
    assert r.status_code == 400
    assert r.json()["status"] == "error"
    assert r.json()["error"].startswith(f"{name}:")


async def test_get_one_and_404(h: Harness) -> None:
    a = make_alert(service="voice")
    insert(h, a)
    async with h.client() as c:
        r = await c.get(f"/api/v1/alerts/{a.alert_id}")
        assert r.status_code == 200
        assert r.json() == a.to_dict()
        r = await c.get("/api/v1/alerts/no-such-id")
        assert r.status_code == 404
        assert "no-such-id" in r.json()["error"]


async def test_ack(h: Harness) -> None:
    a, resolved = make_alert(), make_alert(status="resolved")
    insert(h, a, resolved)
    async with h.client(OPERATOR) as c:
        r = await c.post(f"/api/v1/alerts/{a.alert_id}/ack", json={"by": "alice", "comment": "on it"})
        assert r.status_code == 200
        doc = r.json()
        assert doc["status"] == "acknowledged" and doc["acknowledged_by"] == "alice" and doc["acknowledged_at"]
        assert (await c.get(f"/api/v1/alerts/{a.alert_id}")).json()["status"] == "acknowledged"  # stored
        r = await c.post(f"/api/v1/alerts/{resolved.alert_id}/ack")
        assert r.status_code == 409
        assert "resolved" in r.json()["error"]
        assert (await c.post("/api/v1/alerts/nope/ack")).status_code == 404
        r = await c.post(f"/api/v1/alerts/{a.alert_id}/ack", content=b"{not json",
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"].startswith("body:")
        r = await c.post(f"/api/v1/alerts/{a.alert_id}/ack", json={"by": 7})
        assert r.status_code == 400 and r.json()["error"].startswith("by:")


async def test_summary(h: Harness) -> None:
    async with h.client() as c:
        body = (await c.get("/api/v1/statistics/summary", params={"start": "2026-11-23T00:00:00Z",
                                                                  "end": "2026-11-24T00:00:00Z"})).json()
        assert body["start"] == "2026-11-23T00:00:00.000Z" and body["end"] == "2026-11-24T00:00:00.000Z"
        assert body["total"] == 5
        assert body["open"] == 4  # open or acknowledged
        assert body["by_severity"] == {"critical": 1, "high": 2, "medium": 1, "low": 1}
        assert body["by_status"] == {"open": 3, "acknowledged": 1, "resolved": 1}
        assert body["by_type"] == {"latency_spike": 4, "error_burst": 1}
        assert body["by_service"] == {"chat": 2, "search": 2, "embed": 1}
        # Default: the last 24 h of wall-clock time (the fixture's alerts are in 2026-11-23).
        default = (await c.get("/api/v1/statistics/summary")).json()
        assert set(default) == {"start", "end", "total", "open", "by_severity", "by_type", "by_status", "by_service",
                                "precision_by_type"}
        r = await c.get("/api/v1/statistics/summary", params={"start": "x"})
        assert r.status_code == 400 and r.json()["error"].startswith("start:")
