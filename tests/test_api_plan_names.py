"""The plan's API names: GET /health, GET /api/v1/anomalies, GET /api/v1/baselines/{metric}, WS /ws/realtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.test_api_support import OPERATOR, VIEWER, Harness, auth, batch, insert, make_alert, start_api

S = 1_000_000_000
T0 = 1_795_000_000 * S


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path, keepalive_s=0.2) as harness:
        yield harness


async def test_health_is_public_json_with_a_version(h: Harness) -> None:
    async with h.client(None) as c:
        r = await c.get("/health")
    assert r.status_code == 200
    doc = r.json()
    assert doc["status"] == "healthy" and isinstance(doc["version"], str) and doc["version"]


async def test_anomalies_are_the_alerts_with_the_plans_filters(h: Harness) -> None:
    old = make_alert(ts=T0, severity="high")
    chat = make_alert(ts=T0 + 10 * S, severity="high")
    low = make_alert(ts=T0 + 20 * S, severity="low")
    other = make_alert(ts=T0 + 30 * S, severity="high", service="search", anomaly_type="error_burst")
    insert(h, old, chat, low, other)
    async with h.client() as c:
        r = await c.get("/api/v1/anomalies", params={"start": str(T0 // S + 5), "end": str(T0 // S + 100),
                                                     "severity": "high"})
        assert r.status_code == 200
        doc = r.json()
        assert [a["alert_id"] for a in doc["anomalies"]] == [other.alert_id, chat.alert_id]
        assert doc["total"] == 2 and doc["limit"] == 100 and doc["offset"] == 0
        assert doc["anomalies"][1] == chat.to_dict()
        # The plan's field names as filters.
        r = await c.get("/api/v1/anomalies", params={"service_name": "search", "anomaly_type": "error_burst"})
        assert [a["alert_id"] for a in r.json()["anomalies"]] == [other.alert_id]
        r = await c.get("/api/v1/anomalies", params={"service_name": "search", "service": "chat"})
        assert r.status_code == 400 and r.json()["error"].startswith("service_name:")
        r = await c.get("/api/v1/anomalies", params={"severity": "urgent"})
        assert r.status_code == 400 and r.json()["error"].startswith("severity:")
    async with h.client(None) as c:
        assert (await c.get("/api/v1/anomalies")).status_code == 401


async def test_a_metrics_baselines_across_keys(h: Harness) -> None:
    rows = [{"service": svc, "request_model": "m", "response_model": "m", "operation": "chat",
             "time_unix_nano": T0 + i * S, "latency_ms": 100.0 + i, "is_error": int(i % 10 == 0)}
            for svc in ("chat", "search") for i in range(50)]
    h.baselines.consume(batch(rows), arrival_ns=T0 + 60 * S)
    async with h.client() as c:
        r = await c.get("/api/v1/baselines/latency_ms")
        assert r.status_code == 200
        doc = r.json()
        assert doc["metric"] == "latency_ms" and doc["count"] == len(doc["baselines"])
        services = {(b["service"], b["model"], b["operation"]) for b in doc["baselines"]}
        assert {("chat", "m", "chat"), ("search", "m", "chat")} <= services
        chat = next(b for b in doc["baselines"] if b["service"] == "chat" and b["model"] == "m")
        assert chat["count"] == 50 and 100 <= chat["p50"] <= 150
        r = await c.get("/api/v1/baselines/latency_ms", params={"service": "search"})
        assert {b["service"] for b in r.json()["baselines"]} == {"search"}
        r = await c.get("/api/v1/baselines/error_rate", params={"service": "chat", "model": "m"})
        rates = r.json()["baselines"]
        assert rates and all(b["errors"] == 5 and b["error_rate"] == pytest.approx(0.1) for b in rates)
        r = await c.get("/api/v1/baselines/nonsense")
        assert r.status_code == 404 and "latency_ms" in r.json()["error"]
        r = await c.get("/api/v1/baselines/latency_ms", params={"hour": "200"})
        assert r.status_code == 400 and r.json()["error"].startswith("hour:")


async def test_realtime_socket_carries_the_streams_events_with_its_filters(h: Harness) -> None:
    async with aiohttp.ClientSession() as s, \
            s.ws_connect(h.url + "/ws/realtime?service=chat&severity=critical,high", headers=auth(VIEWER)) as ws:
        hello = await asyncio.wait_for(ws.receive_json(), 3)
        assert hello == {"event": "hello", "data": {"subscribers": 1}}
        wanted = make_alert(service="chat", severity="high")
        for a in (make_alert(service="search", severity="critical"), make_alert(service="chat", severity="low"),
                  wanted):
            h.hub.publish("alert", a.to_dict())
        h.hub.publish("resolved", {**wanted.to_dict(), "status": "resolved"})
        first = await asyncio.wait_for(ws.receive_json(), 3)
        assert first == {"id": 1, "event": "alert", "data": wanted.to_dict()}
        second = await asyncio.wait_for(ws.receive_json(), 3)
        assert second["id"] == 2 and second["event"] == "resolved"
        await ws.send_str("ignored")
        # An acknowledgement through the API arrives as an update.
        insert(h, wanted)
        await asyncio.to_thread(h.manager.store.update, [wanted])
        async with h.client(OPERATOR) as c:
            r = await c.post(f"/api/v1/alerts/{wanted.alert_id}/ack", json={"by": "alice"})
        assert r.status_code == 200
        update = await asyncio.wait_for(ws.receive_json(), 3)
        assert update["event"] == "update" and update["data"]["acknowledged_by"] == "alice"


async def test_realtime_socket_needs_a_viewer_and_an_upgrade(h: Harness) -> None:
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(h.url + "/ws/realtime")
        assert e.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await s.ws_connect(h.url + "/ws/realtime?severity=urgent", headers=auth(VIEWER))
        assert e.value.status == 400
    async with h.client() as c:
        r = await c.get("/ws/realtime")
    assert r.status_code == 400 and r.json()["error"].startswith("Upgrade:")


async def test_realtime_socket_closes_when_the_aggregator_stops(tmp_path: Path) -> None:
    async with start_api(tmp_path) as h, aiohttp.ClientSession() as s, \
            s.ws_connect(h.url + "/ws/realtime", headers=auth(VIEWER)) as ws:
        assert (await asyncio.wait_for(ws.receive_json(), 3))["event"] == "hello"
        h.api.realtime.stop()
        msg = await asyncio.wait_for(ws.receive(), 3)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.GOING_AWAY
        assert h.hub.subscribers == 0 or await _until_unsubscribed(h)


async def _until_unsubscribed(h: Harness) -> bool:
    for _ in range(300):
        if h.hub.subscribers == 0:
            return True
        await asyncio.sleep(0.01)
    return False
