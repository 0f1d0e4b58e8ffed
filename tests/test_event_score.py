"""loadtest.event_score on a hand-made run record (pure logic)."""

from __future__ import annotations

from typing import Any

from loadtest.event_score import score
from loadtest.scenario import Incident, Scenario

NS = 10**9
T0 = 1_700_000_000 * NS


def alert(i: str, kind: str, service: str, start_s: float, end_s: float, severity: str = "high") -> dict[str, Any]:
    return {"alert": {"alert_id": i, "anomaly_type": kind, "severity": severity, "service_name": service,
                      "context": {"window_start": T0 + int(start_s * NS), "window_end": T0 + int(end_s * NS),
                                  "region": "us-east-1"}, "members": []}}


def test_event_time_matching_latency_and_false_alerts_per_service_day() -> None:
    sc = Scenario(name="t", duration_s=86400.0, services=("a", "b"), grace_s=120.0, incidents=(
        Incident("slow", "latency_spike", 1000.0, 1600.0, {"service": "a"}, detect_as=("latency_spike",)),
        Incident("gone", "throughput_drop", 5000.0, 5600.0, {"service": "b"}, detect_as=("throughput_drop",))))
    record = {"start_unix_nano": T0,
              "alerts": [alert("1", "latency_spike", "a", 1030, 1090), alert("1", "latency_spike", "a", 1030, 1200),
                         alert("2", "latency_spike", "b", 1030, 1090),  # another service: false
                         alert("3", "expensive_prompt", "a", 9000, 9060, "low")],
              "late_alerts": [alert("4", "latency_spike", "a", 1700, 1760)]}  # within the grace, delivered late
    rep = score(record, sc)
    slow, gone = rep["incidents"]
    assert slow["detected"] and slow["latency_min"] == 1.5 and slow["alerts"] == 2 and slow["notifications"] == 3
    assert slow["first"]["regions"] == ["us-east-1"]
    assert not gone["detected"] and rep["recall"] == 0.5
    assert rep["false_alerts"] == 2 and rep["false_alerts_medium_or_worse"] == 1
    assert rep["false_per_service_per_day"] == 1.0 and rep["false_medium_per_service_per_day"] == 0.5
