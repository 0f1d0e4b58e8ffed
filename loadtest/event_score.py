"""Score a ``loadtest.run`` run in **event time**: false alerts per service per day, recall, detection latency.

    python -m loadtest.event_score OUT_DIR/run.json loadtest/scenarios/incidents-realistic.yaml

The runner's report matches alerts by their wall-clock arrival; on a busy machine the player and the
pipeline fall seconds behind, which at 60× is minutes of simulated time, so arrival-time matching
misses alerts that were raised on time in event time. Here an alert (each notification counts, the
late ones delivered after the drain included) **detects** an incident when its type is in the
incident's ``detect_as``, its service is the target's (if the target names one) and its detection
window ``context.window_start … window_end`` (event time) overlaps ``[start_s, end_s + grace_s)``.
Latency = ``window_end`` (when the detection could first be known) − ``start_s``. Every other alert is
false; false *alerts* are distinct alert ids (a grouped alert notified twice is one alert).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtest.scenario import Incident, Scenario, load_scenario

__all__ = ["Detection", "detections", "main", "score"]

NS = 1e9
MEDIUM_OR_WORSE = ("medium", "high", "critical")


@dataclass(frozen=True)
class Detection:
    """One notification, with its window in simulated seconds from the scenario's start."""

    alert_id: str
    anomaly_type: str
    severity: str
    service: str | None
    start_s: float
    end_s: float
    regions: tuple[str, ...]


def detections(record: Mapping[str, Any]) -> list[Detection]:
    """The run's notifications (on time and late) that carry an event-time window."""
    t0 = int(record["start_unix_nano"])
    out = []
    for a in [*record.get("alerts", []), *record.get("late_alerts", [])]:
        al = a["alert"]
        ctx = al.get("context") or {}
        if ctx.get("window_start") is None or ctx.get("window_end") is None:
            continue
        regions = {m.get("labels", {}).get("region") for m in al.get("members", [])} | {ctx.get("region")}
        out.append(Detection(str(al["alert_id"]), str(al["anomaly_type"]), str(al["severity"]),
                             al.get("service_name"), (int(ctx["window_start"]) - t0) / NS,
                             (int(ctx["window_end"]) - t0) / NS, tuple(sorted(r for r in regions if r))))
    return out


def _detects(d: Detection, inc: Incident, grace_s: float) -> bool:
    service = inc.target.get("service")
    return (d.anomaly_type in inc.detect_as and (service is None or d.service in (None, service))
            and d.start_s < inc.end_s + grace_s and d.end_s > inc.start_s)


def score(record: Mapping[str, Any], scenario: Scenario) -> dict[str, Any]:
    """Figures of one run (module docstring)."""
    found = detections(record)
    matched: set[int] = set()
    incidents = []
    for inc in scenario.incidents:
        hits = [i for i, d in enumerate(found) if _detects(d, inc, scenario.grace_s)]
        matched.update(hits)
        first = min((found[i] for i in hits), key=lambda d: d.end_s, default=None)
        incidents.append({
            "id": inc.id, "type": inc.type, "detected": first is not None,
            "latency_min": None if first is None else (first.end_s - inc.start_s) / 60,
            "alerts": len({found[i].alert_id for i in hits}), "notifications": len(hits),
            "first": None if first is None else {"type": first.anomaly_type, "severity": first.severity,
                                                 "service": first.service, "regions": list(first.regions)}})
    false = {d.alert_id: d for i, d in enumerate(found) if i not in matched}
    days = scenario.duration_s / 86400
    per_day = len(false) / len(scenario.services) / days
    medium = [d for d in false.values() if d.severity in MEDIUM_OR_WORSE]
    return {
        "scenario": scenario.name, "simulated_hours": scenario.duration_s / 3600,
        "notifications": len(found), "false_alerts": len(false), "false_alerts_medium_or_worse": len(medium),
        "false_per_service_per_day": per_day,
        "false_medium_per_service_per_day": len(medium) / len(scenario.services) / days,
        "false_per_service_per_hour": per_day / 24,
        "false_by_type": dict(Counter(f"{d.anomaly_type}/{d.severity}" for d in false.values())),
        "recall": sum(1 for r in incidents if r["detected"]) / len(incidents) if incidents else None,
        "incidents": incidents,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.event_score", description=__doc__.splitlines()[0])
    p.add_argument("run_json", type=Path, help="run.json written by python -m loadtest.run")
    p.add_argument("scenario", type=Path, help="the scenario file it played")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args(argv)
    rep = score(json.loads(args.run_json.read_text()), load_scenario(args.scenario))
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    print(f"{rep['scenario']} ({rep['simulated_hours']:g} simulated h, event time): {rep['notifications']} "
          f"notifications; {rep['false_alerts']} false alerts ({rep['false_alerts_medium_or_worse']} medium or worse)")
    print(f"  false alerts per service per day: {rep['false_per_service_per_day']:.1f} any, "
          f"{rep['false_medium_per_service_per_day']:.1f} medium or worse "
          f"({rep['false_per_service_per_hour']:.2f} per service per hour); {rep['false_by_type']}")
    for r in rep["incidents"]:
        lat = "missed" if r["latency_min"] is None else f"{r['latency_min']:.1f} min"
        first = r["first"] or {}
        print(f"  {r['id']:16} {r['type']:16} {lat:>9}  alerts {r['alerts']}  first {first.get('type', '-')}"
              f"/{first.get('severity', '-')} {first.get('service') or ''} {' '.join(first.get('regions', []))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
