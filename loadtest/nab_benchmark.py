"""The project's detectors on the Numenta Anomaly Benchmark, scored by NAB's own rules.

    python -m loadtest.nab_benchmark [--detectors sidecar,windowedGaussian] [--files art_] [--results DIR]
                                     [--json PATH]

A benchmark, not a unit test. It runs every detector over the NAB files in ``testdata/nab/``
(``data/<category>/<file>.csv`` and ``labels/combined_windows.json``), writes one NAB results file
per file and detector (``<results>/<detector>/<category>/<detector>_<file>.csv`` with
``timestamp,value,anomaly_score,label``, as NAB's runner does), reads them back and scores them with
:mod:`loadtest.nab_scoring` (NAB's sweeper, threshold optimiser, profiles and normalisation) for the
three profiles. It prints the normalised scores (0 = NAB's null detector, 100 = perfect) and each
detector's ratio to ``windowedGaussian``, NAB's sliding-Gaussian baseline, run side by side.

Detectors (settings the same for every file; no per-file tuning):

* ``null`` — 0.5 on every row (NAB's null detector; the normalisation's zero).
* ``windowedGaussian`` — NAB's detector, reimplemented: the Gaussian tail probability of each value
  against the mean/std of up to 6,400 previous values (the window slides in steps of 100), score
  ``1 − Q(|z|)``; 0 for the first row.
* ``sidecar`` — the sidecar's :class:`LocalDetector` with its documented defaults, ``latency_ms``
  scored in both directions (NAB anomalies go either way); one row per batch, so every value is
  scored against the state before it; event time = the file's timestamps. Anomaly score 1 on a
  row it reports, 0 elsewhere: what an operator gets from the defaults.
* ``sidecar_graded`` — the same run, graded so that NAB's optimiser can choose how much of it to
  use, as it does for every NAB detector: 1 on a level-shift report, ``1 − 0.5/(1 + |sigma|)`` (in
  [0.5, 1)) on a row with point anomalies only, 0 elsewhere.
* ``sidecar_mad`` — the same with ``method: mad`` (robust z on a window of values).
* ``drift_psi``, ``cost_cusum`` — the aggregator's :class:`DriftDetector` (reference = the first
  500 values, 12 h windows of ≥ 100 values, PSI ≥ 0.25) and :class:`CostCusumDetector` (the value as
  ``cost_usd``, one value per 300 s bucket), score 1 at the last row of each candidate's window.
* ``isolation_forest`` — the aggregator's :class:`IsolationForest` fitted per file on the
  probationary rows, features (log value, change of log value); score = its anomaly score.

The other aggregator detectors need calls, errors, models or budgets, which a univariate series
does not have.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.analysis.detectors import Candidate, CostCusumConfig, CostCusumDetector, DriftConfig, DriftDetector
from aggregator.analysis.forest.isolation_forest import IsolationForest
from loadtest.nab_scoring import (
    NULL_SCORE,
    PROFILES,
    CostMatrix,
    ScoredFile,
    normalized,
    null_score,
    optimize,
    perfect_score,
    score_at,
)
from loadtest.text import say_table
from sentinel.model import NUMERIC_COLUMNS, STRING_COLUMNS, FeatureBatch, LocalAnomaly
from sidecar.detectors.local import LEVEL_SHIFT, METRICS, LocalDetectionConfig, LocalDetector

__all__ = [
    "DEFAULT_DATA",
    "DETECTORS",
    "Series",
    "load_series",
    "main",
    "read_results",
    "run_detectors",
    "score_detector",
    "windowed_gaussian",
    "write_results",
]

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "testdata" / "nab"
BASELINE = "windowedGaussian"
NS = 1_000_000_000
#: NAB's windowedGaussian: window and step, in rows.
GAUSSIAN_WINDOW = 6400
GAUSSIAN_STEP = 100

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass
class Series:
    """One NAB file: name (``category/file.csv``), timestamps as written, unix ns, values, windows."""

    name: str
    stamps: list[str]
    times: IntArray
    values: FloatArray
    windows: list[tuple[int, int]]  # unix ns, bounds inclusive

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        """1 inside a window, else 0 (NAB's ``label`` column)."""
        out = np.zeros(self.times.size, dtype=np.int64)
        for a, b in self.windows:
            out[(self.times >= a) & (self.times <= b)] = 1
        return out


# -- data ---------------------------------------------------------------------------------------


def _parse_time(s: str) -> int:
    s = s.strip()
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in s else "%Y-%m-%d %H:%M:%S"
    return int(datetime.strptime(s, fmt).replace(tzinfo=UTC).timestamp()) * NS


def load_series(data_dir: Path, only: Sequence[str] = ()) -> list[Series]:
    """The files ``labels/combined_windows.json`` lists (filtered by substrings ``only``), by name.

    Raises ``ValueError`` when a listed file is missing or a window bound is not one of its timestamps
    (NAB requires both).
    """
    labels: dict[str, list[list[str]]] = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    out = []
    for name in sorted(labels):
        if only and not any(o in name for o in only):
            continue
        path = data_dir / "data" / name
        if not path.exists():
            raise ValueError(f"{path}: listed in combined_windows.json but missing")
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        stamps = [r["timestamp"] for r in rows]
        times = np.array([_parse_time(s) for s in stamps], dtype=np.int64)
        if (np.diff(times) < 0).any():  # equal ones occur (a clock change in two AWS files); NAB keeps them
            raise ValueError(f"{path}: timestamps are not in order")
        windows = [(_parse_time(a), _parse_time(b)) for a, b in labels[name]]
        known = set(times.tolist())
        for a, b in windows:
            if a not in known or b not in known:
                raise ValueError(f"{path}: window {a // NS}..{b // NS} (unix s) does not start and end at rows")
        values = np.array([float(r["value"]) for r in rows], dtype=np.float64)
        out.append(Series(name=name, stamps=stamps, times=times, values=values, windows=windows))
    return out


# -- detectors: each returns one anomaly score in [0, 1] per row ---------------------------------


def _normal_tail(x: float, mean: float, std: float) -> float:
    """P(X > x) for x ≥ mean, mirrored below the mean (NAB's ``normalProbability``)."""
    if x < mean:
        x = 2 * mean - x
    return 0.5 * math.erfc((x - mean) / std / math.sqrt(2))


def windowed_gaussian(values: FloatArray, window: int = GAUSSIAN_WINDOW, step: int = GAUSSIAN_STEP) -> FloatArray:
    """NAB's windowedGaussian: ``1 − tail`` of each value against the window before it."""
    out = np.zeros(values.size)
    buf = np.empty(window + step)
    held = 0  # values in the window, buf[:held]
    pending = 0  # values waiting to slide in, buf[held:held + pending]
    mean, std = 0.0, 1.0
    for i, x in enumerate(values.tolist()):
        if held:
            out[i] = 1.0 - _normal_tail(x, mean, std)
        changed = False
        if held < window:
            buf[held] = x
            held += 1
            changed = True
        else:
            buf[held + pending] = x
            pending += 1
            if pending == step:
                buf[: window] = buf[step: window + step]
                pending = 0
                changed = True
        if changed:
            w = buf[:held]
            mean, std = float(np.mean(w)), float(np.std(w))
            if std == 0.0:
                std = 0.000001
    return out


def to_batch(series: Series, metric: str) -> FeatureBatch:
    """The whole series as feature rows of one key, the value in column ``metric``."""
    n = series.times.size
    numeric: dict[str, npt.NDArray[Any]] = {}
    for col, dtype in NUMERIC_COLUMNS.items():
        if col == "time_unix_nano":
            numeric[col] = series.times.copy()
        elif col == "is_error":
            numeric[col] = np.zeros(n, dtype=np.dtype(dtype))
        elif col == metric:
            numeric[col] = series.values.copy()
        else:
            numeric[col] = np.full(n, np.nan)
    strings: dict[str, list[str | None]] = {c: [None] * n for c in STRING_COLUMNS}
    strings["service"] = ["nab"] * n
    strings["request_model"] = [series.name] * n
    strings["response_model"] = [series.name] * n
    strings["operation"] = ["chat"] * n
    strings["trace_id"] = [f"{i:032x}" for i in range(n)]
    strings["span_id"] = [f"{i:016x}" for i in range(n)]
    return FeatureBatch(n=n, numeric=numeric, strings=strings)


def _batches(series: Series, metric: str, batch: int) -> Iterator[FeatureBatch]:
    full = to_batch(series, metric)
    for lo in range(0, full.n, batch):
        hi = min(full.n, lo + batch)
        yield FeatureBatch(n=hi - lo, numeric={k: v[lo:hi] for k, v in full.numeric.items()},
                           strings={k: v[lo:hi] for k, v in full.strings.items()})


def sidecar_config(method: str = "zscore", overrides: dict[str, Any] | None = None) -> LocalDetectionConfig:
    """The sidecar's defaults with only ``latency_ms`` scored, both directions, by ``method``."""
    metrics: dict[str, Any] = {m: {"method": "none"} for m in METRICS}
    metrics["latency_ms"] = {"method": method, "direction": "both"}
    return LocalDetectionConfig.from_mapping({**(overrides or {}), "metrics": metrics,
                                              "error_rate": {"enabled": False}})


def run_sidecar(series: Sequence[Series], config: LocalDetectionConfig) -> list[list[tuple[int, LocalAnomaly]]]:
    """(row, anomaly) of every report, per series. Each series is its own key of one detector, and
    batch ``i`` holds row ``i`` of every series: each value is scored against its key's state
    before it, as with one row per batch and a detector per file, at a fraction of the calls."""
    det = LocalDetector(config)
    out: list[list[tuple[int, LocalAnomaly]]] = [[] for _ in series]
    index = {s.name: k for k, s in enumerate(series)}
    full = [to_batch(s, "latency_ms") for s in series]
    for i in range(max(s.times.size for s in series)):
        parts = [f for f in full if i < f.n]
        b = FeatureBatch(n=len(parts), numeric={c: np.array([f.numeric[c][i] for f in parts])
                                                for c in NUMERIC_COLUMNS},
                         strings={c: [f.strings[c][i] for f in parts] for c in STRING_COLUMNS})
        for a in det.process(b):
            out[index[a.model or ""]].append((int(a.trace_id or "", 16), a))  # the trace id is the row number
    return out


def _binary(n: int, rows: Sequence[int]) -> FloatArray:
    out = np.zeros(n)
    out[list(rows)] = 1.0
    return out


def _graded(n: int, found: Sequence[tuple[int, LocalAnomaly]]) -> FloatArray:
    """1 on a level-shift report (evidence summed over many values ranks above any single value),
    ``0.5 + 0.5·(1 − 1/(1 + |sigma|))`` on a row with point anomalies only, 0 elsewhere."""
    out = np.zeros(n)
    for r, a in found:
        if a.method == LEVEL_SHIFT:
            out[r] = 1.0
        else:
            s = abs(a.sigma) if math.isfinite(a.sigma) else 1e300
            out[r] = max(out[r], 1.0 - 0.5 / (1.0 + s))
    return out


def _candidate_rows(series: Series, cands: list[Candidate]) -> list[int]:
    """Each candidate at the last row inside its window (the earliest it could be known)."""
    out = []
    for c in cands:
        i = int(np.searchsorted(series.times, c.window_end, side="left")) - 1
        if i >= 0 and series.times[i] >= c.window_start:
            out.append(i)
    return out


def _aggregator(series: Series, update: Callable[[FeatureBatch], list[Candidate]], metric: str) -> FloatArray:
    rows: list[int] = []
    for b in _batches(series, metric, 288):  # one day per batch; with lateness 0 the output does not depend on it
        rows += _candidate_rows(series, update(b))
    return _binary(series.times.size, rows)


DRIFT = DriftConfig(metrics=("latency_ms",), window_s=12 * 3600.0, lateness_s=0.0, reference_size=500, bins=10,
                    min_count=100)
CUSUM = CostCusumConfig(bucket_s=300.0, lateness_s=0.0)


def isolation_forest(values: FloatArray, probationary: int, seed: int = 0) -> FloatArray:
    """Isolation Forest anomaly scores, fitted on the first ``probationary`` rows."""
    lv = np.log1p(np.maximum(values, 0.0))
    x = np.column_stack([lv, np.concatenate(([0.0], np.diff(lv)))])
    f = IsolationForest(n_estimators=100, random_state=seed).fit(x[: max(probationary, 2)])
    return np.clip(-np.asarray(f.score_samples(x), dtype=np.float64), 0.0, 1.0)


#: Detectors that share one sidecar run: name → how its anomaly scores are made from the reports.
_SIDECAR_VIEWS: dict[str, Callable[[int, Sequence[tuple[int, LocalAnomaly]]], FloatArray]] = {
    "sidecar": lambda n, found: _binary(n, [r for r, _ in found]),
    "sidecar_graded": _graded,
}

#: name → what it is (see the module docstring)
DETECTORS: dict[str, str] = {
    "null": "0.5 on every row (NAB's null detector)",
    BASELINE: "NAB's sliding Gaussian tail probability (window 6400, step 100)",
    "sidecar": "LocalDetector defaults (latency_ms both ways), 1 on reported rows",
    "sidecar_graded": "the same run: 1 on level shifts, 1 - 0.5/(1+|sigma|) on point anomalies",
    "sidecar_mad": "LocalDetector with method mad, 1 on reported rows",
    "drift_psi": "aggregator DriftDetector (PSI), 1 at each candidate",
    "cost_cusum": "aggregator CostCusumDetector (value as cost), 1 at each candidate",
    "isolation_forest": "aggregator IsolationForest fitted on the probationary rows",
}


def _one(series: Series, name: str) -> FloatArray:
    n = series.times.size
    if name == "null":
        return np.full(n, NULL_SCORE)
    if name == BASELINE:
        return windowed_gaussian(series.values)
    if name == "drift_psi":
        return _aggregator(series, DriftDetector(DRIFT).update, "latency_ms")
    if name == "cost_cusum":
        return _aggregator(series, CostCusumDetector(CUSUM).update, "cost_usd")
    if name == "isolation_forest":
        return isolation_forest(series.values, int(0.15 * n))
    raise ValueError(f"unknown detector {name!r}")


def run_detectors(series: Sequence[Series], names: Sequence[str], sidecar: dict[str, Any] | None = None
                  ) -> dict[str, tuple[list[FloatArray], float]]:
    """name → (anomaly scores per series, seconds); ``sidecar``: ``detection:`` settings over the
    defaults for the sidecar runs."""
    out: dict[str, tuple[list[FloatArray], float]] = {}
    views = [v for v in _SIDECAR_VIEWS if v in names]
    if views:
        t0 = time.perf_counter()
        found = run_sidecar(series, sidecar_config(overrides=sidecar))
        dt = time.perf_counter() - t0
        for v in views:
            out[v] = ([_SIDECAR_VIEWS[v](s.times.size, f) for s, f in zip(series, found, strict=True)], dt)
    if "sidecar_mad" in names:
        t0 = time.perf_counter()
        found = run_sidecar(series, sidecar_config("mad", sidecar))
        out["sidecar_mad"] = ([_binary(s.times.size, [r for r, _ in f]) for s, f in zip(series, found, strict=True)],
                              time.perf_counter() - t0)
    for name in names:
        if name not in out:
            t0 = time.perf_counter()
            out[name] = ([_one(s, name) for s in series], time.perf_counter() - t0)
    return out


# -- results files (NAB's format) ----------------------------------------------------------------


def results_path(results: Path, detector: str, file: str) -> Path:
    category, base = file.rsplit("/", 1)
    return results / detector / category / f"{detector}_{base}"


def write_results(results: Path, detector: str, series: Series, scores: FloatArray) -> Path:
    """``timestamp,value,anomaly_score,label`` rows, as NAB's runner writes them (scores to 12
    significant digits, as in NAB's published results)."""
    if scores.size != series.times.size or not bool(((scores >= 0) & (scores <= 1)).all()):
        raise ValueError(f"{detector} on {series.name}: need one anomaly score in [0, 1] per row")
    path = results_path(results, detector, series.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for stamp, v, s, lab in zip(series.stamps, series.values.tolist(), scores.tolist(), series.labels.tolist(),
                                    strict=True):
            # 12 significant digits, as in NAB's published results files: NAB scores what the
            # files hold, and windowedGaussian's scores near 1 differ from 1.0 only beyond that.
            w.writerow([stamp, repr(v), f"{s:.12g}", lab])
    return path


def read_results(results: Path, detector: str, series: Series) -> ScoredFile:
    """A results file back as scorer input (timestamps in unix ns, the windows of ``series``)."""
    path = results_path(results, detector, series.name)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    times = [_parse_time(r["timestamp"]) for r in rows]
    if times != series.times.tolist():
        raise ValueError(f"{path}: timestamps differ from the data file's")
    return ScoredFile(series.name, times, [float(r["anomaly_score"]) for r in rows], series.windows)


# -- scoring ------------------------------------------------------------------------------------


@dataclass
class ProfileScore:
    """One detector on one profile: threshold, raw corpus score, normalised score, per-file rows."""

    profile: str
    threshold: float
    raw: float
    normalized: float
    files: list[dict[str, Any]]


def score_detector(files: Sequence[ScoredFile], nulls: dict[str, float], n_windows: int) -> dict[str, ProfileScore]:
    """NAB's optimise + score + normalise, for each profile."""
    out = {}
    for profile, cost in PROFILES.items():
        out[profile] = _score_profile(files, profile, cost, nulls[profile], n_windows)
    return out


def _score_profile(files: Sequence[ScoredFile], profile: str, cost: CostMatrix, null: float, n_windows: int
                   ) -> ProfileScore:
    best = optimize(files, cost)
    per_file = []
    total = 0.0
    for f in files:
        r = score_at(f, best.threshold, cost)
        total += r.score
        per_file.append({"file": f.name, "score": r.score, "tp": r.tp, "tn": r.tn, "fp": r.fp, "fn": r.fn})
    return ProfileScore(profile, best.threshold, total, normalized(total, null, perfect_score(n_windows, cost)),
                        per_file)


# -- main ---------------------------------------------------------------------------------------


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f} ×" if base > 0 else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.nab_benchmark",
                                description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the nab/ directory (default: %(default)s)")
    p.add_argument("--detectors", default=",".join(DETECTORS), help="comma-separated (default: all)")
    p.add_argument("--files", default="", help="comma-separated substrings of file names (default: all)")
    p.add_argument("--results", type=Path, help="write NAB results files here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    p.add_argument("--sidecar", type=json.loads, default=None, metavar="JSON",
                   help="detection: settings over the defaults for the sidecar runs, "
                        'e.g. \'{"zscore": {"half_life": "6h"}}\'')
    a = p.parse_args(argv)
    names = [d for d in a.detectors.split(",") if d]
    unknown = [d for d in names if d not in DETECTORS]
    if unknown:
        p.error(f"unknown detectors {unknown} (known: {', '.join(DETECTORS)})")
    for must in ("null", BASELINE):
        if must not in names:
            names.insert(0, must)  # the normalisation's zero and the baseline of the ratios
    series = load_series(a.data, [f for f in a.files.split(",") if f])
    if not series:
        print(f"no NAB files found under {a.data}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="nab-results-") as tmp:
        results = a.results or Path(tmp)
        seconds = {}
        t0 = time.perf_counter()
        for d, (scores, dt) in run_detectors(series, names, a.sidecar).items():
            for s, sc in zip(series, scores, strict=True):
                write_results(results, d, s, sc)
            seconds[d] = dt
        wall = time.perf_counter() - t0
        scored = {d: [read_results(results, d, s) for s in series] for d in names}
    n_windows = sum(len(s.windows) for s in series)
    nulls = {prof: null_score(scored["null"], cost) for prof, cost in PROFILES.items()}
    table = {d: score_detector(scored[d], nulls, n_windows) for d in names}
    base = table[BASELINE]
    rows = []
    for d in names:
        row = [d]
        for prof in PROFILES:
            ps = table[d][prof]
            row += [f"{ps.normalized:6.1f}", _ratio(ps.normalized, base[prof].normalized)]
        rows.append([*row, f"{seconds[d]:.1f}"])
    heads = ["detector"]
    for prof in PROFILES:
        heads += [prof, "× wG"]
    say_table(f"NAB scores, {len(series)} files, {n_windows} windows (0 = null, 100 = perfect; × wG = ratio to "
              f"{BASELINE})", [*heads, "s"], rows, print)
    thr_rows = [[d, *(f"{table[d][p].threshold:.4g} ({table[d][p].raw:+.2f})" for p in PROFILES)] for d in names]
    say_table("Optimised threshold (raw corpus score) per profile", ["detector", *PROFILES], thr_rows, print)
    print(f"\nrun time {wall:.1f} s" + (f"; results files under {a.results}" if a.results else ""))
    if a.json:
        doc = {
            "settings": {"data": str(a.data), "sidecar": a.sidecar, "files": [s.name for s in series],
                         "windows": n_windows, "probationary_percent": 0.15, "drift": DRIFT.__dict__,
                         "cost_cusum": CUSUM.__dict__},
            "detectors": {d: DETECTORS[d] for d in names},
            "null": nulls,
            "scores": {d: {p: ps.__dict__ for p, ps in t.items()} for d, t in table.items()},
            "ratio_to_windowedGaussian": {
                d: {p: (t[p].normalized / base[p].normalized if base[p].normalized > 0 else None) for p in PROFILES}
                for d, t in table.items()},
            "seconds": seconds,
        }
        a.json.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
