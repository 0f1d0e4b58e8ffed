"""Isolation Forest benchmark: our lockstep forest against scikit-learn's, side by side in one run.

    python -m loadtest.bench_iforest [--dataset 32_shuttle] [--seconds 2] [--auc-seeds 5] [--json PATH]

1. Scoring throughput: both forests are fitted on ``--dataset`` with the same parameters
   (``n_estimators=100, max_samples=256``, same seed), then ``score_samples`` is timed on batches
   of 500 and 50,000 rows drawn from it, alternating ours and scikit-learn's call by call for
   ``--seconds`` per batch size so both see the same machine. Printed: median rows/s of each and
   their ratio (target: ours >= 3x on batches of 500).
2. ROC AUC of both on the four ``tabular/`` datasets (``16_http`` on a seeded 50,000-row
   subsample), the mean over ``--auc-seeds`` seeds, scored on the training rows as in the paper.

One core each: scikit-learn runs with ``n_jobs=1`` and, through threadpoolctl, every BLAS/OpenMP
pool in the process is limited to one thread for both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import IsolationForest as SklearnIsolationForest  # type: ignore[import-untyped]
from sklearn.metrics import roc_auc_score  # type: ignore[import-untyped]

from aggregator.analysis.forest.isolation_forest import IsolationForest
from loadtest import targets

TABULAR = Path(__file__).resolve().parents[1] / "testdata" / "tabular"
DATASETS = ("16_http", "32_shuttle", "30_satellite", "23_mammography")
BATCH_SIZES = (500, 50_000)
HTTP_SUBSAMPLE = 50_000
N_ESTIMATORS = 100
MAX_SAMPLES = 256
TARGET_RATIO_500 = targets.IFOREST_RATIO_500

Matrix = npt.NDArray[np.float64]


def load(name: str, max_rows: int = HTTP_SUBSAMPLE) -> tuple[Matrix, npt.NDArray[Any]]:
    """Return ``X`` (float64) and ``y`` of a tabular dataset, subsampled (seed 0) above ``max_rows``."""
    with np.load(TABULAR / f"{name}.npz", allow_pickle=False) as data:
        X, y = data["X"].astype(np.float64), data["y"]
    if len(X) > max_rows:
        rows = np.random.default_rng(0).choice(len(X), max_rows, replace=False)
        X, y = X[rows], y[rows]
    return X, y


def one_thread() -> tuple[AbstractContextManager[object], str]:
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        return nullcontext(), "threadpoolctl not installed: thread pools NOT limited"
    return threadpool_limits(limits=1), "threadpoolctl: every BLAS/OpenMP pool limited to 1 thread"


def throughput(
    ours: Callable[[Matrix], object], theirs: Callable[[Matrix], object], batches: Sequence[Matrix], seconds: float
) -> tuple[list[float], list[float]]:
    """Time ``ours`` and ``theirs`` alternately on the same batches; return rows/s of each call."""
    ours_rates: list[float] = []
    theirs_rates: list[float] = []
    ours(batches[0])  # warm caches and lazily built state of both
    theirs(batches[0])
    deadline = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < deadline or len(ours_rates) < 3:
        batch = batches[i % len(batches)]
        for fn, rates in ((ours, ours_rates), (theirs, theirs_rates)):
            start = time.perf_counter()
            fn(batch)
            rates.append(len(batch) / (time.perf_counter() - start))
        i += 1
    return ours_rates, theirs_rates


def bench_throughput(dataset: str, seconds: float, seed: int) -> list[dict[str, Any]]:
    X, _ = load(dataset, max_rows=10**9)
    rng = np.random.default_rng(seed)
    params = {"n_estimators": N_ESTIMATORS, "max_samples": MAX_SAMPLES, "random_state": seed}
    start = time.perf_counter()
    ours = IsolationForest(**params).fit(X)
    ours_fit = time.perf_counter() - start
    start = time.perf_counter()
    theirs = SklearnIsolationForest(**params, n_jobs=1).fit(X)
    theirs_fit = time.perf_counter() - start
    print(f"fit on {dataset} {X.shape}: ours {ours_fit * 1e3:.0f} ms, scikit-learn {theirs_fit * 1e3:.0f} ms")
    results = []
    for size in BATCH_SIZES:
        batches = [X[rng.choice(len(X), size, replace=size > len(X))] for _ in range(8)]
        ours_rates, theirs_rates = throughput(ours.score_samples, theirs.score_samples, batches, seconds)
        ours_median = statistics.median(ours_rates)
        theirs_median = statistics.median(theirs_rates)
        results.append(
            {
                "batch_rows": size,
                "calls": len(ours_rates),
                "ours_rows_per_s": ours_median,
                "sklearn_rows_per_s": theirs_median,
                "ratio": ours_median / theirs_median,
            }
        )
    return results


def bench_auc(seeds: int) -> list[dict[str, Any]]:
    results = []
    for name in DATASETS:
        X, y = load(name)
        ours, theirs = [], []
        for seed in range(seeds):
            params = {"n_estimators": N_ESTIMATORS, "max_samples": MAX_SAMPLES, "random_state": seed}
            ours.append(roc_auc_score(y, -IsolationForest(**params).fit(X).score_samples(X)))
            theirs.append(roc_auc_score(y, -SklearnIsolationForest(**params, n_jobs=1).fit(X).score_samples(X)))
        results.append(
            {
                "dataset": name,
                "rows": len(X),
                "features": X.shape[1],
                "ours_auc": float(np.mean(ours)),
                "sklearn_auc": float(np.mean(theirs)),
                "difference": float(np.mean(ours) - np.mean(theirs)),
                "max_single_seed_difference": float(np.max(np.abs(np.subtract(ours, theirs)))),
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_iforest", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="32_shuttle", choices=DATASETS, help="fit and score on (%(default)s)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size (default: %(default)s)")
    parser.add_argument("--auc-seeds", type=int, default=5, help="seeds averaged per AUC (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="forest and batch seed for throughput (default: 0)")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    import sklearn  # type: ignore[import-untyped]

    limit, limit_note = one_thread()
    print(f"python {platform.python_version()}, numpy {np.__version__}, scikit-learn {sklearn.__version__}")
    print(f"{os.cpu_count()} CPUs; scikit-learn n_jobs=1; {limit_note}")
    with limit:
        throughput_rows = bench_throughput(args.dataset, args.seconds, args.seed)
        print(f"\nscore_samples throughput on {args.dataset} (median over alternating calls)")
        print(f"{'batch rows':>10} {'calls':>6} {'ours rows/s':>13} {'sklearn rows/s':>15} {'ratio':>7}")
        for row in throughput_rows:
            print(
                f"{row['batch_rows']:>10,} {row['calls']:>6} {row['ours_rows_per_s']:>13,.0f}"
                f" {row['sklearn_rows_per_s']:>15,.0f} {row['ratio']:>6.2f}x"
            )
        auc_rows = bench_auc(args.auc_seeds)
    print(f"\nROC AUC on the training rows, mean over {args.auc_seeds} seeds (http: {HTTP_SUBSAMPLE:,}-row subsample)")
    print(f"{'dataset':<16} {'rows':>7} {'ours':>7} {'sklearn':>8} {'diff':>8} {'max |diff| 1 seed':>18}")
    for row in auc_rows:
        print(
            f"{row['dataset']:<16} {row['rows']:>7,} {row['ours_auc']:>7.4f} {row['sklearn_auc']:>8.4f}"
            f" {row['difference']:>+8.4f} {row['max_single_seed_difference']:>18.4f}"
        )
    ratio_500 = next(r["ratio"] for r in throughput_rows if r["batch_rows"] == 500)
    verdict = "met" if ratio_500 >= TARGET_RATIO_500 else "MISSED"
    print(f"\ntarget >= {TARGET_RATIO_500:.0f}x on batches of 500: {ratio_500:.2f}x, {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"throughput": throughput_rows, "auc": auc_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
