"""Live configuration: GET/PUT /api/v1/config (admin), versions, rollback, audit, and `sentinel config`."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from sentinel.cli.config import file_settings
from sentinel.cli.config import main as config_main
from sentinel.config import load

ADMIN, VIEWER = "admin-secret", "viewer-secret"
MINUTE_NS = 60_000_000_000


def r_text(doc: Any) -> str:
    import json

    return json.dumps(doc)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _spike(confidence: float, service: str) -> Candidate:
    now = time.time_ns()
    return Candidate(anomaly_type="latency_spike", service=service, model="m", detection_method="zscore",
                     confidence=confidence, metric="latency_ms", value=4200.0, baseline=850.0, threshold=2000.0,
                     deviation_sigma=7.3, window_start=now - MINUTE_NS, window_end=now, context={})


@pytest.fixture
async def agg(make_aggregator: Any) -> Aggregator:
    a: Aggregator = await make_aggregator(grpc_listen="", admin_tokens=[ADMIN], viewer_tokens=[VIEWER],
                                          alerts={"row_persistence": 1})
    return a


async def test_put_validates_applies_versions_and_rolls_back(agg: Aggregator) -> None:
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        assert (await c.get("/api/v1/config", headers=_h(VIEWER))).status_code == 403
        doc = (await c.get("/api/v1/config", headers=_h(ADMIN))).json()
        assert doc["version"] == 1 and doc["settings"]["alerts.min_confidence"] == 0.5
        assert "listen" not in doc["settings"] and doc["settings"]["tokens"] == []
        assert doc["settings"]["admin_tokens"].startswith("sha256:")  # secrets: a digest, never the value
        assert ADMIN not in r_text(doc)

        r = await c.put("/api/v1/config", headers=_h(ADMIN), json={
            "settings": {"alerts": {"min_confidence": 0.8, "persistence_window_s": "2m"}}, "comment": "noisy"})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["version"] == 2 and doc["changed"] is True
        assert doc["diff"] == {"alerts.min_confidence": {"from": 0.5, "to": 0.8},
                               "alerts.persistence_window_s": {"from": 300.0, "to": 120.0}}
        assert agg.alerts.config.min_confidence == 0.8 and agg.alerts.config.persistence_window_s == 120.0

        for settings, error in (({"nonsense": 1}, "settings.nonsense: unknown setting"),
                                ({"listen": "0.0.0.0:1"}, "settings.listen: restart needed"),
                                ({"alerts.min_confidence": 3}, "settings.alerts.min_confidence:"),
                                ({"feedback": {"min_precision": 0.5}}, "settings.feedback.min_precision: restart"),
                                ({"alerts": {"min_confidence": 0.6, "nope": 1}}, "settings.alerts.nope: unknown"),
                                ({"alerts": {"min_confidence": 0.6}, "alert_min_confidence": 0.6},
                                 "settings.alerts.min_confidence: given twice"),
                                ({"alerts.min_confidence": 0.6, "alerts": {"severity": {"x": "bad"}}},
                                 "settings.alerts.severity.x:")):
            r = await c.put("/api/v1/config", headers=_h(ADMIN), json={"settings": settings})
            assert r.status_code == 400 and r.json()["error"].startswith(error), r.text
        assert agg.alerts.config.min_confidence == 0.8  # refused whole: the 0.6 beside a bad key did not apply
        # The deprecated flat key is still accepted (here: no change).
        again = await c.put("/api/v1/config", headers=_h(ADMIN), json={"settings": {"alert_min_confidence": 0.8}})
        assert again.json()["changed"] is False and again.json()["version"] == 2

        history = (await c.get("/api/v1/config/history", headers=_h(ADMIN))).json()["versions"]
        assert [(v["version"], v["who"]) for v in history] == [(2, "admin_tokens[0]"), (1, "startup")]
        assert history[0]["comment"] == "noisy"
        r = await c.post("/api/v1/config/rollback", headers=_h(ADMIN), json={"version": 1})
        assert r.status_code == 200 and r.json()["version"] == 3
        assert agg.alerts.config.min_confidence == 0.5 and agg.alerts.config.persistence_window_s == 300.0
        assert (await c.post("/api/v1/config/rollback", headers=_h(ADMIN), json={"version": 99})).status_code == 404
        audit = (await c.get("/api/v1/audit", headers=_h(ADMIN))).json()["entries"]
        actions = [e["action"] for e in audit]
        assert actions.count("config.version") == 2
        assert "config.apply" in actions and "config.rollback" in actions


async def test_sentinel_config_apply_changes_the_next_alerts_without_a_restart(
        agg: Aggregator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SENTINEL_API_TOKEN", ADMIN)
    await asyncio.to_thread(agg.alerts.emit, [_spike(0.7, "before")])
    assert any(a.service_name == "before" for a in agg.alert_store.unresolved())

    settings = tmp_path / "aggregator.yaml"
    settings.write_text("aggregator:\n  alerts:\n    min_confidence: 0.9\n  listen: 0.0.0.0:9999\n")
    assert file_settings(str(settings)) == ({"alerts.min_confidence": 0.9}, ["listen"])
    url = ["--url", agg.url]
    assert await asyncio.to_thread(config_main, [*url, "diff", str(settings)]) == 0
    out = capsys.readouterr()
    assert "alerts.min_confidence: 0.5 -> 0.9" in out.out and "listen: not live" in out.err
    assert await asyncio.to_thread(config_main, [*url, "apply", str(settings), "--comment", "tighten"]) == 0
    assert "version 2" in capsys.readouterr().out
    # The next detections follow it: 0.7 no longer raises an alert, 0.95 does.
    await asyncio.to_thread(agg.alerts.emit, [_spike(0.7, "after"), _spike(0.95, "after-high")])
    services = {a.service_name for a in agg.alert_store.unresolved()}
    assert "after" not in services and "after-high" in services
    # Secrets are compared by digest and never printed: the running admin token is no change.
    settings.write_text(f"admin_tokens: [{ADMIN}]\nviewer_tokens: [another-viewer]\n")
    assert await asyncio.to_thread(config_main, [*url, "diff", str(settings)]) == 0
    out = capsys.readouterr().out
    assert "admin_tokens" not in out and "viewer_tokens: \"sha256:" in out
    assert ADMIN not in out and "another-viewer" not in out and VIEWER not in out
    assert await asyncio.to_thread(config_main, [*url, "history"]) == 0
    assert "tighten" in capsys.readouterr().out
    assert await asyncio.to_thread(config_main, [*url, "rollback", "1"]) == 0
    assert agg.alerts.config.min_confidence == 0.5
    monkeypatch.setenv("SENTINEL_API_TOKEN", VIEWER)
    assert await asyncio.to_thread(config_main, [*url, "show"]) == 1
    assert "403" in capsys.readouterr().err


async def test_a_restart_versions_a_changed_file(tmp_path: Path) -> None:
    base = {"listen": "127.0.0.1:0", "grpc_listen": "", "data_dir": str(tmp_path / "agg"), "shutdown_grace_s": 1.0}
    for confidence, expected in ((0.5, 1), (0.5, 1), (0.7, 2)):
        config = load(AggregatorConfig, data={**base, "alerts": {"min_confidence": confidence}}, env={})
        agg = Aggregator(config, registry=CollectorRegistry())
        await agg.start()
        try:
            latest = agg.versions.latest()
            assert latest is not None and latest.version == expected
            assert latest.settings["alerts.min_confidence"] == confidence
        finally:
            await agg.shutdown()
