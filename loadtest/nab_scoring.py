"""The Numenta Anomaly Benchmark's scoring rules, reimplemented (pure logic, no I/O).

NAB (github.com/numenta/NAB, MIT) scores a detector's per-row anomaly scores in [0, 1] against
labelled *anomaly windows*. The rules, as NAB's ``sweeper.py``, ``optimizer.py``, ``scorer.py`` and
``runner.py`` define them:

* **Probationary period**: the first ``min(floor(0.15·n), 0.15·5000)`` rows of a file are not scored
  (neither as detections nor as misses); a window counts only through its rows after it.
* **Row weights** (the *sweep score*): a row inside a window (bounds inclusive, ``W`` rows, right
  edge at row ``R``) is worth ``tp·σ(−(R − i + 1)/W)/σ(−1)``, with the *scaled sigmoid*
  ``σ(p) = 2/(1 + e^{5p}) − 1`` (−1 when ``p > 3``): the window's first row earns ``tp``, its last
  almost nothing. A row outside every window is worth ``fp·σ(|R' − i|/(W' − 1))`` after a window
  (``R'``, ``W'`` those of the last window before it; ≈ 0 just after, −fp far away) and ``−fp``
  before the first window.
* **A threshold's score**: rows whose anomaly score is ≥ the threshold are detections. Each window
  that has scorable rows contributes ``−fn`` if none of them is detected, else the largest weight
  of its detected rows (its earliest detection); every detected row outside windows adds its
  (negative) weight. Nothing else counts: true negatives are free.
* **Threshold optimiser** (the *sweeper*): the rows of **all** files are sorted by anomaly score,
  highest first; the candidate thresholds are 1.1 (nothing detected) and every distinct anomaly
  score; the one with the largest corpus total wins (ties: the higher threshold). Each file is then
  scored at that one threshold; the corpus score is the sum.
* **Profiles** (``config/profiles.json``): ``standard`` (tp 1, fn 1, fp 0.11),
  ``reward_low_FP_rate`` (fp 0.22), ``reward_low_FN_rate`` (fn 2.0).
* **Normalisation**: ``100·(score − null)/(perfect − null)``, where *null* is the optimised score
  of the null detector (0.5 on every row) and *perfect* is ``tp`` × the number of windows in the
  label file. 0 is the null detector, 100 a perfect one.

One place where this differs from NAB's code: if the chosen threshold is below every score of a
file, NAB finds no matching row and fails; here the file is scored with all its rows detected
(what the threshold means).

>>> t = list(range(10))
>>> f = ScoredFile("f", t, [0.0] * 10, [(4, 6)])
>>> [(r.threshold, round(r.score, 3)) for r in score_by_threshold(sweep(f, STANDARD), STANDARD)]
[(1.1, -1.0), (0.0, 0.358)]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "NULL_SCORE",
    "PROBATIONARY_PERCENT",
    "PROFILES",
    "REWARD_LOW_FN",
    "REWARD_LOW_FP",
    "STANDARD",
    "CostMatrix",
    "Point",
    "ScoredFile",
    "ThresholdScore",
    "normalized",
    "null_score",
    "optimize",
    "perfect_score",
    "probationary_length",
    "scaled_sigmoid",
    "score_at",
    "score_by_threshold",
    "sweep",
]

PROBATIONARY_PERCENT = 0.15
#: The anomaly score of NAB's null detector, on every row.
NULL_SCORE = 0.5
#: The first candidate threshold: above any score, so nothing is detected.
_START_THRESHOLD = 1.1


@dataclass(frozen=True)
class CostMatrix:
    """The weights of one NAB profile."""

    tp: float
    fp: float
    fn: float


STANDARD = CostMatrix(tp=1.0, fp=0.11, fn=1.0)
REWARD_LOW_FP = CostMatrix(tp=1.0, fp=0.22, fn=1.0)
REWARD_LOW_FN = CostMatrix(tp=1.0, fp=0.11, fn=2.0)
PROFILES: dict[str, CostMatrix] = {
    "standard": STANDARD,
    "reward_low_FP_rate": REWARD_LOW_FP,
    "reward_low_FN_rate": REWARD_LOW_FN,
}


@dataclass
class ScoredFile:
    """One data file's rows: timestamps (any hashable values, in order), anomaly scores in
    [0, 1], and windows as (first, last) timestamps that occur among ``timestamps``."""

    name: str
    timestamps: Sequence[object]
    scores: Sequence[float]
    windows: Sequence[tuple[object, object]]


@dataclass(frozen=True)
class Point:
    """A scorable row: its anomaly score, its weight (sweep score) and its window (None: outside)."""

    anomaly_score: float
    weight: float
    window: str | None


@dataclass(frozen=True)
class ThresholdScore:
    """The score at one threshold, with NAB's row counts (tp/fp: detected rows in/out of windows)."""

    threshold: float
    score: float
    tp: int
    tn: int
    fp: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.tn + self.fp + self.fn


