"""Load-test reports: alerts matched to injected incidents, figures, Markdown tables and charts.

    python -m loadtest.report OUT/run.json [--out OUT]   # re-render report.json/.md and charts of a run

The input is the *run record* ``loadtest.run`` writes (``run.json``: the scenario, when each
incident started and ended in wall time, every alert with its arrival time on RabbitMQ, CPU/RSS
samples, the processes' metrics, the aggregator's per-service series). Everything below is a pure
function of it, so a report can be rebuilt and the matching tested without running anything.

Matching (the rule of ``loadtest/scenario.py``): an alert **detects** an incident when its
``anomaly_type`` is in the incident's ``detect_as``, its ``service_name`` is the target's service
(when the target names one; an alert without a service matches any), and it **arrived on
RabbitMQ** within ``[incident start, incident end + grace_s / speedup]`` in wall time (start and
end as the player reported them crossing the incident's bounds). Every other alert is false.

An **alert** is one ``alert_id``: the alert manager sends an alert again when series join it after
``group_interval`` or on ``repeat_interval`` (message ``<alert_id>#<n>``), and those updates are
**notifications** of the same alert, not new alerts. An alert matches an incident when any of its
notifications does; it is false when none does.

Figures: per incident detected, first matching alert, detection latency (its arrival − the
incident's start, wall seconds); recall per incident type; precision = matched alerts / all
alerts; false alerts per hour both per **wall** hour of the run (play + drain) and per
**simulated** hour of traffic; throughput; CPU (% of one core) and RSS per process.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.scenario import DETECT_AS, Incident

__all__ = [
    "Matching",
    "Window",
    "alert_ids",
    "alert_matches",
    "build_report",
    "incident_from_dict",
    "incident_windows",
    "match_alerts",
    "percentile",
    "process_figures",
    "render_markdown",
    "render_suite_markdown",
    "sim_time_of",
    "suite_summary",
    "write_charts",
    "write_report",
    "write_suite_chart",
]

NS = 1_000_000_000
MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------------
# matching


@dataclass(frozen=True)
class Window:
    """An incident in wall time: ``[start_ns, until_ns]`` is when an alert counts (``until`` = end + grace)."""

    incident: Incident
    start_ns: int
    end_ns: int
    until_ns: int


@dataclass(frozen=True)
class Matching:
    """``by_incident``: incident id -> indexes of the alerts detecting it, by arrival; ``by_alert``: the
    ids of the incidents each alert detects (empty: a false alert)."""

    by_incident: dict[str, list[int]]
    by_alert: list[list[str]]


def incident_from_dict(d: Mapping[str, Any]) -> Incident:
    kind = str(d["type"])
    return Incident(id=str(d["id"]), type=kind, start_s=float(d["start_s"]), end_s=float(d["end_s"]),
                    target={str(k): str(v) for k, v in (d.get("target") or {}).items()},
                    params=dict(d.get("params") or {}),
                    detect_as=tuple(d.get("detect_as") or DETECT_AS.get(kind, ())))


def incident_windows(incidents: Iterable[Incident], wall: Mapping[str, Mapping[str, int | None]], *,
                     grace_s: float, speedup: float, play_start_ns: int) -> list[Window]:
    """Each incident's wall window. ``wall[id]`` has ``start_ns``/``end_ns`` as the player reported them;
    a bound it did not report (a run cut short) is placed at ``play_start_ns + sim seconds / speedup``."""
    out = []
    for inc in incidents:
        w = wall.get(inc.id, {})
        start = w.get("start_ns") or play_start_ns + round(inc.start_s / speedup * NS)
        end = w.get("end_ns") or start + round((inc.end_s - inc.start_s) / speedup * NS)
        out.append(Window(inc, int(start), int(end), int(end) + round(grace_s / speedup * NS)))
    return out


def alert_matches(alert: Mapping[str, Any], arrival_ns: int, window: Window) -> bool:
    """The rule of ``loadtest/scenario.py``: type, service (if the target names one) and arrival time."""
    inc = window.incident
    if alert.get("anomaly_type") not in inc.detect_as:
        return False
    service = inc.target.get("service")
    if service is not None and alert.get("service_name") and alert.get("service_name") != service:
        return False
    return window.start_ns <= arrival_ns <= window.until_ns


def match_alerts(windows: Sequence[Window], alerts: Sequence[Mapping[str, Any]]) -> Matching:
    """``alerts``: ``{"arrival_ns": int, "alert": {...}}`` records (any order)."""
    by_incident: dict[str, list[int]] = {w.incident.id: [] for w in windows}
    by_alert: list[list[str]] = []
    for i, rec in enumerate(alerts):
        hit = [w.incident.id for w in windows if alert_matches(rec["alert"], int(rec["arrival_ns"]), w)]
        by_alert.append(hit)
        for inc_id in hit:
            by_incident[inc_id].append(i)
    for ids in by_incident.values():
        ids.sort(key=lambda i: int(alerts[i]["arrival_ns"]))
    return Matching(by_incident, by_alert)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (linear interpolation), ``None`` for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def sim_time_of(wall_ns: Sequence[int] | np.ndarray, anchors: Sequence[tuple[int, float]],
                speedup: float) -> np.ndarray:
    """Simulated seconds of wall times, piecewise linear through ``anchors`` (wall ns, simulated s), extended
    at ``speedup`` beyond the first and last anchors (a player that lags is followed where it reported)."""
    pts = sorted({int(w): float(s) for w, s in anchors}.items())
    x = np.asarray(wall_ns, dtype=float)
    if not pts:
        return np.full(x.shape, math.nan)
    xs = np.array([p[0] for p in pts], dtype=float)
    ys = np.array([p[1] for p in pts], dtype=float)
    out = np.interp(x, xs, ys)
    out = np.where(x < xs[0], ys[0] + (x - xs[0]) / NS * speedup, out)
    out = np.where(x > xs[-1], ys[-1] + (x - xs[-1]) / NS * speedup, out)
    return np.asarray(out, dtype=float)


def _anchors(record: Mapping[str, Any]) -> list[tuple[int, float]]:
    wall = record["wall"]
    anchors = [(int(wall["play_start_ns"]), 0.0)]
    by_id = {d["id"]: d for d in record["scenario"]["incidents"]}
    for inc_id, w in record.get("incident_wall", {}).items():
        d = by_id.get(inc_id)
        if d is None:
            continue
        if w.get("start_ns"):
            anchors.append((int(w["start_ns"]), float(d["start_s"])))
        if w.get("end_ns"):
            anchors.append((int(w["end_ns"]), float(d["end_s"])))
    sim_end = record.get("play", {}).get("sim_s")
    if wall.get("play_end_ns") and sim_end is not None:
        anchors.append((int(wall["play_end_ns"]), float(sim_end)))
    return anchors


# ---------------------------------------------------------------------------------------------
# figures


def process_figures(samples: Sequence[Sequence[float]]) -> dict[str, float | None]:
    """``samples``: ``[t_s, cpu_percent_of_one_core, rss_bytes]`` each; mean and max of both."""
    cpu = [float(s[1]) for s in samples if s[1] is not None and math.isfinite(s[1])]
    rss = [float(s[2]) for s in samples if s[2]]
    return {
        "cpu_pct_mean": sum(cpu) / len(cpu) if cpu else None, "cpu_pct_max": max(cpu) if cpu else None,
        "rss_mib_mean": sum(rss) / len(rss) / MIB if rss else None, "rss_mib_max": max(rss) / MIB if rss else None,
        "samples": len(samples),
    }


def _rate(n: float | None, seconds: float) -> float | None:
    return n / seconds if n is not None and seconds > 0 else None


def build_report(record: Mapping[str, Any]) -> dict[str, Any]:
    """Every figure of one run (JSON-ready) from its run record."""
    sc = record["scenario"]
    speedup, grace_s = float(sc["speedup"]), float(sc["grace_s"])
    wall = record["wall"]
    play_start, play_end = int(wall["play_start_ns"]), int(wall["play_end_ns"])
    drain_end = int(wall.get("drain_end_ns") or play_end)
    incidents = [incident_from_dict(d) for d in sc["incidents"]]
    windows = incident_windows(incidents, record.get("incident_wall", {}), grace_s=grace_s, speedup=speedup,
                               play_start_ns=play_start)
    alerts = sorted(record.get("alerts", []), key=lambda a: int(a["arrival_ns"]))
    matching = match_alerts(windows, alerts)
    sim_of = sim_time_of([int(a["arrival_ns"]) for a in alerts], _anchors(record), speedup)
    ids = alert_ids(alerts)

    inc_rows: list[dict[str, Any]] = []
    for w in windows:
        inc = w.incident
        hits = matching.by_incident[inc.id]
        first = alerts[hits[0]] if hits else None
        inc_rows.append({
            "id": inc.id, "type": inc.type, "target": inc.target, "start_s": inc.start_s, "end_s": inc.end_s,
            "detect_as": list(inc.detect_as), "detected": first is not None,
            "matching_alerts": len({ids[i] for i in hits}), "matching_notifications": len(hits),
            "latency_s": (int(first["arrival_ns"]) - w.start_ns) / NS if first else None,
            "first_alert": _alert_brief(first["alert"]) if first else None,
            "wall_start_reported": bool(record.get("incident_wall", {}).get(inc.id, {}).get("start_ns")),
        })
    by_type: dict[str, dict[str, Any]] = {}
    for row in inc_rows:
        t = by_type.setdefault(row["type"], {"incidents": 0, "detected": 0})
        t["incidents"] += 1
        t["detected"] += int(row["detected"])
    for t in by_type.values():
        t["recall"] = t["detected"] / t["incidents"]
    latencies = [r["latency_s"] for r in inc_rows if r["latency_s"] is not None]

    alert_rows = []
    sent: dict[str, int] = {}
    for i, a in enumerate(alerts):
        sent[ids[i]] = sent.get(ids[i], 0) + 1
        alert_rows.append({**_alert_brief(a["alert"]), "arrival_ns": int(a["arrival_ns"]),
                           "arrival_s": (int(a["arrival_ns"]) - play_start) / NS,
                           "sim_s": float(sim_of[i]), "incidents": matching.by_alert[i],
                           "notification": sent[ids[i]]})
    matched_ids = {ids[i] for i, m in enumerate(matching.by_alert) if m}
    matched, total = len(matched_ids), len(set(ids))
    false = total - matched
    false_types = {ids[i]: str(a["anomaly_type"]) for i, a in enumerate(alert_rows) if ids[i] not in matched_ids}
    wall_s = (drain_end - play_start) / NS
    play_s = (play_end - play_start) / NS
    sim_h = float(sc["duration_s"]) / 3600

    play = dict(record.get("play", {}))
    metrics = record.get("metrics", {})
    sidecars = metrics.get("sidecars", {})
    agg = metrics.get("aggregator", {})
    dropped: dict[str, float] = {}
    for m in sidecars.values():
        for key, v in m.items():
            if key.startswith("sentinel_sidecar_dropped_rows_total{"):
                reason = key.split('reason="', 1)[1].split('"', 1)[0] if 'reason="' in key else "?"
                dropped[reason] = dropped.get(reason, 0.0) + v
    forwarded = sum(m.get("sentinel_sidecar_forwarded_rows_total", 0.0) for m in sidecars.values())
    received = sum(m.get("sentinel_sidecar_spans_received_total", 0.0) for m in sidecars.values())
    ingested = agg.get("sentinel_aggregator_rows_ingested_total")
    spans_sent = play.get("spans_sent")

    processes = {name: {"kind": p.get("kind", name), "pid": p.get("pid"), **process_figures(p.get("samples", []))}
                 for name, p in record.get("processes", {}).items()}

    return {
        "scenario": {k: sc[k] for k in ("name", "description", "duration_s", "speedup", "rate", "grace_s", "clean",
                                        "sidecars") if k in sc},
        "mode": record.get("mode", "raw"),
        "sidecars": record.get("sidecars", sc.get("sidecars")),
        "wall_s": {"play": play_s, "total": wall_s, "run": record.get("run_wall_s")},
        "incidents": inc_rows,
        "recall_by_type": by_type,
        "recall": sum(r["detected"] for r in inc_rows) / len(inc_rows) if inc_rows else None,
        "detection_latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                                "max": max(latencies) if latencies else None, "n": len(latencies)},
        "alerts": {
            "total": total, "matched": matched, "false": false, "notifications": len(alerts),
            "precision": matched / total if total else None,
            "false_per_wall_hour": false / (wall_s / 3600) if wall_s > 0 else None,
            "false_per_sim_hour": false / sim_h if sim_h > 0 else None,
            "wall_hours": wall_s / 3600, "sim_hours": sim_h,
            "by_type": _count({ids[i]: a["anomaly_type"] for i, a in enumerate(alert_rows)}.values()),
            "false_by_type": _count(false_types.values()),
        },
        "alert_list": alert_rows,
        "throughput": {
            "spans_sent": spans_sent, "spans_per_s": _rate(spans_sent, play_s),
            "export_failures": play.get("failures"), "failed_spans": play.get("failed_spans"),
            "sdk_dropped_spans": play.get("dropped_spans"), "player_max_lag_s": play.get("max_lag_s"),
            "player_warnings": list(play.get("warnings") or []),
            "sidecar_spans_received": received, "sidecar_rows_forwarded": forwarded,
            "rows_ingested": ingested, "rows_ingested_per_s": _rate(ingested, play_s),
            "dropped_rows": dropped, "dropped_rows_total": sum(dropped.values()),
        },
        "processes": processes,
        "errors": list(record.get("errors", [])),
        "warnings": list(record.get("warnings", [])),
    }


def alert_ids(alerts: Sequence[Mapping[str, Any]]) -> list[str]:
    """The alert each notification record is of: its ``alert_id`` (else its message id without ``#<n>``)."""
    out = []
    for i, rec in enumerate(alerts):
        aid = rec["alert"].get("alert_id") or str(rec.get("message_id") or "").split("#", 1)[0]
        out.append(str(aid) if aid else f"#{i}")
    return out


def _alert_brief(a: Mapping[str, Any]) -> dict[str, Any]:
    return {k: a.get(k) for k in ("alert_id", "anomaly_type", "severity", "service_name", "model",
                                  "detection_method", "confidence", "summary")}


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# Markdown


def _f(x: Any, fmt: str = ".2f", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return format(x, fmt)
    return str(x)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _alert_ref(a: Mapping[str, Any]) -> str:
    """A row's alert: its id's first 8 characters, ``#<n>`` for its n-th notification after the first."""
    n = int(a.get("notification") or 1)
    return str(a.get("alert_id") or "")[:8] + (f" #{n}" if n > 1 else "")


def _target(t: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in t.items()) or "(any)"


def render_markdown(rep: Mapping[str, Any], charts: Sequence[str] = ()) -> str:
    sc = rep["scenario"]
    al, th = rep["alerts"], rep["throughput"]
    lines = [f"# Load test: {sc['name']}", ""]
    if sc.get("description"):
        lines += [str(sc["description"]), ""]
    lines += [f"{sc['duration_s']:g} simulated s at {sc['speedup']:g}× ({rep['wall_s']['play']:.1f} s of wall-clock "
              f"play, {rep['wall_s']['total']:.1f} s with the drain), {sc['rate']:g} calls per simulated s, "
              f"{rep['sidecars']} sidecar(s), mode `{rep['mode']}`, grace {sc['grace_s']:g} simulated s."
              + (" **Clean control: every alert is a false alert.**" if sc.get("clean") else ""), ""]
    if rep["errors"]:
        lines += ["**Errors:**", ""] + [f"- {e}" for e in rep["errors"]] + [""]
    if rep.get("warnings"):
        lines += ["Warnings:", ""] + [f"- {w.splitlines()[0]}" for w in rep["warnings"]] + [""]
    if rep["incidents"]:
        lines += ["## Incidents", ""]
        lines += _table(("incident", "type", "target", "simulated s", "detected", "latency s", "first alert",
                         "matching alerts (notifications)"),
                        ((r["id"], r["type"], _target(r["target"]), f"{r['start_s']:g}–{r['end_s']:g}",
                          "yes" if r["detected"] else "**NO**", _f(r["latency_s"]),
                          (f"{r['first_alert']['anomaly_type']} ({r['first_alert']['severity']}, "
                           f"{r['first_alert']['detection_method']})") if r["first_alert"] else "–",
                          f"{r['matching_alerts']} ({r.get('matching_notifications', r['matching_alerts'])})")
                         for r in rep["incidents"]))
        lines += ["", "Detection latency: alert's arrival on RabbitMQ − the incident's injection (wall clock).", ""]
        lines += _table(("incident type", "detected / incidents", "recall"),
                        ((t, f"{v['detected']}/{v['incidents']}", _f(v["recall"])) for t, v in
                         rep["recall_by_type"].items()))
        lat = rep["detection_latency_s"]
        lines += ["", f"Detection latency over {lat['n']} detected incident(s): p50 {_f(lat['p50'])} s, "
                      f"p95 {_f(lat['p95'])} s, max {_f(lat['max'])} s.", ""]
    lines += ["## Alerts", ""]
    lines += _table(("alerts", "notifications", "matched", "false", "precision", "false / wall hour",
                     "false / simulated hour"),
                    [(al["total"], al.get("notifications", al["total"]), al["matched"], al["false"],
                      _f(al["precision"]),
                      _f(al["false_per_wall_hour"], ".1f"), _f(al["false_per_sim_hour"], ".1f"))])
    lines += ["", "An alert is one alert id; its later notifications (series joining after group_interval, "
                  "repeats) are rows `#2`, `#3`... below, not new alerts. "
                  f"Wall hours: {al['wall_hours']:.4f} (play + drain); simulated hours: {al['sim_hours']:.3f}.", ""]
    if rep["alert_list"]:
        lines += _table(("arrival s", "simulated s", "alert", "type", "severity", "service / model", "method",
                         "incident"),
                        ((f"{a['arrival_s']:.1f}", f"{a['sim_s']:.0f}", _alert_ref(a), a["anomaly_type"], a["severity"],
                          f"{a['service_name']} / {a['model']}", a["detection_method"],
                          ", ".join(a["incidents"]) or "**false**") for a in rep["alert_list"][:60]))
        if len(rep["alert_list"]) > 60:
            lines += ["", f"… and {len(rep['alert_list']) - 60} more (report.json has them all)."]
        lines += [""]
    lines += ["## Throughput", ""]
    lines += _table(("spans sent", "spans/s (wall)", "failed exports", "spans received (sidecars)",
                     "rows forwarded", "rows ingested", "rows ingested/s", "rows dropped"),
                    [(_f(th["spans_sent"], ",.0f"), _f(th["spans_per_s"], ",.0f"), _f(th["export_failures"], ",.0f"),
                      _f(th["sidecar_spans_received"], ",.0f"), _f(th["sidecar_rows_forwarded"], ",.0f"),
                      _f(th["rows_ingested"], ",.0f"), _f(th["rows_ingested_per_s"], ",.0f"),
                      _f(th["dropped_rows_total"], ",.0f") + (" (" + ", ".join(
                          f"{k}: {v:,.0f}" for k, v in th["dropped_rows"].items() if v) + ")"
                          if th["dropped_rows_total"] else ""))])
    lines += ["", f"Rates are over the wall-clock play time. The player was at most "
                  f"{_f(th['player_max_lag_s'])} s behind its schedule.", ""]
    lines += [f"- player: {w}" for w in th["player_warnings"]] + ([""] if th["player_warnings"] else [])
    lines += ["## Processes", ""]
    lines += _table(("process", "kind", "CPU % mean", "CPU % max", "RSS MiB mean", "RSS MiB max", "samples"),
                    ((name, p["kind"], _f(p["cpu_pct_mean"], ".0f"), _f(p["cpu_pct_max"], ".0f"),
                      _f(p["rss_mib_mean"], ".0f"), _f(p["rss_mib_max"], ".0f"), p["samples"])
                     for name, p in rep["processes"].items()))
    lines += ["", "CPU in % of one core, sampled once a second (psutil).", ""]
    if charts:
        lines += ["## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# charts


def write_charts(record: Mapping[str, Any], rep: Mapping[str, Any], out_dir: str | Path) -> list[str]:
    """PNG charts of one run: per service, calls per simulated second and mean latency per simulated minute,
    incident windows shaded, alerts marked by type. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    series: Mapping[str, Any] = record.get("series") or {}
    origin = record.get("start_unix_nano")
    sc = record["scenario"]
    services = [s for s in sc.get("services", []) if s in series] or sorted(series)
    if not services or origin is None:
        return []
    types = sorted({a["anomaly_type"] for a in rep["alert_list"]})
    palette = [plt.get_cmap("tab10")(i) for i in (1, 2, 3, 4, 5, 6, 8, 9, 0)]  # no grey (the latency line)
    colour = {t: palette[i % len(palette)] for i, t in enumerate(types)}
    fig, axes = plt.subplots(len(services), 1, figsize=(11, 1.9 * len(services) + 1.6), sharex=True, squeeze=False)
    duration_min = float(sc["duration_s"]) / 60
    for ax, svc in zip(axes[:, 0], services, strict=True):
        pts = series[svc].get("points", [])
        x = np.array([(p["t"] * NS - origin) / NS / 60 for p in pts], dtype=float)
        keep = (x >= -1) & (x <= duration_min + 1)
        calls = np.array([p["calls"] / 60 for p in pts], dtype=float)
        lat = np.array([p["latency_ms_mean"] if p["latency_ms_mean"] is not None else math.nan for p in pts],
                       dtype=float)
        ax.step(x[keep], calls[keep], where="post", color="black", lw=1.2)
        ax.set_ylabel("calls/s", fontsize=8)
        ax.set_ylim(bottom=0, top=max(1.0, float(np.nanmax(calls[keep], initial=0)) * 1.25))
        ax.set_title(svc, fontsize=9, loc="left", pad=2)
        ax2 = ax.twinx()
        ax2.step(x[keep], lat[keep], where="post", color="grey", lw=1, ls="--")
        ax2.set_ylabel("latency ms", fontsize=8, color="dimgrey")
        ax2.tick_params(labelsize=7, colors="dimgrey")
        finite = lat[keep][np.isfinite(lat[keep])]
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
            ax2.set_yscale("log")
        else:
            ax2.set_ylim(bottom=0, top=float(finite.max()) * 1.25 if finite.size else 1.0)
        ax.tick_params(labelsize=7)
        for inc in rep["incidents"]:
            if inc["target"].get("service") not in (None, svc):
                continue
            ax.axvspan(inc["start_s"] / 60, inc["end_s"] / 60, color="#6baed6" if inc["detected"] else "tab:red",
                       alpha=0.2, lw=0)
            ax.text(inc["start_s"] / 60, 0.97, f" {inc['id']}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top", ha="left", color="dimgrey")
        for a in rep["alert_list"]:  # a line, and a marker at a height of its type's own (coincident alerts)
            if a["service_name"] in (None, "", svc):
                c, x_min = colour[a["anomaly_type"]], a["sim_s"] / 60
                ax.axvline(x_min, color=c, lw=1.3, alpha=0.9, ls="-" if a["incidents"] else ":")
                ax.plot([x_min], [0.9 - 0.1 * (types.index(a["anomaly_type"]) % 8)], marker="v", ms=6, color=c,
                        transform=ax.get_xaxis_transform(), clip_on=False)
    axes[-1, 0].set_xlabel("simulated minutes since the scenario's start (one-minute event-time buckets)", fontsize=8)
    axes[-1, 0].set_xlim(0, duration_min)
    handles: list[Any] = [Line2D([], [], color="black", lw=1.2, label="calls/s (per simulated s)"),
                          Line2D([], [], color="grey", lw=1, ls="--", label="mean latency (ms)"),
                          Patch(color="#6baed6", alpha=0.3, label="incident, detected"),
                          Patch(color="tab:red", alpha=0.3, label="incident, missed")]
    handles += [Line2D([], [], color=colour[t], lw=1.3, marker="v", label=f"alert: {t}") for t in types]
    if any(not a["incidents"] for a in rep["alert_list"]):
        handles.append(Line2D([], [], color="dimgrey", lw=1.6, ls=":", label="dotted: false alert"))
    fig.suptitle(f"{sc['name']}: traffic, incidents and alerts per service", fontsize=10)
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    legend_rows = -(-len(handles) // 4)
    fig.tight_layout(rect=(0, (0.2 + 0.17 * legend_rows) / fig.get_figheight(), 1, 1))
    path = Path(out_dir) / "traffic.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]


def write_report(record: Mapping[str, Any], out_dir: str | Path, *, charts: bool = True) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the charts of one run into ``out_dir``; the report."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rep = build_report(record)
    files = write_charts(record, rep, out) if charts else []
    rep["charts"] = [Path(f).name for f in files]
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n")
    (out / "report.md").write_text(render_markdown(rep, files))
    return rep


# ---------------------------------------------------------------------------------------------
# suite


def suite_summary(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Figures over every scenario of a suite (``reports``: scenario name -> :func:`build_report` output)."""
    by_type: dict[str, dict[str, Any]] = {}
    latencies: list[float] = []
    total = matched = notifications = 0
    clean_false = 0
    clean_wall_h = clean_sim_h = 0.0
    kinds: dict[str, dict[str, float]] = {}
    spans = rows = play_s = 0.0
    for rep in reports.values():
        for inc in rep["incidents"]:
            t = by_type.setdefault(inc["type"], {"incidents": 0, "detected": 0})
            t["incidents"] += 1
            t["detected"] += int(inc["detected"])
            if inc["latency_s"] is not None:
                latencies.append(inc["latency_s"])
        al = rep["alerts"]
        total += al["total"]
        notifications += al.get("notifications", al["total"])
        matched += al["matched"]
        if rep["scenario"].get("clean"):
            clean_false += al["false"]
            clean_wall_h += al["wall_hours"]
            clean_sim_h += al["sim_hours"]
        for p in rep["processes"].values():
            k = kinds.setdefault(p["kind"], {"cpu_pct_max": 0.0, "rss_mib_max": 0.0})
            k["cpu_pct_max"] = max(k["cpu_pct_max"], p["cpu_pct_max"] or 0.0)
            k["rss_mib_max"] = max(k["rss_mib_max"], p["rss_mib_max"] or 0.0)
        th = rep["throughput"]
        spans += th["spans_sent"] or 0
        rows += th["rows_ingested"] or 0
        play_s += rep["wall_s"]["play"]
    for t in by_type.values():
        t["recall"] = t["detected"] / t["incidents"]
    n_inc = sum(t["incidents"] for t in by_type.values())
    return {
        "scenarios": list(reports),
        "recall_by_type": dict(sorted(by_type.items())),
        "recall": sum(t["detected"] for t in by_type.values()) / n_inc if n_inc else None,
        "incidents": n_inc,
        "detection_latency_s": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                                "max": max(latencies) if latencies else None, "n": len(latencies)},
        "alerts": total, "notifications": notifications, "matched_alerts": matched,
        "precision": matched / total if total else None,
        "clean": {"false_alerts": clean_false, "wall_hours": clean_wall_h, "sim_hours": clean_sim_h,
                  "false_per_wall_hour": clean_false / clean_wall_h if clean_wall_h else None,
                  "false_per_sim_hour": clean_false / clean_sim_h if clean_sim_h else None},
        "throughput": {"spans_per_s": spans / play_s if play_s else None,
                       "rows_ingested_per_s": rows / play_s if play_s else None},
        "processes_by_kind": kinds,
    }


def write_suite_chart(reports: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> str | None:
    """``latency.png``: detection latency of every incident of the suite (missed ones marked); its path."""
    rows = [(f"{name} / {inc['id']} ({inc['type']})", inc["latency_s"])
            for name, rep in reports.items() for inc in rep["incidents"]]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.3))
    y = np.arange(len(rows))[::-1]
    values = [v if v is not None else 0.0 for _, v in rows]
    ax.barh(y, values, color=["tab:blue" if v is not None else "tab:red" for _, v in rows], height=0.6)
    top = max(values, default=0.0) or 1.0
    for yi, (_, v) in zip(y, rows, strict=True):
        ax.text((v or 0.0) + top * 0.01, yi, "missed" if v is None else f"{v:.2f} s", va="center", fontsize=7,
                color="tab:red" if v is None else "black")
    ax.set_yticks(y, [label for label, _ in rows], fontsize=7)
    ax.set_xlim(0, top * 1.15)
    ax.set_xlabel("detection latency, s (incident injected → alert on RabbitMQ, wall clock)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("Detection latency per incident", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def render_suite_markdown(summary: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]],
                          header: str = "") -> str:
    lines = ["# LLM-Sentinel load-test suite", ""]
    if header:
        lines += [header, ""]
    lines += ["## Scenarios", ""]
    lines += _table(("scenario", "incidents detected", "alerts (false)", "notifications", "precision",
                     "latency p50 / max s", "spans/s", "rows ingested/s", "wall s", "report"),
                    ((name, f"{sum(i['detected'] for i in r['incidents'])}/{len(r['incidents'])}",
                      f"{r['alerts']['total']} ({r['alerts']['false']})",
                      r["alerts"].get("notifications", r["alerts"]["total"]), _f(r["alerts"]["precision"]),
                      f"{_f(r['detection_latency_s']['p50'])} / {_f(r['detection_latency_s']['max'])}",
                      _f(r["throughput"]["spans_per_s"], ",.0f"), _f(r["throughput"]["rows_ingested_per_s"], ",.0f"),
                      _f(r["wall_s"].get("run") or r["wall_s"]["total"], ".0f"), f"[{name}]({name}/report.md)")
                     for name, r in reports.items()))
    lines += ["", "## Recall per incident type", ""]
    lines += _table(("incident type", "detected / incidents", "recall"),
                    ((t, f"{v['detected']}/{v['incidents']}", _f(v["recall"]))
                     for t, v in summary["recall_by_type"].items()))
    lat, cl = summary["detection_latency_s"], summary["clean"]
    lines += ["", "## Overall", ""]
    lines += _table(("figure", "value"), [
        ("recall (all incidents)", f"{_f(summary['recall'])} ({summary['incidents']} incidents)"),
        ("detection latency p50 / p95 / max (s, injection → alert on RabbitMQ, wall)",
         f"{_f(lat['p50'])} / {_f(lat['p95'])} / {_f(lat['max'])} (n={lat['n']})"),
        ("precision (matched alerts / all alerts)", f"{_f(summary['precision'])} ({summary['matched_alerts']}/"
                                                    f"{summary['alerts']})"),
        ("notifications (an alert's first and its updates)", str(summary.get("notifications", summary["alerts"]))),
        ("false alerts on clean scenarios", f"{cl['false_alerts']}: {_f(cl['false_per_wall_hour'], '.1f')} per wall "
                                            f"hour, {_f(cl['false_per_sim_hour'], '.2f')} per simulated hour"),
        ("spans sent / s (wall, all scenarios)", _f(summary["throughput"]["spans_per_s"], ",.0f")),
        ("rows ingested / s (wall, all scenarios)", _f(summary["throughput"]["rows_ingested_per_s"], ",.0f")),
    ])
    lines += ["", "## Processes (max over the suite)", ""]
    lines += _table(("kind", "CPU % max (of one core)", "RSS MiB max"),
                    ((k, _f(v["cpu_pct_max"], ".0f"), _f(v["rss_mib_max"], ".0f"))
                     for k, v in summary["processes_by_kind"].items()))
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.report", description=__doc__.split("\n")[0])
    p.add_argument("run_json", help="a run record (run.json) written by loadtest.run")
    p.add_argument("--out", help="output directory [the run record's directory]")
    args = p.parse_args(argv)
    record = json.loads(Path(args.run_json).read_text())
    rep = write_report(record, args.out or Path(args.run_json).parent)
    print(render_markdown(rep, rep["charts"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
