"""Detection quality on the Numenta Anomaly Benchmark (subset in ``testdata/nab/``).

A benchmark, not a unit test. Each NAB file (``timestamp,value``, 5-minute steps, ~4,000 rows) is
turned into feature rows of **one key** (``service="nab"``, ``request_model=<file>``,
``operation="chat"``): the timestamp becomes ``time_unix_nano``, the value the metric column the
method reads (``latency_ms``, or ``cost_usd`` for the cost CUSUM). The rows are fed in time order:
to the sidecar's detector ``--batch`` rows at a time (default 1: every value is scored against the
state before it), to the aggregator's ``--agg-batch`` rows at a time (default 288, one day: with
lateness 0 a bucket closes only once all its rows are in, so their output does not depend on it):

* ``zscore_window`` — the plain baseline, implemented here: the z-score of each value against the
  previous ``--window`` (100) values (population std), reported when ``|z| > 3``. A value that
  differs from a window of identical values has infinite z and is reported.
* ``local_log`` / ``local_raw`` / ``local_mad`` — the sidecar's :class:`LocalDetector` with its
  documented defaults (warm-up 30, z 3.5, alpha 0.01, clip 4σ, persistence 2 of 5 or ≥ 5σ at
  once), ``latency_ms`` scored in **both** directions: rolling z-score on log scale (the default
  transform), the same on the raw scale, and robust MAD (window 128, robust z 4) on log scale.
  Error rate is off (NAB has no errors); no static thresholds.
* ``drift_psi`` — the aggregator's :class:`DriftDetector` on ``latency_ms``. Its defaults assume
  LLM traffic (1,000 reference values, 15-minute windows of ≥ 200 calls), which a 5-minute series
  cannot fill, so it runs at the series' cadence, the same for every file: the first 500 values
  are the reference (they fit in the probationary period), 12-hour windows (144 values, ≥ 100),
  10 bins, PSI ≥ 0.25, lateness 0.
* ``cost_cusum`` — the aggregator's :class:`CostCusumDetector` with the value as ``cost_usd`` and
  ``bucket_s=300`` (one value per bucket: a one-sided upper CUSUM on the series itself), lateness
  0, other settings at their defaults. It only sees rises.

The other aggregator detectors do not apply to a univariate metric series: ``error_burst`` needs
failed calls, ``throughput_drop`` counts calls per bucket (here always one), ``budget`` compares
spend with fixed limits in USD, and ``model_swap`` watches the response-model category.

Where a detection lies: a :class:`LocalAnomaly` (and the baseline) at its row's timestamp; an
aggregator :class:`Candidate` at the last row inside its window ``[window_start, window_end)`` —
the earliest moment it could have been known (its window closes with the next row).

Scoring (window-based, NAB-like but simple; ``score``):

* detections in the probationary period (the first 15 % of the rows) are ignored;
* a labelled window counts only if it reaches past the probationary period; it is **detected** if
  at least one detection falls inside it (bounds inclusive). **Recall** = detected windows / windows;
* consecutive detections at most ``--merge-gap`` rows apart (default 12: one hour) form one
  **alarm**, placed at its first detection (a level shift reported on 200 rows is one alarm, not
  200). An alarm inside a window is a true positive, one outside every window a **false
  positive**. **Precision** = alarms inside windows / all alarms (1.0 when there are none).

Run ``python -m loadtest.nab_quality`` (``--json PATH`` also writes every figure; ``--help``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aggregator.detectors import Candidate, CostCusumConfig, CostCusumDetector, DriftConfig, DriftDetector
from sentinel.detectors.local import METRICS, LocalDetectionConfig, LocalDetector
from sentinel.model import NUMERIC_COLUMNS, STRING_COLUMNS, FeatureBatch

__all__ = [
    "METHODS",
    "FileScore",
    "Series",
    "Totals",
    "alarms",
    "evaluate",
    "load_series",
    "main",
    "score",
    "totals",
    "zscore_window",
]

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "testdata" / "nab"
PROBATIONARY = 0.15
DEFAULT_MERGE_GAP = 12
#: Rows per batch for the aggregator detectors (one day); with lateness 0 their output does not depend on it.
DEFAULT_AGG_BATCH = 288
DEFAULT_WINDOW = 100
DEFAULT_Z = 3.0
NS = 1_000_000_000

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


@dataclass
class Series:
    """One NAB file: its name (``dir/file.csv``), timestamps (unix ns), values and labelled windows."""

    name: str
    times: IntArray
    values: FloatArray
    windows: list[tuple[int, int]]


@dataclass
class FileScore:
    """The score of one method on one file (see the module docstring)."""

    file: str
    method: str
    windows: int
    windows_detected: int
    detections: int
    alarms: int
    true_alarms: int
    false_alarms: int
    seconds: float = 0.0

    @property
    def recall(self) -> float:
        return self.windows_detected / self.windows if self.windows else float("nan")

    @property
    def precision(self) -> float:
        return self.true_alarms / self.alarms if self.alarms else 1.0


@dataclass
class Totals:
    """Sums over files for one method; recall and precision of the sums (micro-averages)."""

    method: str
    windows: int = 0
    windows_detected: int = 0
    detections: int = 0
    alarms: int = 0
    true_alarms: int = 0
    false_alarms: int = 0
    seconds: float = 0.0
    files: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.windows_detected / self.windows if self.windows else float("nan")

    @property
    def precision(self) -> float:
        return self.true_alarms / self.alarms if self.alarms else 1.0


# -- data ---------------------------------------------------------------------------------------


def _parse_time(s: str) -> int:
    s = s.strip()
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in s else "%Y-%m-%d %H:%M:%S"
    return int(datetime.strptime(s, fmt).replace(tzinfo=UTC).timestamp()) * NS


def load_series(data_dir: Path, only: Sequence[str] = ()) -> list[Series]:
    """The files of ``data_dir/data`` that ``labels/combined_windows.json`` lists, sorted by name."""
    labels: dict[str, list[list[str]]] = json.loads((data_dir / "labels" / "combined_windows.json").read_text())
    out = []
    for name in sorted(labels):
        path = data_dir / "data" / name
        if not path.exists() or (only and not any(o in name for o in only)):
            continue
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        times = np.array([_parse_time(r["timestamp"]) for r in rows], dtype=np.int64)
        values = np.array([float(r["value"]) for r in rows], dtype=np.float64)
        order = np.argsort(times, kind="stable")
        windows = [(_parse_time(a), _parse_time(b)) for a, b in labels[name]]
        out.append(Series(name=name, times=times[order], values=values[order], windows=windows))
    return out


def to_batch(series: Series, lo: int, hi: int, metric: str) -> FeatureBatch:
    """Rows ``lo:hi`` of ``series`` as feature rows of one key, the value in column ``metric``."""
    n = hi - lo
    numeric: dict[str, npt.NDArray[Any]] = {}
    for col, dtype in NUMERIC_COLUMNS.items():
        if col == "time_unix_nano":
            numeric[col] = series.times[lo:hi].copy()
        elif col == "is_error":
            numeric[col] = np.zeros(n, dtype=np.dtype(dtype))
        elif col == metric:
            numeric[col] = series.values[lo:hi].copy()
        else:
            numeric[col] = np.full(n, np.nan)
    strings: dict[str, list[str | None]] = {c: [None] * n for c in STRING_COLUMNS}
    strings["service"] = ["nab"] * n
    strings["request_model"] = [series.name] * n
    strings["response_model"] = [series.name] * n
    strings["operation"] = ["chat"] * n
    strings["trace_id"] = [f"{i:032x}" for i in range(lo, hi)]
    strings["span_id"] = [f"{i:016x}" for i in range(lo, hi)]
    return FeatureBatch(n=n, numeric=numeric, strings=strings)


# -- methods: each returns the row indices of its detections ------------------------------------


def zscore_window(values: FloatArray, window: int = DEFAULT_WINDOW, z: float = DEFAULT_Z) -> IntArray:
    """Rows whose value is more than ``z`` population stds from the mean of the previous ``window``."""
    n = values.size
    if n <= window:
        return np.zeros(0, dtype=np.int64)
    # Each row t >= window against values[t-window:t]; cumulative sums of shifted values for stability.
    x = values - values[:window].mean()
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    c2 = np.concatenate(([0.0], np.cumsum(x * x)))
    t = np.arange(window, n)
    s1 = c1[t] - c1[t - window]
    s2 = c2[t] - c2[t - window]
    mean = s1 / window
    var = np.maximum(s2 / window - mean * mean, 0.0)
    std = np.sqrt(var)
    dev = np.abs(x[t] - mean)
    # Cancellation can leave a tiny var on constant windows: recompute std exactly where it is small.
    small = std < 1e-9 * np.maximum(1.0, np.abs(mean))
    for i in np.flatnonzero(small).tolist():
        w = values[t[i] - window:t[i]]
        std[i] = float(w.std())
        dev[i] = abs(float(values[t[i]]) - float(w.mean()))
    with np.errstate(divide="ignore", invalid="ignore"):
        zz = np.where(std > 0, dev / np.where(std > 0, std, 1.0), np.where(dev > 0, np.inf, 0.0))
    return t[zz > z].astype(np.int64)


def _local_config(method: str, transform: str) -> LocalDetectionConfig:
    metrics: dict[str, Any] = {m: {"method": "none"} for m in METRICS}
    metrics["latency_ms"] = {"method": method, "direction": "both", "transform": transform}
    return LocalDetectionConfig.from_mapping({"metrics": metrics, "error_rate": {"enabled": False}})


def _batches(series: Series, metric: str, batch: int) -> Iterator[FeatureBatch]:
    """``series`` as consecutive batches of ``batch`` rows (slices of one batch built once)."""
    full = to_batch(series, 0, series.times.size, metric)
    for lo in range(0, full.n, batch):
        hi = min(full.n, lo + batch)
        yield FeatureBatch(n=hi - lo, numeric={k: v[lo:hi] for k, v in full.numeric.items()},
                           strings={k: v[lo:hi] for k, v in full.strings.items()})


def run_local(series: Series, method: str, transform: str, batch: int) -> IntArray:
    det = LocalDetector(_local_config(method, transform))
    rows: list[int] = []
    for b in _batches(series, "latency_ms", batch):
        for a in det.process(b):
            rows.append(int(np.searchsorted(series.times, a.time_unix_nano)))
    return np.unique(np.array(rows, dtype=np.int64))


def _candidate_rows(series: Series, cands: list[Candidate]) -> list[int]:
    """Each candidate at the last row inside its window (the earliest it could be known)."""
    out = []
    for c in cands:
        i = int(np.searchsorted(series.times, c.window_end, side="left")) - 1
        if i >= 0 and series.times[i] >= c.window_start:
            out.append(i)
    return out


def _run_aggregator(series: Series, update: Callable[[FeatureBatch], list[Candidate]], metric: str,
                    batch: int) -> IntArray:
    rows: list[int] = []
    for b in _batches(series, metric, batch):
        rows += _candidate_rows(series, update(b))
    return np.unique(np.array(rows, dtype=np.int64))


DRIFT = DriftConfig(metrics=("latency_ms",), window_s=12 * 3600.0, lateness_s=0.0, reference_size=500, bins=10,
                    min_count=100)
CUSUM = CostCusumConfig(bucket_s=300.0, lateness_s=0.0)

#: How a method runs on a series, given (sidecar batch, aggregator batch) sizes in rows.
Method = Callable[[Series, int, int], IntArray]

#: name → (what it is, how to run it)
METHODS: dict[str, tuple[str, Method]] = {
    "zscore_window": (f"sliding window {DEFAULT_WINDOW}, abs(z) > {DEFAULT_Z:g} (baseline)",
                      lambda s, b, ab: zscore_window(s.values)),
    "local_log": ("LocalDetector zscore, both, log (defaults)", lambda s, b, ab: run_local(s, "zscore", "log", b)),
    "local_raw": ("LocalDetector zscore, both, raw", lambda s, b, ab: run_local(s, "zscore", "none", b)),
    "local_mad": ("LocalDetector mad, both, log", lambda s, b, ab: run_local(s, "mad", "log", b)),
    "drift_psi": ("DriftDetector PSI on latency_ms", lambda s, b, ab: _run_aggregator(
        s, DriftDetector(DRIFT).update, "latency_ms", ab)),
    "cost_cusum": ("CostCusumDetector, value as cost_usd", lambda s, b, ab: _run_aggregator(
        s, CostCusumDetector(CUSUM).update, "cost_usd", ab)),
}


# -- scoring ------------------------------------------------------------------------------------


def alarms(rows: IntArray, merge_gap: int) -> IntArray:
    """First rows of runs of (sorted, distinct) detections at most ``merge_gap`` rows apart."""
    rows = np.unique(rows)
    if rows.size == 0:
        return rows
    starts = np.concatenate(([True], np.diff(rows) > merge_gap))
    return rows[starts]


def score(
    file: str,
    method: str,
    times: IntArray,
    windows: Sequence[tuple[int, int]],
    detections: IntArray,
    *,
    probationary: float = PROBATIONARY,
    merge_gap: int = DEFAULT_MERGE_GAP,
) -> FileScore:
    """Score ``detections`` (row indices into ``times``) against labelled ``windows`` (unix ns, inclusive)."""
    n = times.size
    first = int(np.floor(probationary * n))  # rows before it are probationary
    det = np.unique(detections[(detections >= first) & (detections < n)]).astype(np.int64)
    t_first = int(times[first]) if first < n else np.iinfo(np.int64).max
    scored = [(a, b) for a, b in windows if b >= t_first]
    t_det = times[det]
    detected = sum(1 for a, b in scored if bool(((t_det >= a) & (t_det <= b)).any()))
    al = alarms(det, merge_gap)
    t_al = times[al]
    inside = np.zeros(al.size, dtype=np.bool_)
    for a, b in windows:
        inside |= (t_al >= a) & (t_al <= b)
    tp = int(inside.sum())
    return FileScore(file=file, method=method, windows=len(scored), windows_detected=detected,
                     detections=int(det.size), alarms=int(al.size), true_alarms=tp, false_alarms=int(al.size) - tp)


def totals(scores: Sequence[FileScore]) -> dict[str, Totals]:
    out: dict[str, Totals] = {}
    for s in scores:
        t = out.setdefault(s.method, Totals(method=s.method))
        t.windows += s.windows
        t.windows_detected += s.windows_detected
        t.detections += s.detections
        t.alarms += s.alarms
        t.true_alarms += s.true_alarms
        t.false_alarms += s.false_alarms
        t.seconds += s.seconds
        t.files.append(s.file)
    return out


def evaluate(
    series: Sequence[Series],
    methods: Sequence[str],
    *,
    batch: int = 1,
    agg_batch: int = DEFAULT_AGG_BATCH,
    merge_gap: int = DEFAULT_MERGE_GAP,
) -> list[FileScore]:
    """Every method on every series, scored; ``seconds`` is the method's run time on the file."""
    out = []
    for s in series:
        for m in methods:
            t0 = time.perf_counter()
            rows = METHODS[m][1](s, batch, agg_batch)
            dt = time.perf_counter() - t0
            fs = score(s.name, m, s.times, s.windows, rows, merge_gap=merge_gap)
            fs.seconds = dt
            out.append(fs)
    return out


