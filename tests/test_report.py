"""loadtest.report on synthetic run records: matching alerts to incidents, figures, Markdown, charts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtest.report import (
    Window,
    alert_matches,
    build_report,
    incident_windows,
    match_alerts,
    percentile,
    process_figures,
    render_markdown,
    render_suite_markdown,
    sim_time_of,
    suite_summary,
    write_report,
    write_suite_chart,
)
from loadtest.scenario import Incident

NS = 1_000_000_000
T0 = 1_800_000_000 * NS  # wall time of simulated second 0
SPEEDUP = 30.0
GRACE_S = 120.0  # simulated: 4 wall seconds


def incident(**kw: Any) -> Incident:
    base: dict[str, Any] = {"id": "spike", "type": "latency_spike", "start_s": 900.0, "end_s": 1080.0,
                            "target": {"service": "chat", "model": "gpt-4o"},
                            "detect_as": ("latency_spike", "throughput_drop")}
    base.update(kw)
    return Incident(**base)


def wall(sim_s: float) -> int:
    return T0 + round(sim_s / SPEEDUP * NS)


def alert(kind: str = "latency_spike", service: str | None = "chat", **kw: Any) -> dict[str, Any]:
    return {"alert_id": kw.pop("alert_id", f"{kind}-{service}"), "anomaly_type": kind, "service_name": service,
            "model": "gpt-4o", "severity": "medium", "detection_method": "m", "confidence": 0.9, "summary": "s", **kw}


WINDOW = Window(incident(), start_ns=wall(900), end_ns=wall(1080), until_ns=wall(1080) + 4 * NS)


@pytest.mark.parametrize(("case", "a", "arrival_ns", "expected"), [
    ("type and service, inside", alert(), wall(950), True),
    ("other detect_as type", alert("throughput_drop"), wall(950), True),
    ("type not in detect_as", alert("error_burst"), wall(950), False),
    ("other service", alert(service="search"), wall(950), False),
    ("alert without a service matches any", alert(service=None), wall(950), True),
    ("at the injection", alert(), wall(900), True),
    ("just before the injection", alert(), wall(900) - 1, False),
    ("within the grace after the end", alert(), wall(1080) + 4 * NS, True),
    ("after the grace", alert(), wall(1080) + 4 * NS + 1, False),
])
def test_alert_matches(case: str, a: dict[str, Any], arrival_ns: int, expected: bool) -> None:
    assert alert_matches(a, arrival_ns, WINDOW) is expected, case


def test_alert_matches_an_incident_without_a_target_service() -> None:
    w = Window(incident(target={}), WINDOW.start_ns, WINDOW.end_ns, WINDOW.until_ns)
    assert alert_matches(alert(service="anything"), wall(950), w)


def test_incident_windows_use_reported_wall_times_and_fall_back_to_the_schedule() -> None:
    a, b = incident(id="a"), incident(id="b", start_s=1200.0, end_s=1260.0)
    ws = incident_windows([a, b], {"a": {"start_ns": wall(905), "end_ns": wall(1090)}, "b": {"start_ns": None}},
                          grace_s=GRACE_S, speedup=SPEEDUP, play_start_ns=T0)
    assert (ws[0].start_ns, ws[0].end_ns, ws[0].until_ns) == (wall(905), wall(1090), wall(1090) + 4 * NS)
    assert (ws[1].start_ns, ws[1].end_ns) == (wall(1200), wall(1260))  # not reported: from the schedule


def test_match_alerts_orders_by_arrival_and_counts_overlaps_once_per_incident() -> None:
    ws = [WINDOW, Window(incident(id="drop", type="throughput_drop", detect_as=("throughput_drop",)),
                         wall(1000), wall(1100), wall(1100) + 4 * NS)]
    alerts = [{"arrival_ns": wall(1050), "alert": alert("throughput_drop")},
              {"arrival_ns": wall(920), "alert": alert()},
              {"arrival_ns": wall(300), "alert": alert()}]
    m = match_alerts(ws, alerts)
    assert m.by_incident == {"spike": [1, 0], "drop": [0]}
    assert m.by_alert == [["spike", "drop"], ["spike"], []]


def test_percentile_and_process_figures() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    f = process_figures([[1, 50.0, 100 * 2**20], [2, 150.0, 120 * 2**20], [3, float("nan"), 0]])
    assert f == {"cpu_pct_mean": 100.0, "cpu_pct_max": 150.0, "rss_mib_mean": 110.0, "rss_mib_max": 120.0,
                 "samples": 3}
    assert process_figures([])["cpu_pct_max"] is None


def test_sim_time_of_follows_the_anchors_and_extends_at_the_speedup() -> None:
    anchors = [(T0, 0.0), (T0 + 30 * NS, 900.0), (T0 + 40 * NS, 1080.0)]  # the player lagged: 180 s took 10 s
    got = sim_time_of([T0 - NS, T0 + 15 * NS, T0 + 35 * NS, T0 + 42 * NS], anchors, SPEEDUP)
    np.testing.assert_allclose(got, [-30.0, 450.0, 990.0, 1140.0])


def record(*, clean: bool = False, alerts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    incidents = [] if clean else [
        {"id": "spike", "type": "latency_spike", "start_s": 900, "end_s": 1080, "target": {"service": "chat"},
         "detect_as": ["latency_spike", "throughput_drop"]},
        {"id": "errors", "type": "error_burst", "start_s": 1200, "end_s": 1320, "target": {"service": "search"}},
    ]
    return {
        "scenario": {"name": "clean" if clean else "synthetic", "description": "d", "duration_s": 1800.0,
                     "speedup": SPEEDUP, "rate": 40.0, "grace_s": GRACE_S, "clean": clean, "sidecars": 2,
                     "services": ["chat", "search"], "incidents": incidents},
        "mode": "raw", "sidecars": 2,
        "wall": {"play_start_ns": T0, "play_end_ns": T0 + 60 * NS, "drain_end_ns": T0 + 72 * NS},
        "start_unix_nano": 1_750_000_000 * NS,
        "incident_wall": {} if clean else {"spike": {"start_ns": wall(900), "end_ns": wall(1080)},
                                           "errors": {"start_ns": wall(1200), "end_ns": wall(1320)}},
        "alerts": alerts if alerts is not None else [
            {"arrival_ns": wall(900) + 1_500_000_000, "alert": alert(alert_id="a1")},  # spike, 1.5 s
            {"arrival_ns": wall(960), "alert": alert("throughput_drop", alert_id="a2")},  # spike again
            {"arrival_ns": wall(300), "alert": alert("expensive_prompt", "search", alert_id="a3")},  # false
        ],
        "play": {"spans_sent": 72_000, "sim_s": 1800.0, "failures": 0, "failed_spans": 0, "max_lag_s": 0.2,
                 "warnings": []},
        "metrics": {
            "sidecars": {
                "sidecar-0": {"sentinel_sidecar_spans_received_total": 36_000.0,
                              "sentinel_sidecar_forwarded_rows_total": 35_990.0,
                              'sentinel_sidecar_dropped_rows_total{reason="queue_full"}': 10.0},
                "sidecar-1": {"sentinel_sidecar_spans_received_total": 36_000.0,
                              "sentinel_sidecar_forwarded_rows_total": 36_000.0,
                              'sentinel_sidecar_dropped_rows_total{reason="queue_full"}': 0.0}},
            "aggregator": {"sentinel_aggregator_rows_ingested_total": 71_990.0}},
        "processes": {"aggregator": {"kind": "aggregator", "pid": 1, "samples": [[1, 40.0, 200 * 2**20]]},
                      "sidecar-0": {"kind": "sidecar", "pid": 2, "samples": [[1, 20.0, 90 * 2**20]]},
                      "sidecar-1": {"kind": "sidecar", "pid": 3, "samples": [[1, 30.0, 95 * 2**20]]}},
        "series": {svc: {"service": svc, "step_s": 60, "points": [
            {"t": 1_750_000_000 + 60 * i, "calls": 1200, "errors": 12,
             "latency_ms_mean": 900.0 * (8 if svc == "chat" and 15 <= i < 18 else 1), "latency_ms_max": 3000.0,
             "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.1} for i in range(30)]}
            for svc in ("chat", "search")},
    }


def test_build_report_figures() -> None:
    rep = build_report(record())
    spike, errors = rep["incidents"]
    assert spike["detected"] and spike["matching_alerts"] == 2 and spike["latency_s"] == pytest.approx(1.5)
    assert spike["first_alert"]["alert_id"] == "a1"
    assert not errors["detected"] and errors["latency_s"] is None
    assert errors["detect_as"] == ["error_burst"]  # default from DETECT_AS
    assert rep["recall_by_type"] == {"latency_spike": {"incidents": 1, "detected": 1, "recall": 1.0},
                                     "error_burst": {"incidents": 1, "detected": 0, "recall": 0.0}}
    assert rep["recall"] == 0.5
    assert rep["detection_latency_s"]["p50"] == pytest.approx(1.5)
    al = rep["alerts"]
    assert (al["total"], al["matched"], al["false"]) == (3, 2, 1)
    assert al["precision"] == pytest.approx(2 / 3)
    assert al["false_per_wall_hour"] == pytest.approx(3600 / 72)  # one false alert in 72 wall seconds
    assert al["false_per_sim_hour"] == pytest.approx(2.0)  # one in half a simulated hour
    assert al["false_by_type"] == {"expensive_prompt": 1}
    assert [a["alert_id"] for a in rep["alert_list"]] == ["a3", "a1", "a2"]  # by arrival
    assert rep["alert_list"][0]["sim_s"] == pytest.approx(300.0)
    th = rep["throughput"]
    assert th["spans_per_s"] == pytest.approx(1200.0) and th["rows_ingested_per_s"] == pytest.approx(71_990 / 60)
    assert th["dropped_rows"] == {"queue_full": 10.0} and th["sidecar_rows_forwarded"] == 71_990.0
    assert rep["processes"]["aggregator"]["rss_mib_max"] == pytest.approx(200.0)


def test_an_alert_sent_again_is_one_alert_with_several_notifications() -> None:
    # a1 sent again when series joined it (message a1#2): one alert, two notifications; a false alert
    # sent twice is one false alert
    alerts = [
        {"arrival_ns": wall(900) + 1_500_000_000, "message_id": "a1", "alert": alert(alert_id="a1")},
        {"arrival_ns": wall(960), "message_id": "a1#2", "alert": alert(alert_id="a1")},
        {"arrival_ns": wall(300), "message_id": "a3", "alert": alert("expensive_prompt", "search", alert_id="a3")},
        {"arrival_ns": wall(400), "message_id": "a3#2", "alert": alert("expensive_prompt", "search",
                                                                         alert_id="a3")},
    ]
    rep = build_report(record(alerts=alerts))
    spike = rep["incidents"][0]
    assert (spike["matching_alerts"], spike["matching_notifications"]) == (1, 2)
    al = rep["alerts"]
    assert (al["total"], al["notifications"], al["matched"], al["false"]) == (2, 4, 1, 1)
    assert al["precision"] == pytest.approx(0.5) and al["false_by_type"] == {"expensive_prompt": 1}
    assert [a["notification"] for a in rep["alert_list"]] == [1, 2, 1, 2]
    md = render_markdown(rep)
    assert "| 2 | 4 | 1 | 1 | 0.50 |" in md and "| a1 #2 |" in md and "| 1 (2) |" in md
    s = suite_summary({"synthetic": rep})
    assert (s["alerts"], s["notifications"], s["matched_alerts"]) == (2, 4, 1)
    assert "| 2 (1) | 4 |" in render_suite_markdown(s, {"synthetic": rep})


def test_clean_scenario_every_alert_is_false() -> None:
    rep = build_report(record(clean=True))
    assert rep["incidents"] == [] and rep["recall"] is None
    assert rep["alerts"]["false"] == 3 and rep["alerts"]["precision"] == 0.0
    quiet = build_report(record(clean=True, alerts=[]))
    assert quiet["alerts"]["precision"] is None and quiet["alerts"]["false_per_sim_hour"] == 0.0


def test_markdown_names_the_figures() -> None:
    rep = build_report(record())
    md = render_markdown(rep, ["x/traffic.png"])
    for text in ("# Load test: synthetic", "| spike | latency_spike | service=chat | 900–1080 | yes | 1.50 |",
                 "| errors | error_burst | service=search | 1200–1320 | **NO** | – |", "**false**",
                 "| 3 | 3 | 2 | 1 | 0.67 | 50.0 | 2.0 |", "queue_full: 10", "![traffic](traffic.png)"):
        assert text in md, text


def test_write_report_writes_json_markdown_and_a_chart(tmp_path: Path) -> None:
    rep = write_report(record(), tmp_path)
    assert rep["charts"] == ["traffic.png"]
    assert json.loads((tmp_path / "report.json").read_text())["alerts"]["total"] == 3
    assert (tmp_path / "report.md").read_text().startswith("# Load test: synthetic")
    assert (tmp_path / "traffic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_series = record()
    no_series["series"] = {}
    assert write_report(no_series, tmp_path / "bare")["charts"] == []  # nothing to chart, still a report


def test_suite_summary_over_an_incident_scenario_and_a_clean_one(tmp_path: Path) -> None:
    reports = {"synthetic": build_report(record()), "clean": build_report(record(clean=True, alerts=[]))}
    s = suite_summary(reports)
    assert s["recall"] == 0.5 and s["incidents"] == 2
    assert s["recall_by_type"]["error_burst"]["recall"] == 0.0
    assert s["detection_latency_s"]["n"] == 1
    assert s["clean"]["false_alerts"] == 0 and s["clean"]["false_per_sim_hour"] == 0.0
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["processes_by_kind"]["sidecar"] == {"cpu_pct_max": 30.0, "rss_mib_max": 95.0}
    md = render_suite_markdown(s, reports, "header")
    assert "| latency_spike | 1/1 | 1.00 |" in md and "[clean](clean/report.md)" in md
    chart = write_suite_chart(reports, tmp_path)
    assert chart is not None and Path(chart).read_bytes()[:4] == b"\x89PNG"
