"""The Isolation Forest on a scenario's traffic: what scoring every row finds, and what sampling keeps.

    python -m loadtest.bench_forest [loadtest/scenarios/forest.yaml] [--sample-rows 128] [--json PATH]

A scenario's calls (``loadtest.traffic``, the same seeded traffic ``loadtest.run`` plays) go through
the sidecar's extraction into feature rows, cut into batches of ``--rows-per-batch`` in event
order, and are fed in process to two :class:`~aggregator.analysis.forest.consumer.ForestConsumer`
(the aggregator's forest, defaults but a fixed seed; every fit waited for, so both see the same
forests at the same rows): one scoring every row (``score_sample_rows: 0``), one the sample.
Reported for each:

* **cost**: thread CPU seconds of ``consume`` and rows/s (the fits, on their own thread, excluded);
* **detection**: the incidents' rows (calls of an incident's target inside its window) and the
  other rows flagged as ``multivariate_outlier`` (candidates), and those at or above the alert
  floor ``alerts.min_confidence_by_type.multivariate_outlier`` (0.8 by default): per incident, the
  share of its rows flagged and the minutes of it with at least one flagged row, against the
  rate on rows outside incidents (what the forest would page on clean traffic);
* **explanations** (``context.forest``, what the forest adds to other detections): for every
  (service, model) and simulated minute, the explanation a one-minute detection there would get,
  from each consumer: how often the sampled one has one when the full one has, the same first
  feature, and its estimated outlier count against the full count; and of the windows where the
  full forest found five outliers or more (a window worth explaining), the share the sampled one
  explains with the same first feature.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.forest.consumer import ANOMALY_TYPE, ForestConfig, ForestConsumer
from loadtest.scenario import Scenario, load_scenario
from loadtest.text import say_table
from loadtest.traffic import TrafficModel
from sentinel.model import FeatureBatch
from sentinel.wire import WireBatch
from sidecar.extract import ExtractConfig, Extractor
from sidecar.otlp_lite import parse_traces

__all__ = ["Rows", "main", "measure", "scenario_rows"]

DEFAULT_SCENARIO = Path(__file__).parent / "scenarios" / "forest.yaml"
START_UNIX_NANO = 1_800_000_000 * 10**9
NS = 1_000_000_000
ALERT_FLOOR = 0.8  # alert_min_confidence_by_type.multivariate_outlier (aggregator/config.py)
BUSY = 5  # outliers in a window that make it one worth explaining


@dataclass
class Rows:
    """A scenario's feature rows in event order, and which incident each belongs to (-1: none)."""

    batch: FeatureBatch
    incident: np.ndarray


def scenario_rows(scenario: Scenario, *, block_s: float = 10.0) -> Rows:
    """Every call of ``scenario`` as the sidecar extracts it, in event order, with its incident."""
    model = TrafficModel(scenario)
    extractor = Extractor(ExtractConfig())
    parts: list[FeatureBatch] = []
    t = 0.0
    while t < scenario.duration_s:
        for request in model.requests(t, min(t + block_s, scenario.duration_s), START_UNIX_NANO).values():
            parts.append(FeatureBatch.from_rows(extractor.extract(parse_traces(request.SerializeToString())).rows))
        t += block_s
    b = FeatureBatch.concat(parts)
    order = np.argsort(b.numeric["time_unix_nano"], kind="stable")
    idx = order.tolist()
    b = FeatureBatch(n=b.n, numeric={k: v[order] for k, v in b.numeric.items()},
                     strings={k: [v[i] for i in idx] for k, v in b.strings.items()})
    incident = np.full(b.n, -1)
    t_s = (b.numeric["time_unix_nano"] - START_UNIX_NANO) / NS
    for k, inc in enumerate(scenario.incidents):
        hit = (t_s >= inc.start_s) & (t_s < inc.end_s)
        for column, value in (("service", inc.target.get("service")), ("request_model", inc.target.get("model"))):
            if value is not None:
                hit &= np.array([v == value for v in b.strings[column]])
        incident[hit] = k
    return Rows(b, incident)


