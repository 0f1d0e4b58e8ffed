"""The quick load-test suite end to end: real aggregator and sidecars, the real RabbitMQ, the real player.

Every incident of ``loadtest/scenarios/quick.yaml`` must be detected (an alert of a matching type,
service and time window on the run's RabbitMQ exchange), and ``quick-clean.yaml``, the control,
must raise no alert at all. Reports must be written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import suite
from loadtest.scenario import load_scenario


@pytest.mark.system
@pytest.mark.timeout(300)
def test_quick_suite_detects_every_incident_and_stays_quiet_on_clean_traffic(tmp_path: Path) -> None:
    status = suite.main(["--quick", "--out", str(tmp_path)])

    data = json.loads((tmp_path / "suite.json").read_text())
    reports = data["reports"]
    quick, clean = load_scenario(suite.SCENARIO_DIR / "quick.yaml"), load_scenario(
        suite.SCENARIO_DIR / "quick-clean.yaml")
    assert set(reports) == {quick.name, clean.name}
    for name, rep in reports.items():
        assert rep["errors"] == [], f"{name}: {rep['errors']}"
        for f in ("report.md", "report.json", "run.json", "traffic.png"):
            assert (tmp_path / name / f).stat().st_size > 0, f"{name}/{f}"
        assert rep["throughput"]["spans_sent"] > 0
        assert rep["throughput"]["rows_ingested"] == rep["throughput"]["spans_sent"]  # every LLM call became a row

    detected = {i["id"]: i["detected"] for i in reports[quick.name]["incidents"]}
    assert detected == {i.id: True for i in quick.incidents}, reports[quick.name]["incidents"]
    assert reports[clean.name]["alerts"]["total"] == 0, reports[clean.name]["alert_list"]

    assert (tmp_path / "README.md").read_text().startswith("# LLM-Sentinel load-test suite")
    assert data["summary"]["quick_failures"] == []
    assert status == 0


def test_quick_failures_name_missed_incidents_false_alarms_and_run_errors() -> None:
    ok = {"scenario": {"clean": False}, "errors": [], "alerts": {"total": 2, "by_type": {"latency_spike": 2}},
          "incidents": [{"id": "spike", "type": "latency_spike", "detected": True}]}
    missed = {**ok, "incidents": [{"id": "drop", "type": "throughput_drop", "detected": False}]}
    noisy = {"scenario": {"clean": True}, "errors": ["RuntimeError: sidecar-0 exited"], "incidents": [],
             "alerts": {"total": 3, "by_type": {"expensive_prompt": 3}}}
    assert suite.quick_failures({"quick": ok}) == []
    assert suite.quick_failures({"quick": missed, "quick-clean": noisy}) == [
        "quick: incident drop (throughput_drop) not detected",
        "quick-clean: run failed: RuntimeError: sidecar-0 exited",
        "quick-clean: clean control raised 3 alert(s): expensive_prompt x3",
    ]


def test_the_standard_suite_is_every_scenario_but_the_quick_ones() -> None:
    names = [p.name for p in suite.standard_scenarios()]
    assert names == sorted(names) and names
    assert not any(n.startswith("quick") for n in names)
    assert all((suite.SCENARIO_DIR / n).exists() for n in suite.QUICK_SCENARIOS)


def test_the_runner_scales_every_alert_window_by_the_speedup() -> None:
    from loadtest.run import aggregator_settings

    quick = load_scenario(suite.SCENARIO_DIR / "quick.yaml")
    assert aggregator_settings(quick)["alerts"]["time_scale"] == quick.speedup == 30
    assert "resolve_after_s" not in quick.aggregator.get("alerts", {})  # the scaled 300 s default, not a wall override
    assert aggregator_settings(quick, 1.0)["alerts"]["time_scale"] == 1.0  # --alert-time-scale 1: wall-clock windows


def test_compressed_event_time_is_not_clamped_as_a_clock_ahead() -> None:
    # Regression: with the aggregator's 5 s max_future_skew_s, every row of a 30x scenario (event time
    # runs ahead of the wall clock) was analysed at its arrival time, and the throughput drop vanished.
    from loadtest.run import aggregator_settings

    quick = load_scenario(suite.SCENARIO_DIR / "quick.yaml")
    assert aggregator_settings(quick)["max_future_skew_s"] >= quick.duration_s
