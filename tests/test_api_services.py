"""/api/v1/services, .../health and .../series: shapes, status from alerts, baselines, 404s."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aggregator.api.services_api import health_status
from sentinel.alerts import iso_time, parse_time
from tests.test_api_support import Harness, S, batch, insert, make_alert, start_api, traffic

T0 = parse_time("2026-11-23T10:00:00Z")
HEALTH_KEYS = {"service", "status", "open_alerts", "open_by_severity", "last_seen", "window_s", "calls",
               "error_rate", "latency_ms_p50", "latency_ms_p95", "tokens_per_min", "cost_usd_per_hour", "baseline"}


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path) as harness:
        # 10 minutes of chat at one call a second (every 10th an error), 2 minutes of search.
        chat = batch(traffic("chat", T0, 600, error_every=10))
        search = batch(traffic("search", T0 + 480 * S, 120, latency_ms=50.0), seq=2)
        for b in (chat, search):
            harness.series.consume(b, arrival_ns=T0 + 600 * S)
            harness.baselines.consume(b, arrival_ns=T0 + 600 * S)
        yield harness


def test_health_status_rule() -> None:
    assert health_status([]) == "ok"
    assert health_status([make_alert(severity="low"), make_alert(severity="medium")]) == "warning"
    assert health_status([make_alert(severity="low"), make_alert(severity="high")]) == "critical"
    assert health_status([make_alert(severity="critical")]) == "critical"


async def test_health_of_a_service(h: Harness) -> None:
    insert(h, make_alert(severity="medium", service="chat"), make_alert(severity="low", service="chat"),
           make_alert(severity="critical", service="chat", status="resolved"))
    async with h.client() as c:
        r = await c.get("/api/v1/services/chat/health")
    assert r.status_code == 200
    doc = r.json()
    assert set(doc) == HEALTH_KEYS
    assert doc["service"] == "chat" and doc["status"] == "warning"  # the critical one is resolved
    assert doc["open_alerts"] == 2 and doc["open_by_severity"] == {"medium": 1, "low": 1}
    assert doc["last_seen"] == iso_time(T0 + 599 * S)
    assert doc["window_s"] == 300
    # The five one-minute buckets up to the newest event: 10:05 to 10:09:59.
    assert doc["calls"] == 300
    assert doc["error_rate"] == pytest.approx(0.1)
    # Latency rises 1 ms a call: 400..699 in the window.
    assert doc["latency_ms_p50"] == pytest.approx(550, rel=0.03)
    assert doc["latency_ms_p95"] == pytest.approx(685, rel=0.03)
    assert doc["tokens_per_min"] == pytest.approx(300 * 150 / 299 * 60, rel=0.01)
    assert doc["cost_usd_per_hour"] == pytest.approx(300 * 0.002 / 299 * 3600, rel=0.01)
    # Global baseline over all 600 calls: 100..699.
    assert doc["baseline"]["latency_ms_p50"] == pytest.approx(400, rel=0.03)
    assert doc["baseline"]["latency_ms_p95"] == pytest.approx(670, rel=0.03)


async def test_services_lists_seen_services_and_those_with_open_alerts(h: Harness) -> None:
    insert(h, make_alert(severity="high", service="voice"))
    async with h.client() as c:
        services = (await c.get("/api/v1/services")).json()["services"]
    assert [s["service"] for s in services] == ["chat", "search", "voice"]
    assert all(set(s) == HEALTH_KEYS for s in services)
    by_name = {s["service"]: s for s in services}
    assert by_name["search"]["status"] == "ok" and by_name["search"]["calls"] == 120
    assert by_name["voice"]["status"] == "critical" and by_name["voice"]["calls"] == 0
    assert by_name["voice"]["last_seen"] is None and by_name["voice"]["latency_ms_p50"] is None
    assert by_name["voice"]["baseline"] == {"latency_ms_p50": None, "latency_ms_p95": None}


async def test_unknown_service_is_404(h: Harness) -> None:
    async with h.client() as c:
        for path in ("/api/v1/services/nobody/health", "/api/v1/services/nobody/series"):
            r = await c.get(path)
            assert r.status_code == 404
            assert r.json()["error"].startswith("service:")


async def test_series(h: Harness) -> None:
    raised = make_alert(service="chat", ts=T0 + 300 * S, anomaly_type="error_burst", metric="error_rate")
    insert(h, raised, make_alert(service="search", ts=T0 + 300 * S))
    async with h.client() as c:
        doc = (await c.get("/api/v1/services/chat/series")).json()
        assert set(doc) == {"service", "step_s", "points", "alerts"}
        assert doc["service"] == "chat" and doc["step_s"] == 60
        # Default: the hour up to the newest event, empty buckets included.
        assert len(doc["points"]) == 60
        assert doc["points"][-1]["t"] == (T0 + 540 * S) // S
        full = [p for p in doc["points"] if p["calls"]]
        assert len(full) == 10 and all(p["calls"] == 60 and p["errors"] == 6 for p in full)
        first = full[0]
        assert first == {"t": T0 // S, "calls": 60, "errors": 6, "latency_ms_mean": pytest.approx(129.5),
                         "latency_ms_max": 159.0, "input_tokens": 6000, "output_tokens": 3000,
                         "cost_usd": pytest.approx(0.12)}
        empty = doc["points"][0]
        assert empty["calls"] == 0 and empty["latency_ms_mean"] is None and empty["latency_ms_max"] is None
        assert doc["alerts"] == [{"t": (T0 + 300 * S) / S, "alert_id": raised.alert_id,
                                  "anomaly_type": "error_burst", "severity": "high", "metric": "error_rate"}]

        doc = (await c.get("/api/v1/services/chat/series",
                           params={"start": "2026-11-23T10:02:00Z", "end": "2026-11-23T10:04:00Z"})).json()
        assert [p["t"] for p in doc["points"]] == [(T0 + 120 * S) // S, (T0 + 180 * S) // S]
        assert doc["alerts"] == []

        r = await c.get("/api/v1/services/chat/series", params={"start": "2026-11-23T10:04:00Z",
                                                                "end": "2026-11-23T10:04:00Z"})
        assert r.status_code == 400 and r.json()["error"].startswith("end:")
        r = await c.get("/api/v1/services/chat/series", params={"end": "later"})
        assert r.status_code == 400 and r.json()["error"].startswith("end:")


async def test_series_of_a_service_known_only_by_its_alerts(h: Harness) -> None:
    a = make_alert(service="voice")
    insert(h, a)
    async with h.client() as c:
        doc = (await c.get("/api/v1/services/voice/series")).json()
    assert doc["points"] == [] and [x["alert_id"] for x in doc["alerts"]] == [a.alert_id]
