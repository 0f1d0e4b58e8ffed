"""Smoke test of the NAB detection-quality script: the scoring math on hand-made cases, and that every
method runs and reports on a tiny synthetic series (and on one real NAB file when the data are here).

No performance assertions: the figures are for ``python -m loadtest.nab_quality``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from loadtest.nab_quality import DEFAULT_DATA, METHODS, Series, alarms, evaluate, load_series, main, score, totals
from loadtest.nab_quality import zscore_window as zw

STEP = 300 * 1_000_000_000


def _times(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * STEP


def test_alarms_merge_runs_of_close_detections() -> None:
    rows = np.array([5, 3, 4, 20, 31, 32, 60], dtype=np.int64)
    assert alarms(rows, 10).tolist() == [3, 20, 31, 60]  # 20→31 is 11 apart: a new alarm
    assert alarms(rows, 0).tolist() == [3, 4, 5, 20, 31, 32, 60]
    assert alarms(np.zeros(0, dtype=np.int64), 5).size == 0


def test_score_by_hand() -> None:
    # 100 rows: rows 0..14 probationary. Windows: rows 40..49 and 70..79; one inside the probationary
    # period (rows 2..5) is not scored.
    t = _times(100)
    windows = [(int(t[2]), int(t[5])), (int(t[40]), int(t[49])), (int(t[70]), int(t[79]))]
    det = np.array([1, 3, 10,           # probationary: ignored (even inside a window)
                    30,                 # FP
                    41, 42, 43,         # one TP alarm
                    49,                 # inside, 6 rows after 43: same alarm at gap 10
                    90, 99], dtype=np.int64)  # 90 FP, 99 FP (9 rows apart: one alarm at gap 10)
    s = score("f", "m", t, windows, det, merge_gap=10)
    assert (s.windows, s.windows_detected) == (2, 1)
    assert s.detections == 7
    assert (s.alarms, s.true_alarms, s.false_alarms) == (3, 1, 2)
    assert s.recall == pytest.approx(0.5)
    assert s.precision == pytest.approx(1 / 3)
    # Without merging every detection is an alarm.
    s0 = score("f", "m", t, windows, det, merge_gap=0)
    assert (s0.alarms, s0.true_alarms, s0.false_alarms) == (7, 4, 3)
    # No detections: precision 1 by convention, recall 0.
    e = score("f", "m", t, windows, np.zeros(0, dtype=np.int64))
    assert (e.recall, e.precision, e.alarms) == (0.0, 1.0, 0)
    # No windows: recall undefined, every alarm false.
    nw = score("f", "m", t, [], np.array([50], dtype=np.int64))
    assert np.isnan(nw.recall) and (nw.false_alarms, nw.precision) == (1, 0.0)
    tot = totals([s, nw])["m"]
    assert (tot.windows, tot.windows_detected, tot.alarms, tot.true_alarms, tot.false_alarms) == (2, 1, 4, 1, 3)
    assert tot.precision == pytest.approx(0.25)


def test_zscore_window_baseline() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(10.0, 1.0, 400)
    x[250] = 30.0
    rows = zw(x, window=100, z=3.0).tolist()
    assert 250 in rows
    assert all(r >= 100 for r in rows)
    # The same z by hand for one row.
    w = x[150:250]
    assert abs(x[250] - w.mean()) / w.std() > 3
    # A constant window: any other value has infinite z, an equal one none.
    c = np.full(150, 5.0)
    c[120] = 5.5
    assert zw(c, window=100).tolist() == [120]


def _synthetic() -> Series:
    rng = np.random.default_rng(1)
    n = 1200
    v = rng.normal(100.0, 5.0, n)
    v[800:830] += 120.0  # a lasting jump inside the window
    t = _times(n) + 1_400_000_000 * 1_000_000_000
    return Series(name="synthetic.csv", times=t, values=v, windows=[(int(t[790]), int(t[850]))])


def test_every_method_runs_on_a_synthetic_series() -> None:
    s = _synthetic()
    scores = evaluate([s], list(METHODS), batch=1, agg_batch=50)
    assert [x.method for x in scores] == list(METHODS)
    by = {x.method: x for x in scores}
    for x in scores:
        assert x.windows == 1
        assert 0 <= x.windows_detected <= 1
        assert x.alarms == x.true_alarms + x.false_alarms
        assert x.seconds >= 0
    # A jump of ~24 std is seen by the baseline and the sidecar's default detector.
    assert by["zscore_window"].windows_detected == 1
    assert by["local_log"].windows_detected == 1
    # The aggregator detectors give the same output whatever the batch size (lateness 0).
    again = {x.method: x for x in evaluate([s], ["drift_psi", "cost_cusum"], agg_batch=7)}
    for m in ("drift_psi", "cost_cusum"):
        assert (again[m].detections, again[m].alarms) == (by[m].detections, by[m].alarms)


def test_one_real_file_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    series = load_series(DEFAULT_DATA, ["art_daily_jumpsup"])
    assert len(series) == 1 and series[0].times.size > 1000 and len(series[0].windows) == 1
    out = tmp_path / "nab.json"
    assert main(["--files", "art_daily_jumpsup", "--methods", "zscore_window,cost_cusum,drift_psi",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Totals" in printed and "zscore_window" in printed
    doc = json.loads(out.read_text())
    assert set(doc) == {"settings", "methods", "files", "totals", "seconds"}
    assert set(doc["totals"]) == {"zscore_window", "cost_cusum", "drift_psi"}
    for f in doc["files"]:
        for k in ("file", "method", "windows", "windows_detected", "alarms", "true_alarms", "false_alarms",
                  "recall", "precision", "seconds"):
            assert k in f, k
