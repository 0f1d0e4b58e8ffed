"""Population Stability Index and Jensen–Shannon divergence between two histograms.

>>> round(psi([50, 50], [50, 50]), 6)
0.0
>>> round(js_divergence([100, 0], [0, 100]), 3)
0.955
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["js_divergence", "proportions", "psi"]

Counts = Sequence[float] | npt.NDArray[np.float64]
#: Added to every bin count so an empty bin does not make PSI infinite.
SMOOTHING = 0.5


def proportions(counts: Counts) -> npt.NDArray[np.float64]:
    c = np.asarray(counts, dtype=np.float64) + SMOOTHING
    return np.asarray(c / c.sum(), dtype=np.float64)


def psi(reference: Counts, current: Counts) -> float:
    """PSI = Σ (q − p)·ln(q / p) over bins (p reference, q current proportions, smoothed counts).

    Convention: below 0.1 no real shift, 0.1–0.25 a moderate one, above 0.25 a significant one.
    """
    p, q = proportions(reference), proportions(current)
    return float(np.sum((q - p) * np.log(q / p)))


def js_divergence(reference: Counts, current: Counts) -> float:
    """Jensen–Shannon divergence in bits (0 = same, 1 = disjoint; smoothing keeps it just below 1).

    The mean KL divergence of each distribution to their mixture.
    """
    p, q = proportions(reference), proportions(current)
    m = 0.5 * (p + q)
    return float(0.5 * np.sum(p * np.log2(p / m)) + 0.5 * np.sum(q * np.log2(q / m)))
