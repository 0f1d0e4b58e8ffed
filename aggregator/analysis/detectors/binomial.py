"""The significance of a binomial excess as a z score, from the exact tail.

``(k − n·p) / sqrt(n·p·(1 − p))`` is the normal approximation of a binomial count: good when ``n·p`` is
large, far too bold when it is a few calls — 12 calls at the limit of 86 against a 4 % baseline is
z 4.8 by the approximation (a one-sided p of 8·10⁻⁷) while the exact tail is 1.5·10⁻⁴, 200 times more
likely: at a few thousand key-buckets a day such a bucket is a daily false alert. :func:`binomial_z`
gives the z whose normal tail equals the exact binomial tail ``P(X ≥ k)``, so a ``z_threshold`` keeps
the meaning it has for large counts.
"""

from __future__ import annotations

import math
from statistics import NormalDist

__all__ = ["binomial_z"]

_NORMAL = NormalDist()


def binomial_z(k: float, n: float, p: float) -> float:
    """The z of ``P(X ≥ k)`` for ``X ~ Binomial(n, p)`` (counts rounded; ``0 < p < 1``): ``Φ⁻¹(1 − tail)``.

    At or below the mean it is the normal approximation (no excess: nothing to be exact about)."""
    n_i, k_i = round(n), round(k)
    approx = (k - n * p) / math.sqrt(n * p * (1 - p))
    if k_i <= n * p or k_i > n_i or n_i <= 0:
        return approx
    log_p, log_q = math.log(p), math.log1p(-p)
    # terms from k upward: they fall off geometrically beyond the mean, so few are needed
    log_first = (math.lgamma(n_i + 1) - math.lgamma(k_i + 1) - math.lgamma(n_i - k_i + 1)
                 + k_i * log_p + (n_i - k_i) * log_q)
    total, term, j = 1.0, 1.0, k_i
    while j < n_i and term > 1e-17 * total:
        term *= (n_i - j) / (j + 1) * p / (1 - p)
        total += term
        j += 1
    log_tail = log_first + math.log(total)
    if log_tail < -700.0:  # beyond float range: the excess is enormous either way
        return max(approx, 37.0)
    return -_NORMAL.inv_cdf(min(math.exp(log_tail), 0.5))
