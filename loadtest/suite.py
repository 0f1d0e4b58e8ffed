"""The load-test suite: every scenario in turn, one report each, and a summary of them all.

    python -m loadtest.suite                      # standard: loadtest/scenarios/*.yaml except quick*.yaml
    python -m loadtest.suite --quick              # quick.yaml + quick-clean.yaml; exit 1 on a miss or false alarm
    python -m loadtest.suite --out DIR            # where reports go [loadtest/reports; --quick: loadtest/reports/quick]
    python -m loadtest.suite --scenarios loadtest/scenarios/a.yaml ...   # an explicit list
    python -m loadtest.suite --mode sdk-grpc      # send through the OpenTelemetry SDK instead of raw protobuf
    python -m loadtest.suite --jobs 2             # two scenarios at a time [--quick: 2, else 1]
    python -m loadtest.suite --quick --forward summaries   # sidecars in bandwidth mode (sidecar/README.md)

Each scenario runs on fresh processes (``loadtest.run``: aggregator, sidecars, a RabbitMQ exchange
of its own) and gets ``OUT/<scenario>/`` (``report.md``, ``report.json``, ``run.json``,
``traffic.png``). The suite writes ``OUT/README.md`` (recall per incident type, detection latency
p50/p95 over all incidents, false alerts per hour on the clean scenarios, precision, throughput,
max CPU and RSS per kind of process, one line per scenario), ``OUT/suite.json`` and
``OUT/latency.png`` (detection latency of every incident).

The quick suite runs its two scenarios at the same time (``--jobs 2``: each is 80 s of play, and
together they use well under one of the two cores); the standard suite runs one at a time, so that
each scenario's CPU, RSS and latency figures are its own. In concurrent runs the ``loadgen`` row of
each report is this one process, which plays both.

Exit status: 1 when a run failed (a process did not start, the broker was unreachable, …); with
``--quick`` also when an incident of a non-clean scenario went undetected or a clean scenario
raised any alert. Budgets on this project's 2-core machine: quick ≤ 2 minutes, standard ≤ 10.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtest.procs import ROOT
from loadtest.report import render_suite_markdown, suite_summary, write_suite_chart
from loadtest.run import DRAIN_MIN_S, MODES, QUICK_DRAIN_MIN_S, run_scenario, summary_line
from loadtest.scenario import Scenario, load_scenario

__all__ = ["QUICK_SCENARIOS", "SCENARIO_DIR", "main", "quick_failures", "run_suite", "standard_scenarios"]

SCENARIO_DIR = ROOT / "loadtest" / "scenarios"
QUICK_SCENARIOS = ("quick.yaml", "quick-clean.yaml")
STARTUP_ALLOWANCE_S = 6.0  # start-up, metrics, stop: per scenario, for the time estimate only


def standard_scenarios(directory: Path = SCENARIO_DIR) -> list[Path]:
    """Every scenario file of ``directory`` except the quick ones, by name."""
    return sorted(p for p in directory.glob("*.yaml") if not p.name.startswith("quick"))


def quick_failures(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """What makes ``--quick`` fail: run errors, undetected incidents, and any alert on a clean scenario."""
    out = []
    for name, rep in reports.items():
        out += [f"{name}: run failed: {e}" for e in rep["errors"]]
        out += [f"{name}: incident {i['id']} ({i['type']}) not detected" for i in rep["incidents"] if not i["detected"]]
        if rep["scenario"].get("clean") and rep["alerts"]["total"]:
            kinds = ", ".join(f"{t} x{n}" for t, n in rep["alerts"]["by_type"].items())
            out.append(f"{name}: clean control raised {rep['alerts']['total']} alert(s): {kinds}")
    return out


def estimate_s(scenarios: Sequence[Scenario], quick: bool, jobs: int = 1) -> float:
    """Rough wall seconds of a suite (scenarios of similar length when ``jobs`` > 1)."""
    drain = QUICK_DRAIN_MIN_S if quick else DRAIN_MIN_S
    total = sum(s.wall_seconds + max(drain, s.grace_s / s.speedup) + STARTUP_ALLOWANCE_S for s in scenarios)
    return total / max(1, min(jobs, len(scenarios)))


async def run_suite(paths: Sequence[Path], out: Path, *, quick: bool = False, mode: str = "raw", jobs: int = 1,
                    forward: str = "", say: Callable[[str], None] = lambda s: None
                    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Run the scenarios of ``paths`` into ``out/<name>/``, ``jobs`` at a time; write the summary; (summary,
    reports). Concurrent runs share the CPUs and this process (the load generator of both). ``forward``
    (``rows`` or ``summaries``) overrides every scenario's sidecar ``forward`` setting."""
    scenarios = [load_scenario(p) for p in paths]  # all validated before anything runs
    if forward:
        # Compressed time: the summaries' flush period is a wall-clock window like the others, so it is
        # divided by the speedup too (10 s in production, a third of a second at 30x).
        scenarios = [dataclasses.replace(sc, sidecar={
            **sc.sidecar, "forward": forward,
            "summaries": {"flush_s": 10.0 / sc.speedup, **sc.sidecar.get("summaries", {})}}) for sc in scenarios]
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise ValueError(f"scenario names must be unique: {names}")
    out.mkdir(parents=True, exist_ok=True)
    say(f"suite: {len(scenarios)} scenario(s), {jobs} at a time, about {estimate_s(scenarios, quick, jobs) / 60:.1f} "
        f"min; reports in {out}")
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    slots = asyncio.Semaphore(max(1, jobs))

    async def one(sc: Scenario) -> dict[str, Any]:
        async with slots:
            rep = await run_scenario(sc, out / sc.name, mode=mode, quick=quick, say=say)
        say(f"[{sc.name}] {summary_line(rep)}")
        return rep

    # Longest first when several run at once (the suite ends sooner); reports stay in file order.
    order = sorted(scenarios, key=lambda sc: -sc.wall_seconds) if jobs > 1 else scenarios
    done = dict(zip((sc.name for sc in order), await asyncio.gather(*(one(sc) for sc in order)), strict=True))
    reports = {sc.name: done[sc.name] for sc in scenarios}
    wall_s = time.monotonic() - t0
    summary = suite_summary(reports)
    summary.update({"quick": quick, "mode": mode, "forward": forward or "rows", "jobs": jobs, "wall_s": wall_s,
                    "machine": _machine(load0),
                    "scenario_files": [str(Path(p).resolve().relative_to(ROOT)) if Path(p).resolve().is_relative_to(
                        ROOT) else str(p) for p in paths]})
    if quick:
        summary["quick_failures"] = quick_failures(reports)
    chart = write_suite_chart(reports, out)
    m = summary["machine"]
    concurrent = f", {jobs} at a time" if jobs > 1 else ""
    command = "python -m loadtest.suite" + (" --quick" if quick else "") + (f" --jobs {jobs}" if jobs > 1 else "") \
        + ("" if mode == "raw" else f" --mode {mode}") + (f" --forward {forward}" if forward else "")
    header = (f"{'Quick' if quick else 'Standard'} suite, mode `{mode}`, forward `{forward or 'rows'}`, "
              f"{len(reports)} scenario(s){concurrent} in "
              f"{wall_s:.0f} s wall on {m['cpu_model']} ({m['cpus']} CPUs), Python {m['python']}; 1-minute load "
              f"average {m['load_average_at_start']:.2f} at start, {m['load_average_at_end']:.2f} at end. "
              f"Command: `{command}`. Matching rule and figure definitions: `loadtest/report.py`.")
    text = render_suite_markdown(summary, reports, header)
    if chart:
        text += f"\n![detection latency per incident]({Path(chart).name})\n"
    if quick:
        fails = summary["quick_failures"]
        text += "\n## Quick checks\n\n" + ("\n".join(f"- FAIL: {f}" for f in fails) if fails else
                                             "All incidents detected; no alert on the clean control.") + "\n"
    (out / "README.md").write_text(text)
    (out / "suite.json").write_text(json.dumps({"summary": summary, "reports": reports}, indent=1, default=str) + "\n")
    return summary, reports


