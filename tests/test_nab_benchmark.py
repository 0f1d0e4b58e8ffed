"""NAB's scoring rules (loadtest.nab_scoring) on tiny cases worked out by hand, NAB's windowedGaussian
on values whose z is known, both together against NAB's own published per-file scores, and the
benchmark end to end on one real NAB file (results files written and read back).

No performance assertions: the figures are for ``python -m loadtest.nab_benchmark``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from loadtest import nab_scoring as ns
from loadtest.bench_all import render
from loadtest.nab_benchmark import DEFAULT_DATA, load_series, main, read_results, windowed_gaussian, write_results

# One file of 20 rows (timestamps 0..19), one window over rows 10..13 (W = 4, right edge R = 13).
# Probationary: min(floor(0.15 * 20), 750) = 3 rows. Standard profile: tp 1, fp 0.11, fn 1.
T = list(range(20))
WINDOW = [(10, 13)]
SIG_M1 = 0.9866142981514303  # scaled sigmoid at -1: 2/(1 + e^-5) - 1


def _file(scores: dict[int, float], name: str = "f") -> ns.ScoredFile:
    return ns.ScoredFile(name, T, [scores.get(i, 0.0) for i in T], WINDOW)


def test_scaled_sigmoid_and_probation() -> None:
    assert ns.scaled_sigmoid(-1.0) == pytest.approx(SIG_M1)
    assert ns.scaled_sigmoid(0.0) == 0.0
    assert ns.scaled_sigmoid(1.0) == pytest.approx(-SIG_M1)
    assert ns.scaled_sigmoid(3.5) == -1.0
    assert ns.probationary_length(20) == 3
    assert ns.probationary_length(4032) == 604
    assert ns.probationary_length(22695) == 750.0  # capped at 15 % of 5,000 rows


def test_row_weights_by_hand() -> None:
    pts = ns.sweep(_file({}), ns.STANDARD)
    assert len(pts) == 17  # rows 3..19
    w = {i: p.weight for i, p in zip(range(3, 20), pts, strict=True)}
    # Before the first window: -fp.
    assert all(w[i] == pytest.approx(-0.11) for i in range(3, 10))
    # Inside: sigma(-(R - i + 1)/W) / sigma(-1): 1 at the window's first row, falling to its end.
    assert w[10] == pytest.approx(1.0)
    assert w[11] == pytest.approx(0.954048 / SIG_M1, abs=1e-5)  # position -0.75
    assert w[12] == pytest.approx(0.848283 / SIG_M1, abs=1e-5)  # -0.5
    assert w[13] == pytest.approx(0.554600 / SIG_M1, abs=1e-5)  # -0.25
    # After: fp * sigma(|R - i| / (W - 1)).
    assert w[14] == pytest.approx(-0.682260 * 0.11, abs=1e-6)  # position 1/3
    assert w[16] == pytest.approx(-SIG_M1 * 0.11, abs=1e-6)  # position 1
    assert [p.window for p in pts[7:11]] == ["f|10"] * 4 and pts[0].window is None and pts[11].window is None


def test_thresholds_and_score_by_hand() -> None:
    f = _file({11: 0.9, 5: 0.8})
    rows = ns.score_by_threshold(ns.sweep(f, ns.STANDARD), ns.STANDARD)
    assert [r.threshold for r in rows] == [1.1, 0.9, 0.8, 0.0]
    # 1.1: nothing detected, the window is missed.
    assert rows[0].score == pytest.approx(-1.0) and (rows[0].tp, rows[0].fn) == (0, 4)
    # 0.9: row 11 detected, worth 0.954048 / sigma(-1).
    assert rows[1].score == pytest.approx(0.96699, abs=1e-5)
    # 0.8: plus the false positive at row 5 (-0.11).
    assert rows[2].score == pytest.approx(0.96699 - 0.11, abs=1e-5)
    assert (rows[2].tp, rows[2].fp, rows[2].tn, rows[2].fn, rows[2].total) == (1, 1, 12, 3, 17)
    # 0.0: every row; the window earns its best row (1.0), every outside row its weight.
    outside = sum(p.weight for p in ns.sweep(f, ns.STANDARD) if p.window is None)
    assert rows[3].score == pytest.approx(1.0 + outside)
    best = ns.optimize([f], ns.STANDARD)
    assert best.threshold == 0.9
    # At a threshold between two scores the file is scored as at the next higher score; below all: all rows.
    assert ns.score_at(f, 0.85, ns.STANDARD).score == pytest.approx(rows[1].score)
    assert ns.score_at(f, 0.9, ns.STANDARD).score == pytest.approx(rows[1].score)
    assert ns.score_at(_file({i: 0.5 for i in T}), 0.1, ns.STANDARD).tp == 4


def test_profiles_change_the_weights() -> None:
    f = _file({11: 0.9, 5: 0.8})
    low_fp = ns.score_by_threshold(ns.sweep(f, ns.REWARD_LOW_FP), ns.REWARD_LOW_FP)
    assert low_fp[2].score == pytest.approx(0.96699 - 0.22, abs=1e-5)
    low_fn = ns.score_by_threshold(ns.sweep(f, ns.REWARD_LOW_FN), ns.REWARD_LOW_FN)
    assert low_fn[0].score == pytest.approx(-2.0)


def test_probationary_window_not_scored_and_ties_take_the_higher_threshold() -> None:
    # A window inside the probationary period (rows 0..2) is neither a miss nor a hit.
    f = ns.ScoredFile("p", T, [0.0] * 20, [(0, 2)])
    assert ns.optimize([f], ns.STANDARD).score == 0.0
    assert ns.optimize([f], ns.STANDARD).threshold == 1.1


def test_corpus_optimisation_null_and_normalisation() -> None:
    a = _file({10: 0.7}, "a")
    b = ns.ScoredFile("b", T, [0.7 if i == 4 else 0.0 for i in T], [(15, 16)])
    best = ns.optimize([a, b], ns.STANDARD)
    # 0.7: a's window at its first row (+1), b's window missed (-1), b's row 4 false (-0.11).
    assert best.threshold == 0.7 and best.score == pytest.approx(-0.11)
    # The null detector (0.5 everywhere) has two thresholds: 1.1 (both windows missed: -2) and 0.5 (every
    # row; on 20-row files the windows' +2 outweigh the false rows), and takes the better.
    every = sum(ns.score_at(ns.ScoredFile(x.name, T, [0.5] * 20, x.windows), 0.5, ns.STANDARD).score for x in (a, b))
    assert -2.0 < every < -0.11
    null = ns.null_score([a, b], ns.STANDARD)
    assert null == pytest.approx(every)
    assert ns.perfect_score(2, ns.STANDARD) == 2.0
    assert ns.normalized(best.score, null, 2.0) == pytest.approx(100 * (-0.11 - every) / (2.0 - every))
    assert ns.normalized(null, null, 2.0) == 0.0 and ns.normalized(2.0, null, 2.0) == 100.0


def test_bad_windows_are_named() -> None:
    with pytest.raises(ValueError, match="does not start and end"):
        ns.sweep(ns.ScoredFile("x", T, [0.0] * 20, [(3.5, 6)]), ns.STANDARD)
    with pytest.raises(ValueError, match="overlap"):
        ns.sweep(ns.ScoredFile("x", T, [0.0] * 20, [(3, 8), (6, 9)]), ns.STANDARD)


def test_windowed_gaussian_by_hand() -> None:
    # Row 0: 0. Row 1: std of one value is 0 -> 1e-6, z huge -> 1. Row 2: mean 2, std 1, z 3.
    # Window 2, step 1: row 3 sees the window [3, 5] (mean 4, std 1), z 0.5.
    s = windowed_gaussian(np.array([1.0, 3.0, 5.0, 4.5]), window=2, step=1)
    assert s[0] == 0.0 and s[1] == 1.0
    assert s[2] == pytest.approx(1 - 0.0013499, abs=1e-6)
    assert s[3] == pytest.approx(1 - 0.3085375, abs=1e-6)
    # Below the mean is mirrored.
    assert windowed_gaussian(np.array([1.0, 3.0, -1.0]))[2] == pytest.approx(1 - 0.0013499, abs=1e-6)


#: NAB's published results for its windowedGaussian detector (numenta/NAB, MIT:
#: results/windowedGaussian/windowedGaussian_<profile>_scores.csv, threshold 1.0): per file and
#: profile, (score, TP rows, FP rows).
PUBLISHED = {
    "realAWSCloudwatch/grok_asg_anomaly.csv": {
        "standard": (2.37942230674, 69, 3), "reward_low_FP_rate": (2.04942230674, 69, 3)},
    "realAWSCloudwatch/ec2_cpu_utilization_fe7f93.csv": {
        "standard": (0.638757791772, 6, 1), "reward_low_FN_rate": (-0.361242208228, 6, 1)},
    "artificialWithAnomaly/art_load_balancer_spikes.csv": {
        "standard": (-0.692444609523, 18, 15), "reward_low_FP_rate": (-2.34244460952, 18, 15)},
    "realAWSCloudwatch/ec2_disk_write_bytes_c0d644.csv": {
        "standard": (-1.09599853032, 13, 19), "reward_low_FN_rate": (-2.09599853032, 13, 19)},
}


@pytest.mark.skipif(not (DEFAULT_DATA / "labels" / "combined_windows.json").exists(), reason="no NAB data")
def test_windowed_gaussian_and_scorer_reproduce_nabs_published_scores(tmp_path: Path) -> None:
    series = load_series(DEFAULT_DATA, list(PUBLISHED))
    assert sorted(s.name for s in series) == sorted(PUBLISHED)
    for s in series:
        write_results(tmp_path, "windowedGaussian", s, windowed_gaussian(s.values))
        f = read_results(tmp_path, "windowedGaussian", s)  # scored from the file, as NAB does
        for profile, (score, tp, fp) in PUBLISHED[s.name].items():
            r = ns.score_at(f, 1.0, ns.PROFILES[profile])
            assert (r.score, r.tp, r.fp) == (pytest.approx(score, abs=1e-9), tp, fp), (s.name, profile)


@pytest.mark.skipif(not (DEFAULT_DATA / "labels" / "combined_windows.json").exists(), reason="no NAB data")
def test_one_real_file_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = load_series(DEFAULT_DATA, ["art_daily_jumpsup"])
    assert len(series) == 1 and series[0].times.size == 4032 and len(series[0].windows) == 1
    out = tmp_path / "nab.json"
    res = tmp_path / "results"
    assert main(["--files", "art_daily_jumpsup", "--detectors", "sidecar,cost_cusum", "--results", str(res),
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "windowedGaussian" in printed and "standard" in printed
    path = res / "sidecar" / "artificialWithAnomaly" / "sidecar_art_daily_jumpsup.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["timestamp", "value", "anomaly_score", "label"] and len(rows) == 4032
    assert sum(int(r["label"]) for r in rows) == 403  # the window's rows, bounds inclusive
    doc = json.loads(out.read_text())
    assert set(doc["scores"]) == {"null", "windowedGaussian", "sidecar", "cost_cusum"}
    for prof in ns.PROFILES:
        assert doc["scores"]["null"][prof]["normalized"] == pytest.approx(0.0)
        assert doc["ratio_to_windowedGaussian"]["windowedGaussian"][prof] == pytest.approx(1.0)
    # bench_all's table reads these figures.
    table = render({"nab": {"status": 0, "seconds": 1.0, "load_average_at_start": 0.0, "figures": doc}},
                   {"load_average": [0.0, 0.0, 0.0]}, quick=True)
    assert "NAB score" in table and "sidecar (0 null, 100 perfect)" in table and "windowedGaussian" in table
