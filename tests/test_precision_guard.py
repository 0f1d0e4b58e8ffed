"""Feedback put to use: low measured precision raises a type's confidence floor (logged, audited, reversible)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from sentinel.config import load, replace_keys
from tests.test_api_support import make_alert

MINUTE_NS = 60_000_000_000
SETTINGS: dict[str, Any] = {"grpc_listen": "", "feedback": {"min_precision": 0.6, "min_verdicts": 4, "floor_step": 0.1},
                            "alerts": {"row_persistence": 1}}


def _spike(confidence: float, service: str) -> Candidate:
    now = time.time_ns()
    return Candidate(anomaly_type="latency_spike", service=service, model="m", detection_method="zscore",
                     confidence=confidence, metric="latency_ms", value=4200.0, baseline=850.0, threshold=2000.0,
                     deviation_sigma=7.3, window_start=now - MINUTE_NS, window_end=now, context={})


async def _judge(agg: Aggregator, verdicts: list[str]) -> None:
    alerts = [make_alert(anomaly_type="latency_spike") for _ in verdicts]
    for a in alerts:
        agg.alert_store.insert(a, [])
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        for a, v in zip(alerts, verdicts, strict=True):
            r = await c.post(f"/api/v1/alerts/{a.alert_id}/feedback", json={"verdict": v})
            assert r.status_code == 201


async def test_low_precision_raises_the_floor_and_an_admin_reverses_it(make_aggregator: Any) -> None:
    agg = await make_aggregator(**SETTINGS)
    assert "latency_spike" not in agg.alerts.config.min_confidence_by_type
    await _judge(agg, ["false_positive", "false_positive", "true_positive"])  # 3 verdicts: too few to count
    assert "latency_spike" not in agg.alerts.config.min_confidence_by_type
    await _judge(agg, ["false_positive"])  # 1 of 4 right: 0.25 < 0.6
    assert agg.alerts.config.min_confidence_by_type["latency_spike"] == 0.6  # 0.5 configured + 0.1
    # The raise applies to detections at once: 0.55 now raises no alert, 0.65 does.
    await asyncio.to_thread(agg.alerts.emit, [_spike(0.55, "a"), _spike(0.65, "b")])
    assert [a.service_name for a in agg.alert_store.unresolved()
            if a.anomaly_type == "latency_spike" and a.service_name in ("a", "b")] == ["b"]
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        floors = (await c.get("/api/v1/feedback/floors")).json()
        assert floors["enabled"] is True
        (raised,) = floors["floors"]
        assert raised["anomaly_type"] == "latency_spike" and raised["floor"] == 0.6
        assert raised["precision"] == 0.25 and raised["verdicts"] == 4
        # The alerts that caused this raise do not cause another: one more verdict is not enough.
        await _judge(agg, ["false_positive"])
        assert agg.alerts.config.min_confidence_by_type["latency_spike"] == 0.6
        audit = (await c.get("/api/v1/audit", params={"action": "confidence_floor.raise"})).json()["entries"]
        assert [e["detail"]["to"] for e in audit] == [0.6] and audit[0]["who"] == "feedback"

        r = await c.delete("/api/v1/feedback/floors/latency_spike")
        assert r.status_code == 200 and r.json()["floor"] == 0.6
        assert "latency_spike" not in agg.alerts.config.min_confidence_by_type
        assert (await c.delete("/api/v1/feedback/floors/latency_spike")).status_code == 404
        reset = (await c.get("/api/v1/audit", params={"action": "confidence_floor.reset"})).json()["entries"]
        assert len(reset) == 1 and reset[0]["target"] == "latency_spike"


async def test_a_raise_survives_a_restart_and_a_reload(tmp_path: Path) -> None:
    config = load(AggregatorConfig, data={"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "agg"),
                                          "shutdown_grace_s": 1.0, **SETTINGS}, env={})
    agg = Aggregator(config, registry=CollectorRegistry())
    await agg.start()
    try:
        await _judge(agg, ["false_positive"] * 4)
        assert agg.alerts.config.min_confidence_by_type["latency_spike"] == 0.6
    finally:
        await agg.shutdown()
    again = Aggregator(config, registry=CollectorRegistry())
    await again.start()
    try:
        assert again.alerts.config.min_confidence_by_type["latency_spike"] == 0.6
        # A reload rebuilds the alert settings from the file: the raise stays over them.
        new = replace_keys(config, {"alerts.min_confidence": 0.55})
        await again.apply_settings(new, ["alerts.min_confidence"])
        assert again.alerts.config.min_confidence == 0.55
        assert again.alerts.config.min_confidence_by_type["latency_spike"] == 0.6
    finally:
        await again.shutdown()


async def test_off_by_default(make_aggregator: Any) -> None:
    agg = await make_aggregator(grpc_listen="")
    await _judge(agg, ["false_positive"] * 25)
    assert "latency_spike" not in agg.alerts.config.min_confidence_by_type
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        assert (await c.get("/api/v1/feedback/floors")).json() == {"enabled": False, "min_precision": 0.0,
                                                                   "floors": []}