def _machine(load0: float) -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu_model": model, "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_start": load0, "load_average_at_end": os.getloadavg()[0]}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.suite", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{' + '.join(QUICK_SCENARIOS)}; exit 1 on a missed "
                                                        f"incident or an alert on the clean control")
    p.add_argument("--out", help="report directory [loadtest/reports, or loadtest/reports/quick with --quick]")
    p.add_argument("--scenarios", nargs="+", metavar="FILE", help="scenario files to run instead of the default list")
    p.add_argument("--mode", choices=MODES, default="raw", help="how spans are sent [raw]")
    p.add_argument("--jobs", type=int, help="scenarios run at the same time [2 with --quick, else 1: a scenario's "
                                            "CPU, RSS and latency figures are its own only when it runs alone]")
    p.add_argument("--forward", choices=("rows", "summaries"), default="",
                   help="the sidecars' forward setting, for every scenario [each scenario's own, default rows]")
    args = p.parse_args(argv)
    jobs = args.jobs or (2 if args.quick else 1)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children

    if sys.platform != "win32":
        signal.signal(signal.SIGTERM, on_sigterm)
    if args.scenarios:
        paths = [Path(s) for s in args.scenarios]
    elif args.quick:
        paths = [SCENARIO_DIR / n for n in QUICK_SCENARIOS]
    else:
        paths = standard_scenarios()
    if not paths:
        print(f"no scenario files in {SCENARIO_DIR}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else ROOT / "loadtest" / "reports" / ("quick" if args.quick else "")
    summary, reports = asyncio.run(run_suite(paths, out, quick=args.quick, mode=args.mode, jobs=jobs,
                                             forward=args.forward, say=lambda s: print(s, flush=True)))
    print(f"suite: {len(reports)} scenario(s) in {summary['wall_s']:.0f} s; summary: {out / 'README.md'}")
    failed = [f"{name}: {e}" for name, rep in reports.items() for e in rep["errors"]]
    if args.quick:
        failed = summary["quick_failures"]
    for f in failed:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
