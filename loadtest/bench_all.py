"""Every benchmark of issue 7 in one run, and one Markdown table of the headline figures with ratios.

    python -m loadtest.bench_all [--quick] [--json PATH] [--out DIR]

Runs, one after the other, each as its own process (so each pins its CPUs, starts and stops its
children, and cannot disturb the next), every output kept in ``--out`` (a temporary directory by
default; its path is printed):

1. ``loadtest.bench_sidecar`` -- spans/s of the sidecar pipeline and end to end against the raw
   protobuf-parse rate of the same payloads; RSS, export p99 and rows at 2,000 spans/s (shortened:
   15 s steady phases; ``--quick``: its own ``--quick``);
2. ``loadtest.bench_aggregator`` -- rows/s analysed and ingested + analysed end to end against the
   wire-decode rate;
3. Isolation Forest against scikit-learn (``loadtest.bench_iforest``'s functions): scoring
   throughput ratio on batches of 500 and 50,000 rows, and ROC AUC on the four tabular (``testdata/tabular``)
   datasets averaged over seeds as ``tests/test_isolation_forest.py`` does (20 seeds for
   mammography and satellite, 3 for shuttle and http);
4. ``loadtest.nab_benchmark`` -- NAB scores (NAB's own scoring rules) of the sidecar's detector
   against NAB's windowedGaussian, run side by side (full run: every file and detector;
   ``--quick``: the sidecar on the artificial files);
5. ``loadtest.bench_fleet`` -- 20 sidecars, one aggregator, 20,000 spans/s for 60 s: nothing
   dropped, detection latency on RabbitMQ; if that rate is not carried, 10,000 (then 5,000) spans/s for 30 s
   (``--quick``: 5 sidecars at 5,000 spans/s for 15 s).

A full run takes about 7 minutes, ``--quick`` about 2. The table goes to stdout (and ``--json``
holds every figure of every benchmark plus the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest import targets as T
from loadtest.bench_aggregator import machine_info
from loadtest.procs import ROOT, child_env

__all__ = ["AUC_SEEDS", "main", "render", "run_iforest_part"]

#: Seeds averaged per dataset for the AUC comparison, as tests/test_isolation_forest.py does.
AUC_SEEDS = {"23_mammography": 20, "30_satellite": 20, "32_shuttle": 3, "16_http": 3}
AUC_BOUND = T.IFOREST_AUC_TOLERANCE


# ---------------------------------------------------------------------------------------------
# the Isolation Forest part (a child process of its own)


def run_iforest_part(seconds: float, auc_seeds: dict[str, int]) -> dict[str, Any]:
    """Throughput of ours vs scikit-learn (``bench_iforest.bench_throughput``) and mean AUC per dataset."""
    import numpy as np
    from sklearn.ensemble import IsolationForest as SklearnIsolationForest  # type: ignore[import-untyped]
    from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

    from aggregator.analysis.forest.isolation_forest import IsolationForest
    from loadtest import bench_iforest as bi

    limit, note = bi.one_thread()
    with limit:
        throughput = bi.bench_throughput("32_shuttle", seconds, 0)
        auc = []
        for name, seeds in auc_seeds.items():
            X, y = bi.load(name)
            ours, theirs = [], []
            t = time.perf_counter()
            for seed in range(seeds):
                params = {"n_estimators": bi.N_ESTIMATORS, "max_samples": bi.MAX_SAMPLES, "random_state": seed}
                ours.append(roc_auc_score(y, -IsolationForest(**params).fit(X).score_samples(X)))
                theirs.append(roc_auc_score(y, -SklearnIsolationForest(**params, n_jobs=1).fit(X).score_samples(X)))
            auc.append({"dataset": name, "rows": len(X), "seeds": seeds, "ours_auc": float(np.mean(ours)),
                        "sklearn_auc": float(np.mean(theirs)), "difference": float(np.mean(ours) - np.mean(theirs)),
                        "max_single_seed_difference": float(np.max(np.abs(np.subtract(ours, theirs)))),
                        "seconds": time.perf_counter() - t})
    return {"threads": note, "fit_dataset": "32_shuttle", "throughput": throughput, "auc": auc}


# ---------------------------------------------------------------------------------------------
# running the parts


def _steps(quick: bool, out: Path) -> list[tuple[str, list[str], float]]:
    """(name, argv, timeout in s) of each part; each writes ``out/<name>.json``."""
    py = sys.executable

    def j(name: str) -> list[str]:
        return ["--json", str(out / f"{name}.json")]

    if quick:
        return [
            ("sidecar", [py, "-m", "loadtest.bench_sidecar", "--quick", *j("sidecar")], 300.0),
            ("aggregator", [py, "-m", "loadtest.bench_aggregator", "--quick", *j("aggregator")], 300.0),
            ("iforest", [py, "-m", "loadtest.bench_all", "--iforest-part", "--quick", *j("iforest")], 300.0),
            ("nab", [py, "-m", "loadtest.nab_benchmark", "--files", "art_", "--detectors", "sidecar,sidecar_graded",
                     *j("nab")], 300.0),
            ("fleet", [py, "-m", "loadtest.bench_fleet", "--quick", *j("fleet")], 300.0),
        ]
    return [
        ("sidecar", [py, "-m", "loadtest.bench_sidecar", "--steady-seconds", "15", "--payloads", "100",
                     *j("sidecar")], 600.0),
        ("aggregator", [py, "-m", "loadtest.bench_aggregator", *j("aggregator")], 600.0),
        ("iforest", [py, "-m", "loadtest.bench_all", "--iforest-part", *j("iforest")], 600.0),
        ("nab", [py, "-m", "loadtest.nab_benchmark", *j("nab")],
         900.0),
        ("fleet", [py, "-m", "loadtest.bench_fleet", "--step-down", "10000,5000", "--step-seconds", "30", *j("fleet")],
         900.0),
    ]


def run_steps(steps: Sequence[tuple[str, list[str], float]], out: Path, say: Callable[[str], None]
              ) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    for k, (name, argv, timeout) in enumerate(steps, 1):
        log = out / f"{name}.log"
        t = time.perf_counter()
        load = os.getloadavg()[0]
        say(f"[{k}/{len(steps)}] {name}: {' '.join(Path(a).name if a == sys.executable else a for a in argv[1:])}")
        status: int | str
        with open(log, "wb") as f:
            try:
                status = subprocess.run(argv, cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL, stdout=f,
                                        stderr=subprocess.STDOUT, timeout=timeout, check=False).returncode
            except subprocess.TimeoutExpired:  # subprocess.run kills the child (its own pid) on timeout
                status = f"timed out after {timeout:.0f}s"
        seconds = time.perf_counter() - t
        figures: dict[str, Any] = {}
        path = out / f"{name}.json"
        if path.exists():
            try:
                figures = json.loads(path.read_text())
            except ValueError as e:
                figures = {"error": f"unreadable JSON: {e}"}
        parts[name] = {"status": status, "seconds": seconds, "load_average_at_start": load, "log": str(log),
                       "figures": figures}
        say(f"      done in {seconds:.0f}s, exit status {status}" + ("" if figures else ", NO FIGURES")
            + f" (log: {log})")
    return parts


# ---------------------------------------------------------------------------------------------
# the table


def _get(d: Any, *path: Any) -> Any:
    for p in path:
        found = (isinstance(d, dict) and p in d) or (isinstance(d, list) and isinstance(p, int)
                                                      and -len(d) <= p < len(d))
        if found:
            d = d[p]
        else:
            return None
    return d


def _n(x: Any, unit: str = "", digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}{unit}"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def _cmp(x: Any, target: float, *, below: bool = False) -> bool | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return bool(x < target) if below else bool(x >= target)


def render(parts: dict[str, Any], machine: dict[str, Any], *, quick: bool) -> str:
    """The Markdown report: one table of headline figures, then the machine."""
    rows: list[tuple[str, str, str, str, str, str]] = []

    def row(area: str, figure: str, measured: str, ratio: str = "", target: str = "", verdict: str = "") -> None:
        rows.append((area, figure, measured, ratio, target, verdict))

    # -- sidecar
    s = _get(parts, "sidecar", "figures") or {}
    parse = _get(s, "parse", "spans_per_s")
    row("sidecar", "raw protobuf parse of the same payloads, 1 thread (reference)", _n(parse, " spans/s"), "1")
    for key, label in (("pipeline", "pipeline in process (parse → sealed batches), 1 core"),
                       ("grpc", "end to end over OTLP/gRPC, sidecar on 1 core")):
        v = _get(s, key, "spans_per_s")
        row("sidecar", label, _n(v, " spans/s"), f"{v / parse:.3f} × parse" if v and parse else "n/a",
            f"≥ {T.SIDECAR_SPANS_PER_S:,} spans/s", _verdict(_cmp(v, T.SIDECAR_SPANS_PER_S)))
    st, nul = _get(s, "steady"), _get(s, "steady_null")
    n_req = _get(s, "settings", "steady_spans_per_request")
    if st:
        row("sidecar", "RSS at 2,000 spans/s (max)", _n(st.get("rss_max_mib"), " MiB", 1), "",
            f"< {T.SIDECAR_RSS_MIB:g} MiB", _verdict(_cmp(st.get("rss_max_mib"), T.SIDECAR_RSS_MIB, below=True)))
        floor = f"null gRPC server p99 {_n(_get(nul, 'p99_ms'), ' ms', 1)}" if nul else ""
        row("sidecar", f"OTLP export p99 at 2,000 spans/s ({n_req} spans/request)",
            f"{_n(st.get('p99_ms'), ' ms', 1)} (p50 {_n(st.get('p50_ms'), ' ms', 1)})", floor,
            f"< {T.SIDECAR_EXPORT_P99_MS:g} ms", _verdict(_cmp(st.get("p99_ms"), T.SIDECAR_EXPORT_P99_MS, below=True)))
        row("sidecar", "rows at the aggregator / spans sent", f"{_n(st.get('rows_received'))} / "
            f"{_n(st.get('spans_sent'))}", "", "equal",
            _verdict(st.get("rows_received") == st.get("spans_sent") if st.get("spans_sent") else None))

    # -- aggregator
    a = _get(parts, "aggregator", "figures") or {}
    dec = _get(a, "decode", "rows_per_s")
    row("aggregator", "wire decode (sentinel.wire.decode), 1 thread (reference)", _n(dec, " rows/s"), "1")
    for key, label, target in (
            ("analysis", "analysis: every consumer on pre-decoded batches, 1 thread", T.AGGREGATOR_ANALYSIS_ROWS_PER_S),
            ("e2e", "end to end: POST /v1/ingest → journal → analysed, aggregator on 1 core",
             T.AGGREGATOR_E2E_ROWS_PER_S)):
        v = _get(a, key, "rows_per_s")
        row("aggregator", label, _n(v, " rows/s"), f"{v / dec:.4f} × decode" if v and dec else "n/a",
            f"≥ {target:,} rows/s", _verdict(_cmp(v, target)))
    cpu = _get(a, "analysis", "cpu_rows_per_s")
    if cpu:
        row("aggregator", "… analysis in its thread's CPU time (forest fits, other work excluded)", _n(cpu, " rows/s"),
            f"{cpu / dec:.4f} × decode" if dec else "n/a")
    ing = _get(a, "e2e", "ingest_rows_per_s")
    if ing:
        row("aggregator", "… of which ingest alone (acknowledged = durably stored)", _n(ing, " rows/s"),
            f"{ing / dec:.4f} × decode" if dec else "n/a")

    # -- Isolation Forest
    f = _get(parts, "iforest", "figures") or {}
    for t in f.get("throughput", []):
        size = t["batch_rows"]
        row("Isolation Forest", f"score_samples, batches of {size:,} rows (ours vs scikit-learn, 1 thread)",
            f"{_n(t['ours_rows_per_s'], ' rows/s')} vs {_n(t['sklearn_rows_per_s'], ' rows/s')}",
            f"{t['ratio']:.2f} × scikit-learn", f"≥ {T.IFOREST_RATIO_500:g}×" if size == 500 else "",
            _verdict(t["ratio"] >= T.IFOREST_RATIO_500) if size == 500 else "")
    for x in f.get("auc", []):
        row("Isolation Forest", f"ROC AUC {x['dataset']} (mean of {x['seeds']} seeds)",
            f"{x['ours_auc']:.4f} vs {x['sklearn_auc']:.4f}", f"{x['difference']:+.4f}",
            f"difference within ±{AUC_BOUND}",
            _verdict(abs(x["difference"]) <= AUC_BOUND))

    # -- NAB
    nab = _get(parts, "nab", "figures") or {}
    ratios = nab.get("ratio_to_windowedGaussian") or {}
    for det, by_profile in (nab.get("scores") or {}).items():
        if det == "null":
            continue
        std, low_fp = by_profile["standard"]["normalized"], by_profile["reward_low_FP_rate"]["normalized"]
        r = ratios.get(det) or {}
        ratio = "" if det == "windowedGaussian" else (
            f"{r.get('standard') or 0:.2f} × (standard), {r.get('reward_low_FP_rate') or 0:.2f} × (low FP)")
        nab_target = f"≥ {T.NAB_RATIO_STANDARD:g} × standard, > 1 × low FP" if det.startswith("sidecar") else ""
        verdict = _verdict((r.get("standard") or 0) >= T.NAB_RATIO_STANDARD
                           and (r.get("reward_low_FP_rate") or 0) > 1) if nab_target else ""
        row("NAB score", f"{det} (0 null, 100 perfect)", f"standard {std:.1f}, reward_low_FP {low_fp:.1f}", ratio,
            nab_target, verdict)

    # -- fleet
    fl = _get(parts, "fleet", "figures") or {}
    for run in [fl, *fl.get("step_down", [])]:
        if "traffic" not in run:
            continue
        cfg, tr, d, res = run["settings"], run["traffic"], run["detection"], run["resources"]
        at = f"{cfg['sidecars']} sidecars × {cfg['rate'] / cfg['sidecars']:,.0f} spans/s for {cfg['seconds']:g} s"
        full = cfg["sidecars"] == 20 and cfg["rate"] == 20_000
        row("fleet", f"{at}: achieved, nothing dropped",
            f"{_n(tr['achieved_spans_per_s'], ' spans/s')}; {_n(tr['spans_acked'])} spans acked, "
            f"{_n(run['aggregator']['rows_ingested'])} rows ingested, {run['sidecars']['dropped_rows']} dropped",
            f"{tr['achieved_ratio']:.3f} × target", "nothing dropped" + (" at 20 × 1,000 spans/s" if full else ""),
            _verdict(bool(run["nothing_dropped"] and run["kept_rate"])))
        row("fleet", f"{at}: detection latency, error burst → alert on {d['channel']}",
            f"p50 {_n(d['p50_s'], ' s', 2)}, p95 {_n(d['p95_s'], ' s', 2)}, max {_n(d['max_s'], ' s', 2)} "
            f"({d['detected']}/{d['injections']} detected)", f"raised: p95 {_n(d['raised_p95_s'], ' s', 2)}",
            f"p95 < {T.DETECTION_LATENCY_P95_S:g} s",
            _verdict(d["detected"] == d["injections"] > 0 and _cmp(d["p95_s"], T.DETECTION_LATENCY_P95_S, below=True)))
        row("fleet", f"{at}: CPU and RSS",
            f"aggregator {res['aggregator']['cpu_cores_total']:.2f} cores, {res['aggregator']['rss_max_mib_one']:.0f}"
            f" MiB; sidecars {res['sidecars']['cpu_cores_total']:.2f} cores in all, "
            f"{res['sidecars']['rss_max_mib_one']:.0f} MiB max each; machine {res['machine_busy_pct']:.0f} % busy",
            f"analysis done {run['aggregator']['analysis_done_after_drain_s']:.1f} s after drain")
    if fl.get("step_down"):
        h = fl.get("highest_carried_rate")
        row("fleet", f"highest rate carried here (nothing dropped, rate kept, detection p95 < "
            f"{T.DETECTION_LATENCY_P95_S:g} s)", _n(h, " spans/s") if h else "none of the rates tried", "",
            f"{T.FLEET_SPANS_PER_S:,} spans/s", _verdict(bool(h and h >= T.FLEET_SPANS_PER_S)))
    if quick:
        row("fleet", "20 sidecars × 1,000 spans/s", "not run (--quick)", "",
            f"nothing dropped, p95 < {T.DETECTION_LATENCY_P95_S:g} s", "n/a")

    head = ("area", "figure", "measured", "ratio / reference", "target", "verdict")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]
    pk = machine.get("packages", {})
    la0 = " ".join(f"{x:.2f}" for x in machine.get("load_average", []))
    la1 = " ".join(f"{x:.2f}" for x in machine.get("load_average_at_end", []))
    lines += [
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cpus')} CPUs ({machine.get('cpus_usable')} usable); "
        f"Python {machine.get('python')} ({machine.get('implementation')}); " + ", ".join(
            f"{k} {v}" for k, v in pk.items()) + f"; {machine.get('platform')}.",
        f"Load average (1, 5, 15 min): {la0} at start, {la1} at end; per part at its start: " + ", ".join(
            f"{name} {p['load_average_at_start']:.2f}" for name, p in parts.items()) + ".",
        "Run time: " + ", ".join(f"{name} {p['seconds']:.0f} s" for name, p in parts.items())
        + f"; {sum(p['seconds'] for p in parts.values()):.0f} s in all" + (" (--quick)" if quick else "") + ".",
    ]
    failed = [f"{name} (exit status {p['status']})" for name, p in parts.items() if p["status"] not in (0, 1)]
    if failed:
        lines.append("Parts that failed (see their logs): " + ", ".join(failed) + ".")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_all", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short versions of every part (about 2 minutes)")
    p.add_argument("--json", metavar="PATH", help="also write every figure of every part as JSON to PATH")
    p.add_argument("--out", metavar="DIR", help="where each part's log and JSON go [a new temporary directory]")
    p.add_argument("--iforest-part", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.iforest_part:
        seeds = {"23_mammography": 3, "30_satellite": 3, "32_shuttle": 1, "16_http": 1} if args.quick else AUC_SEEDS
        result = run_iforest_part(0.5 if args.quick else 2.0, seeds)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0

    def say(text: str) -> None:
        print(text, flush=True)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_all_"))
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    say("LLM-Sentinel benchmarks (issue 7)" + (" --quick" if args.quick else "") + f"; logs and JSON in {out}")
    say(f"  load average at start: {' '.join(f'{x:.2f}' for x in machine['load_average'])}")
    t = time.perf_counter()
    parts = run_steps(_steps(args.quick, out), out, say)
    machine["load_average_at_end"] = list(os.getloadavg())
    table = render(parts, machine, quick=args.quick)
    say("")
    say(table)
    say(f"\n(total {time.perf_counter() - t:.0f} s)")
    (out / "summary.md").write_text(table + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "parts": parts}, indent=2, default=str) + "\n")
    return 0 if all(p["status"] in (0, 1) and p["figures"] for p in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