def scaled_sigmoid(position: float) -> float:
    """NAB's scaled sigmoid: 0.987 at −1 (window start), 0 at 0 (past its end), −1 beyond 3."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probationary_length(n_rows: int, percent: float = PROBATIONARY_PERCENT) -> float:
    """Rows before this index are in the probationary period."""
    return min(math.floor(percent * n_rows), percent * 5000)


def sweep(f: ScoredFile, cost: CostMatrix, percent: float = PROBATIONARY_PERCENT) -> list[Point]:
    """The scorable rows of ``f`` (after the probationary period) with their weights."""
    if len(f.timestamps) != len(f.scores):
        raise ValueError(f"{f.name}: {len(f.timestamps)} timestamps but {len(f.scores)} scores")
    index: dict[object, int] = {}
    for i, t in enumerate(f.timestamps):
        index.setdefault(t, i)  # a repeated timestamp: its first row, as NAB's list.index
    spans: list[tuple[int, int]] = []
    for a, b in f.windows:
        if a not in index or b not in index:
            raise ValueError(f"{f.name}: window ({a}, {b}) does not start and end at timestamps of the file")
        spans.append((index[a], index[b]))
    spans.sort()
    for (_, b0), (a1, _) in itertools.pairwise(spans):
        if a1 <= b0:
            raise ValueError(f"{f.name}: windows overlap")
    max_tp = scaled_sigmoid(-1.0)
    first = probationary_length(len(f.timestamps), percent)
    starts = {a: (a, b) for a, b in spans}
    out: list[Point] = []
    current: tuple[int, int] | None = None
    prev: tuple[int, int] | None = None  # (right edge, width) of the last window passed
    for i, s in enumerate(f.scores):
        if current is None and i in starts:
            current = starts[i]
        name: str | None = None
        if current is not None:
            left, right = current
            width = right - left + 1
            weight = scaled_sigmoid(-(right - i + 1) / width) * cost.tp / max_tp
            name = f"{f.name}|{f.timestamps[left]}"
        elif prev is None:
            weight = -1.0 * cost.fp
        else:
            weight = scaled_sigmoid(abs(prev[0] - i) / (prev[1] - 1)) * cost.fp
        if i >= first:
            out.append(Point(float(s), weight, name))
        if current is not None and i == current[1]:
            prev = (current[1], current[1] - current[0] + 1)
            current = None
    return out


def score_by_threshold(points: Sequence[Point], cost: CostMatrix) -> list[ThresholdScore]:
    """The score at 1.1 (nothing detected) and at each distinct anomaly score, highest first."""
    ranked = sorted(points, key=lambda p: p.anomaly_score, reverse=True)
    windows: dict[str, float] = {p.window: -cost.fn for p in ranked if p.window is not None}
    fp_sum = 0.0
    tn = sum(1 for p in ranked if p.window is None)
    fn = len(ranked) - tn
    tp = fp = 0
    threshold = _START_THRESHOLD
    out: list[ThresholdScore] = []
    for p in ranked:
        if p.anomaly_score != threshold:
            out.append(ThresholdScore(threshold, fp_sum + sum(windows.values()), tp, tn, fp, fn))
            threshold = p.anomaly_score
        if p.window is None:
            fp, tn = fp + 1, tn - 1
            fp_sum += p.weight
        else:
            tp, fn = tp + 1, fn - 1
            windows[p.window] = max(windows[p.window], p.weight)
    out.append(ThresholdScore(threshold, fp_sum + sum(windows.values()), tp, tn, fp, fn))
    return out


def optimize(files: Sequence[ScoredFile], cost: CostMatrix, percent: float = PROBATIONARY_PERCENT) -> ThresholdScore:
    """The threshold with the best corpus score (ties: the higher threshold)."""
    points = [p for f in files for p in sweep(f, cost, percent)]
    scores = score_by_threshold(points, cost)
    return max(scores, key=lambda s: s.score)  # max keeps the first of equals: the higher threshold


def score_at(f: ScoredFile, threshold: float, cost: CostMatrix, percent: float = PROBATIONARY_PERCENT
             ) -> ThresholdScore:
    """The score of one file with detections at anomaly scores ≥ ``threshold``."""
    rows = score_by_threshold(sweep(f, cost, percent), cost)
    prev = rows[0]
    for r in rows:
        if r.threshold == threshold:
            return r
        if r.threshold < threshold:
            return prev
        prev = r
    return rows[-1]


def null_score(files: Sequence[ScoredFile], cost: CostMatrix, percent: float = PROBATIONARY_PERCENT) -> float:
    """The corpus score of NAB's null detector (0.5 on every row), at its optimised threshold."""
    null = [ScoredFile(f.name, f.timestamps, [NULL_SCORE] * len(f.timestamps), f.windows) for f in files]
    best = optimize(null, cost, percent)
    return sum(score_at(f, best.threshold, cost, percent).score for f in null)


def perfect_score(n_windows: int, cost: CostMatrix) -> float:
    """Every window detected at its first row, no false positive."""
    return n_windows * cost.tp


def normalized(score: float, null: float, perfect: float) -> float:
    """NAB's reported figure: 0 for the null detector, 100 for a perfect one."""
    return 100.0 * (score - null) / (perfect - null)