def _feed(forest: ForestConsumer, rows: Rows, rows_per_batch: int) -> tuple[float, list[Candidate]]:
    found: list[Candidate] = []
    cpu = 0.0
    for seq, lo in enumerate(range(0, rows.batch.n, rows_per_batch)):
        hi = min(lo + rows_per_batch, rows.batch.n)
        part = FeatureBatch(n=hi - lo, numeric={k: v[lo:hi] for k, v in rows.batch.numeric.items()},
                            strings={k: v[lo:hi] for k, v in rows.batch.strings.items()})
        c0 = time.thread_time()
        found.extend(forest.consume(WireBatch(sidecar="bench", seq=seq, batch=part), arrival_ns=0))
        cpu += time.thread_time() - c0
        forest.wait_for_fits()  # both consumers see the same forests at the same rows
    return cpu, found


def _detection(found: list[Candidate], rows: Rows, scenario: Scenario) -> dict[str, Any]:
    where = {t: i for i, t in enumerate(rows.batch.strings["trace_id"])}
    flagged = [(where[c.context["trace_ids"][0]], c.confidence) for c in found
               if c.anomaly_type == ANOMALY_TYPE and c.context["trace_ids"]]
    outside = int((rows.incident < 0).sum())
    out: dict[str, Any] = {}
    for floor, name in ((0.0, "any"), (ALERT_FLOOR, "alert_floor")):
        idx = np.array([i for i, conf in flagged if conf >= floor], dtype=np.int64)
        inc = rows.incident[idx] if idx.size else np.empty(0, dtype=np.int64)
        per: dict[str, Any] = {}
        for k, incident in enumerate(scenario.incidents):
            total = int((rows.incident == k).sum())
            t_min = ((rows.batch.numeric["time_unix_nano"][idx[inc == k]] - START_UNIX_NANO) // (60 * NS))
            per[incident.id] = {"rows": total, "flagged": int((inc == k).sum()),
                                "share_flagged": float((inc == k).sum() / total) if total else 0.0,
                                "minutes_flagged": int(np.unique(t_min).size),
                                "minutes": round((incident.end_s - incident.start_s) / 60)}
        out[name] = {"incidents": per, "outside_rows": outside, "outside_flagged": int((inc < 0).sum()),
                     "outside_share_flagged": float((inc < 0).sum() / outside) if outside else 0.0}
    return out


def _explanations(full: ForestConsumer, sampled: ForestConsumer, rows: Rows) -> dict[str, Any]:
    times = rows.batch.numeric["time_unix_nano"]
    keys = sorted({(s, m) for s, m in zip(rows.batch.strings["service"], rows.batch.strings["request_model"],
                                          strict=True)}, key=str)
    first, last = int(times.min()) // (60 * NS), int(times.max()) // (60 * NS)
    both = only_full = only_sampled = same_feature = 0
    ratios: list[float] = []
    busy = busy_kept = 0  # windows where the full forest found BUSY outliers or more
    for service, model in keys:
        for minute in range(first, last + 1):
            probe = Candidate(anomaly_type="probe", service=service, model=model, detection_method="probe",
                              confidence=1.0, metric="-", value=0.0, baseline=0.0, threshold=0.0,
                              deviation_sigma=0.0, window_start=minute * 60 * NS, window_end=(minute + 1) * 60 * NS,
                              context={})
            a, b = full.explain(probe), sampled.explain(probe)
            if a is not None and a["outliers"] >= BUSY:
                busy += 1
                busy_kept += b is not None and a["features"][:1] == b["features"][:1]
            if a is not None and b is not None:
                both += 1
                same_feature += a["features"][:1] == b["features"][:1]
                ratios.append(b.get("estimated_outliers", b["outliers"]) / a["outliers"])
            elif a is not None:
                only_full += 1
            elif b is not None:
                only_sampled += 1
    r = np.array(ratios) if ratios else np.array([np.nan])
    windows = both + only_full
    return {"windows_explained_full": windows, "windows_explained_sampled": both + only_sampled,
            "kept": both / windows if windows else float("nan"), "extra": only_sampled,
            "same_first_feature": same_feature / both if both else float("nan"),
            "busy_windows": busy, "busy_kept_same_feature": busy_kept / busy if busy else float("nan"),
            "estimate_ratio_median": float(np.median(r)),
            "estimate_ratio_p10_p90": [float(np.quantile(r, 0.1)), float(np.quantile(r, 0.9))]}


def measure(scenario: Scenario, *, sample_rows: int, rows_per_batch: int = 1024, seed: int = 7) -> dict[str, Any]:
    """Both consumers on ``scenario``'s rows; every figure of the module docstring."""
    t = time.perf_counter()
    rows = scenario_rows(scenario)
    built = time.perf_counter() - t
    result: dict[str, Any] = {"scenario": scenario.name, "rows": rows.batch.n, "rows_per_batch": rows_per_batch,
                              "rows_built_s": built}
    consumers = {}
    data_dir = tempfile.mkdtemp(prefix="bench_forest_")  # never written: nothing is snapshotted
    for name, k in (("full", 0), ("sampled", sample_rows)):
        forest = ForestConsumer(replace(ForestConfig(), random_state=seed, score_sample_rows=k,
                                        max_candidates_per_batch=rows_per_batch), data_dir)
        cpu, found = _feed(forest, rows, rows_per_batch)
        consumers[name] = forest
        result[name] = {"score_sample_rows": k, "cpu_seconds": cpu, "rows_per_s": rows.batch.n / cpu,
                        "rows_scored": forest.rows_scored, "candidates": len(found),
                        "detection": _detection(found, rows, scenario)}
    result["explanations"] = _explanations(consumers["full"], consumers["sampled"], rows)
    for forest in consumers.values():
        forest.shutdown()
    return result


def report(r: dict[str, Any], say: Any) -> None:
    rows = []
    for name in ("full", "sampled"):
        v = r[name]
        rows.append((f"{name} (score_sample_rows {v['score_sample_rows']})", f"{v['rows_per_s']:,.0f}",
                     f"{v['rows_scored']:,}", f"{v['candidates']:,}"))
    say_table(f"Isolation Forest on {r['scenario']} ({r['rows']:,} rows, batches of {r['rows_per_batch']})",
              ("consumer", "rows/s (thread CPU)", "rows scored", "candidates"), rows, say)
    det = []
    for name in ("full", "sampled"):
        for floor in ("any", "alert_floor"):
            d = r[name]["detection"][floor]
            cells = [f"{v['share_flagged']:.3f} ({v['minutes_flagged']}/{v['minutes']} min)"
                     for v in d["incidents"].values()]
            det.append((name, "any" if floor == "any" else f">= {ALERT_FLOOR}", *cells,
                        f"{d['outside_share_flagged']:.4f} ({d['outside_flagged']:,})"))
    incidents = list(r["full"]["detection"]["any"]["incidents"])
    say_table("Rows flagged: share of each incident's rows (minutes with a flag) / share of other rows",
              ("consumer", "confidence", *incidents, "outside incidents"), det, say)
    e = r["explanations"]
    say(f"Explanations of one-minute windows per (service, model): {e['windows_explained_full']:,} with the full "
        f"forest, {e['windows_explained_sampled']:,} sampled; kept {e['kept']:.3f}, same first feature "
        f"{e['same_first_feature']:.3f}, estimated/full outliers median {e['estimate_ratio_median']:.2f} "
        f"(p10-p90 {e['estimate_ratio_p10_p90'][0]:.2f}-{e['estimate_ratio_p10_p90'][1]:.2f}); of the "
        f"{e['busy_windows']:,} windows with {BUSY} or more outliers, explained with the same first feature "
        f"{e['busy_kept_same_feature']:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_forest", description=__doc__.split("\n")[0])
    p.add_argument("scenario", nargs="?", default=str(DEFAULT_SCENARIO), help="a scenario file [forest.yaml]")
    p.add_argument("--sample-rows", type=int, default=ForestConfig().score_sample_rows,
                   help="score_sample_rows of the sampled consumer [the default setting]")
    p.add_argument("--rows-per-batch", type=int, default=1024)
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    args = p.parse_args(argv)
    r = measure(load_scenario(args.scenario), sample_rows=args.sample_rows, rows_per_batch=args.rows_per_batch)
    report(r, lambda s: print(s, flush=True))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