# -- report -------------------------------------------------------------------------------------


def _cell(windows_detected: int, windows: int, precision: float, false_alarms: int) -> str:
    return f"{windows_detected}/{windows} {precision:4.2f} {false_alarms:3d}"


def report(scores: Sequence[FileScore], methods: Sequence[str], seconds: float) -> str:
    by = {(s.file, s.method): s for s in scores}
    files = list(dict.fromkeys(s.file for s in scores))
    w = max([len(f) for f in files] + [10])
    lines = ["Per file, per method: windows detected/windows, precision (alarms in windows / alarms), false alarms",
             ""]
    head = f"{'file':<{w}}  " + "  ".join(f"{m:>14}" for m in methods)
    lines += [head, "-" * len(head)]
    for f in files:
        cells = [_cell(by[f, m].windows_detected, by[f, m].windows, by[f, m].precision, by[f, m].false_alarms)
                 for m in methods]
        lines.append(f"{f:<{w}}  " + "  ".join(f"{c:>14}" for c in cells))
    tot = totals(scores)
    lines += ["", "Totals", "",
              "| method | what | windows detected | recall | precision | alarms | false alarms | detections | s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        t = tot[m]
        lines.append(f"| {m} | {METHODS[m][0]} | {t.windows_detected}/{t.windows} | {t.recall:.2f} | "
                     f"{t.precision:.2f} | {t.alarms} | {t.false_alarms} | {t.detections} | {t.seconds:.2f} |")
    lines += ["", f"{len(files)} files, run time {seconds:.1f} s"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.nab_quality", description=__doc__.split("\n\n")[0]
                                if __doc__ else None)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the nab/ directory (default: %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    p.add_argument("--files", default="", help="comma-separated substrings of file names (default: all)")
    p.add_argument("--batch", type=int, default=1, help="rows per batch fed to the detectors (default 1)")
    p.add_argument("--agg-batch", type=int, default=DEFAULT_AGG_BATCH,
                   help="rows per batch fed to the aggregator detectors (default %(default)s; same output)")
    p.add_argument("--merge-gap", type=int, default=DEFAULT_MERGE_GAP,
                   help="detections at most this many rows apart are one alarm (default %(default)s)")
    p.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    a = p.parse_args(argv)
    methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or a.batch < 1 or a.agg_batch < 1 or a.merge_gap < 0:
        p.error(f"unknown methods {unknown}" if unknown else "--batch and --agg-batch must be >= 1, --merge-gap >= 0")
    series = load_series(a.data, [f for f in a.files.split(",") if f])
    if not series:
        print(f"no NAB files found under {a.data}", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    scores = evaluate(series, methods, batch=a.batch, agg_batch=a.agg_batch, merge_gap=a.merge_gap)
    seconds = time.perf_counter() - t0
    print(report(scores, methods, seconds))
    if a.json:
        tot = totals(scores)
        doc = {
            "settings": {"batch": a.batch, "agg_batch": a.agg_batch, "merge_gap": a.merge_gap,
                         "probationary": PROBATIONARY,
                         "data": str(a.data), "drift": asdict(DRIFT), "cost_cusum": asdict(CUSUM)},
            "methods": {m: METHODS[m][0] for m in methods},
            "files": [{**asdict(s), "recall": s.recall if s.windows else None, "precision": s.precision}
                      for s in scores],
            "totals": {m: {**asdict(t), "recall": t.recall if t.windows else None, "precision": t.precision}
                       for m, t in tot.items()},
            "seconds": seconds,
        }
        a.json.write_text(json.dumps(doc, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
