"""Isolation Forest (Liu, Ting & Zhou, 2008) with every tree scored in lockstep as flat arrays.

Shaped like scikit-learn's estimator; the learned forest is a handful of numpy arrays that can be
saved with :func:`numpy.savez` and loaded back without pickle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

__all__ = ["IsolationForest", "NotFittedError", "average_path_length"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: ψ when ``max_samples="auto"``: the paper's default sub-sample size.
DEFAULT_MAX_SAMPLES = 256
#: Rows scored per chunk: ``rows x n_estimators`` index arrays stay in the CPU cache.
SCORE_CHUNK_ROWS = 256
_EULER_GAMMA = 0.5772156649015329


class NotFittedError(ValueError, AttributeError):
    """Raised when a method that needs the learned forest is called before :meth:`fit`."""


def average_path_length(n: npt.ArrayLike) -> FloatArray:
    """Return c(n), the average path length of an unsuccessful search in a binary search tree.

    c(n) = 2 H(n − 1) − 2 (n − 1) / n with H(i) ≈ ln(i) + γ; c(0) = c(1) = 0 and c(2) = 1.
    It normalises path lengths, and is added at a leaf that still holds ``n`` training samples.

    >>> average_path_length([1, 2, 256]).round(3).tolist()
    [0.0, 1.0, 10.245]
    """
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + _EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


# ---------------------------------------------------------------------------------------------
# Parameter constraints: declared once, checked by ``fit``.


@dataclass(frozen=True)
class _Interval:
    kind: type[int] | type[float]
    low: float | None
    high: float | None
    closed: Literal["left", "right", "both", "neither"] = "both"

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool | np.bool_):
            return False
        if self.kind is int and not isinstance(value, int | np.integer):
            return False
        if self.kind is float and not isinstance(value, float | np.floating):
            return False
        v = float(value)  # type: ignore[arg-type]
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (v == self.low and self.closed in ("right", "neither"))):
            return False
        return not (
            self.high is not None and (v > self.high or (v == self.high and self.closed in ("left", "neither")))
        )

    def __str__(self) -> str:
        name = "an int" if self.kind is int else "a float"
        if self.high is None:
            op = ">=" if self.closed in ("left", "both") else ">"
            return f"{name} {op} {self.low}"
        left = "[" if self.closed in ("left", "both") else "("
        right = "]" if self.closed in ("right", "both") else ")"
        return f"{name} in {left}{self.low}, {self.high}{right}"


_Constraint = _Interval | str | None | type


def _describe(constraint: _Constraint) -> str:
    if constraint is None:
        return "None"
    if isinstance(constraint, str):
        return repr(constraint)
    if isinstance(constraint, type):
        return f"a {constraint.__module__}.{constraint.__qualname__}"
    return str(constraint)


def _satisfies(value: object, constraint: _Constraint) -> bool:
    if constraint is None:
        return value is None
    if isinstance(constraint, str):
        return isinstance(value, str) and value == constraint
    if isinstance(constraint, type):
        return isinstance(value, constraint)
    return constraint.accepts(value)


# ---------------------------------------------------------------------------------------------


class IsolationForest:
    """Isolation Forest anomaly detector, scored with all trees in lockstep.

    Each tree is grown on ``max_samples`` rows drawn without replacement: every node picks a
    feature at random among those not constant in the node, and a split uniformly between that
    feature's minimum and maximum there, until a node holds one row, cannot be split, or sits at
    depth ``ceil(log2(max_samples))``. Anomalies are isolated by few splits, so a row's average
    path length E[h(x)] over the trees, normalised by c(ψ), is its anomaly score.

    Each tree is stored as a *complete* binary tree of that depth (heap layout, children of node
    ``i`` at ``2i + 1`` and ``2i + 2``); a leaf above the last level becomes a pass-through node
    whose threshold is +inf, so every row reaches the last level after exactly ``depth`` steps.
    Scoring is then ``depth`` vectorised steps over an array of (row, tree) positions: no Python
    loop over trees or rows.

    Parameters
    ----------
    n_estimators : int, default=100
        Number of trees.
    max_samples : "auto", int or float, default="auto"
        Rows drawn per tree (ψ): ``"auto"`` is ``min(256, n_samples)``, an int is used as is (at
        most ``n_samples``), a float is that fraction of ``n_samples``.
    contamination : "auto" or float, default="auto"
        Expected share of anomalies in the training data; sets :attr:`offset_`. ``"auto"`` uses
        the paper's threshold: a score of -0.5.
    max_features : int or float, default=1.0
        Features each tree may split on (drawn without replacement per tree): an int count, or a
        float fraction of ``n_features``.
    random_state : None, int or numpy.random.Generator, default=None
        Seed of the tree construction; an int makes ``fit`` reproducible.

    Attributes
    ----------
    feature_ : ndarray of shape (n_estimators, 2**depth - 1), int32
        Split feature of each internal node of each tree, -1 where the node does not split.
    threshold_ : ndarray of shape (n_estimators, 2**depth - 1), float64
        Split value: a row goes right when ``x[feature] > threshold``; +inf where no split.
    node_size_ : ndarray of shape (n_estimators, 2**(depth + 1) - 1), int32
        Training rows reaching each node (internal nodes then leaves, heap order).
    leaf_path_length_ : ndarray of shape (n_estimators, 2**depth), float64
        Path length credited to a row ending in each leaf: the depth at which it was isolated
        plus c(rows left there).
    max_samples_ : int
        ψ, the rows drawn per tree.
    n_features_in_ : int
        Number of features seen in ``fit``.
    offset_ : float
        ``decision_function = score_samples - offset_``.

    References
    ----------
    .. [1] Liu, F. T., Ting, K. M. and Zhou, Z.-H. "Isolation Forest". Proceedings of the 8th
       IEEE International Conference on Data Mining (ICDM 2008), pp. 413-422.
       doi:10.1109/ICDM.2008.17
    .. [2] Liu, F. T., Ting, K. M. and Zhou, Z.-H. "Isolation-based anomaly detection". ACM
       Transactions on Knowledge Discovery from Data 6(1), 2012.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(1000, 2))
    >>> forest = IsolationForest(random_state=0).fit(X)
    >>> forest.predict([[0.0, 0.0], [6.0, 6.0]]).tolist()
    [1, -1]
    """

    _parameter_constraints: Mapping[str, tuple[_Constraint, ...]] = {
        "n_estimators": (_Interval(int, 1, None, closed="left"),),
        "max_samples": ("auto", _Interval(int, 2, None, closed="left"), _Interval(float, 0.0, 1.0, closed="right")),
        "contamination": ("auto", _Interval(float, 0.0, 0.5, closed="right")),
        "max_features": (_Interval(int, 1, None, closed="left"), _Interval(float, 0.0, 1.0, closed="right")),
        "random_state": (None, _Interval(int, 0, 2**32 - 1), np.random.Generator),
    }

    feature_: npt.NDArray[np.int32]
    threshold_: FloatArray
    node_size_: npt.NDArray[np.int32]
    leaf_path_length_: FloatArray
    max_samples_: int
    n_features_in_: int
    offset_: float

    def __init__(
        self,
        *,
        n_estimators: int = 100,
        max_samples: Literal["auto"] | int | float = "auto",
        contamination: Literal["auto"] | float = "auto",
        max_features: int | float = 1.0,
        random_state: int | np.random.Generator | None = None,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.contamination = contamination
        self.max_features = max_features
        self.random_state = random_state

    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters, as given."""
        return {name: getattr(self, name) for name in self._parameter_constraints}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"IsolationForest({args})"

    def _validate_params(self) -> None:
        for name, constraints in self._parameter_constraints.items():
            value = getattr(self, name)
            if not any(_satisfies(value, c) for c in constraints):
                allowed = ", ".join(_describe(c) for c in constraints[:-1])
                allowed = f"{allowed} or {_describe(constraints[-1])}" if allowed else _describe(constraints[0])
                raise ValueError(f"IsolationForest: {name} must be {allowed}; got {value!r}")

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, X: npt.ArrayLike) -> Self:
        """Grow the forest on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows, finite numbers, at least two of them.

        Returns
        -------
        self : IsolationForest
            The fitted estimator.
        """
        self._validate_params()
        X = _as_matrix(X, None)
        n, n_features = X.shape
        if n < 2:
            raise ValueError(f"IsolationForest: fit needs at least 2 rows; got {n}")
        psi = self._resolve_max_samples(n)
        n_tree_features = self._resolve_max_features(n_features)
        rng = np.random.default_rng(self.random_state)
        t = self.n_estimators
        depth = math.ceil(math.log2(psi))

        rows = np.stack([rng.choice(n, size=psi, replace=False) for _ in range(t)])
        allowed = np.ones((t, n_features), dtype=bool)
        if n_tree_features < n_features:
            allowed[:] = False
            for i in range(t):
                allowed[i, rng.choice(n_features, size=n_tree_features, replace=False)] = True

        samples = X[rows.ravel()]  # (t * psi, n_features), tree-major
        sample_tree = np.repeat(np.arange(t), psi)
        sample_node = np.zeros(t * psi, dtype=np.intp)  # position within its tree's current level
        feature = np.full((t, 2**depth - 1), -1, dtype=np.int32)
        threshold = np.full((t, 2**depth - 1), np.inf)
        node_size = np.zeros((t, 2 ** (depth + 1) - 1), dtype=np.int32)
        # Path length of the leaf that is, or is above, each node of the current level (nan: none).
        leaf_value = np.full(t, np.nan)

        for d in range(depth + 1):
            width = 2**d
            key = sample_tree * width + sample_node
            counts = np.bincount(key, minlength=t * width)
            node_size[:, width - 1 : 2 * width - 1] = counts.reshape(t, width)
            is_open = np.isnan(leaf_value) & (counts > 0)
            if d == depth:
                leaf_value[is_open] = d + average_path_length(counts[is_open])
                break
            # Min and max of every feature in every node of this level, over sorted samples.
            grouped = samples[np.argsort(key, kind="stable")]
            nodes = np.flatnonzero(counts)
            starts = (np.cumsum(counts) - counts)[nodes]
            lo = np.minimum.reduceat(grouped, starts, axis=0)
            hi = np.maximum.reduceat(grouped, starts, axis=0)
            candidates = (hi > lo) & allowed[nodes // width]
            splits = is_open[nodes] & (counts[nodes] >= 2) & candidates.any(axis=1)
            leaves = nodes[is_open[nodes] & ~splits]
            leaf_value[leaves] = d + average_path_length(counts[leaves])

            # A random candidate feature per splitting node, then a uniform threshold in [lo, hi).
            draw = np.where(candidates[splits], rng.random((int(splits.sum()), n_features)), -1.0)
            f = np.argmax(draw, axis=1)
            lo_f = lo[splits, f]
            hi_f = hi[splits, f]
            thr = lo_f + rng.random(f.size) * (hi_f - lo_f)
            thr = np.where(thr >= hi_f, lo_f, thr)  # rounding up to hi would leave the right child empty
            split_nodes = nodes[splits]
            level_feature = np.full(t * width, -1, dtype=np.int32)
            level_threshold = np.full(t * width, np.inf)
            level_feature[split_nodes] = f
            level_threshold[split_nodes] = thr
            feature[:, width - 1 : 2 * width - 1] = level_feature.reshape(t, width)
            threshold[:, width - 1 : 2 * width - 1] = level_threshold.reshape(t, width)

            column = np.maximum(level_feature[key], 0)
            go_right = samples[np.arange(samples.shape[0]), column] > level_threshold[key]
            sample_node = 2 * sample_node + go_right
            leaf_value = np.repeat(leaf_value, 2)

        self.feature_ = feature
        self.threshold_ = threshold
        self.node_size_ = node_size
        self.leaf_path_length_ = leaf_value.reshape(t, 2**depth)
        self.max_samples_ = psi
        self.n_features_in_ = n_features
        self._compile()
        if self.contamination == "auto":
            self.offset_ = -0.5
        else:
            self.offset_ = float(np.percentile(self.score_samples(X), 100.0 * float(self.contamination)))
        return self

    def _resolve_max_samples(self, n: int) -> int:
        if self.max_samples == "auto":
            return min(DEFAULT_MAX_SAMPLES, n)
        if isinstance(self.max_samples, float | np.floating):
            return max(2, int(self.max_samples * n))
        return min(int(self.max_samples), n)

    def _resolve_max_features(self, n_features: int) -> int:
        if isinstance(self.max_features, float | np.floating):
            return max(1, int(self.max_features * n_features))
        if self.max_features > n_features:
            raise ValueError(
                f"IsolationForest: max_features must be at most n_features={n_features}; got {self.max_features}"
            )
        return int(self.max_features)

    def _compile(self) -> None:
        """Lay all trees out as one heap whose level ``d`` holds ``T * 2**d`` nodes, tree by tree.

        Tree ``t`` starts at position ``T + t`` and a row at position ``p`` moves to ``2p`` or
        ``2p + 1``: the same step for every tree, so one array op advances all of them.
        """
        t, internal = self.feature_.shape
        depth = int(math.log2(internal + 1))
        size = t * 2 ** (depth + 1)
        column = np.zeros(size, dtype=np.intp)
        threshold = np.full(size, np.inf)
        log_size = np.zeros(size)
        with np.errstate(divide="ignore"):
            node_log2 = np.log2(self.node_size_.astype(np.float64))
        for d in range(depth + 1):
            width = 2**d
            span = slice(t * width, 2 * t * width)
            log_size[span] = node_log2[:, width - 1 : 2 * width - 1].ravel()
            if d < depth:
                column[span] = np.maximum(self.feature_[:, width - 1 : 2 * width - 1], 0).ravel()
                threshold[span] = self.threshold_[:, width - 1 : 2 * width - 1].ravel()
        self._depth = depth
        self._column = column
        self._split_value = threshold
        self._log2_size = log_size
        self._leaf_flat = np.ascontiguousarray(self.leaf_path_length_, dtype=np.float64).ravel()

    # -- scoring -------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "_column"):
            raise NotFittedError("IsolationForest is not fitted yet: call fit(X) or from_arrays(...) first")

    def _walk(self, X: FloatArray, contributions: FloatArray | None) -> FloatArray:
        """Return the path-length sum over trees of every row of ``X`` (one chunk).

        With ``contributions`` (n_rows, n_features), also add there, per row and feature, the
        isolation bits of each split on the row's paths (see :meth:`feature_contributions`).
        """
        n, n_features = X.shape
        t = self.feature_.shape[0]
        flat = X.ravel()
        position = np.tile(np.arange(t, 2 * t, dtype=np.intp), n)  # (row, tree) row-major
        row_base = np.repeat(np.arange(0, n * n_features, n_features, dtype=np.intp), t)
        column = np.empty_like(position)
        value = np.empty(position.size)
        split = np.empty(position.size)
        right = np.empty(position.size, dtype=bool)
        # Positions are always in range: mode="clip" skips numpy's bounds checks (about 2x faster).
        for _ in range(self._depth):
            np.take(self._column, position, out=column, mode="clip")
            if contributions is not None:
                before = self._log2_size[position]
            column += row_base
            np.take(flat, column, out=value, mode="clip")
            np.take(self._split_value, position, out=split, mode="clip")
            np.greater(value, split, out=right)
            position <<= 1
            position += right
            if contributions is not None:
                bits = before - self._log2_size[position]
                per_cell = np.bincount(column, weights=bits, minlength=contributions.size)
                contributions += per_cell.reshape(contributions.shape)
        position -= t << self._depth
        path_lengths: FloatArray = np.take(self._leaf_flat, position, mode="clip").reshape(n, t)
        summed: FloatArray = path_lengths.sum(axis=1)
        return summed

    def _matrix(self, X: npt.ArrayLike) -> FloatArray:
        self._check_fitted()
        return _as_matrix(X, self.n_features_in_)

    def _mean_path_length(self, matrix: FloatArray, contributions: FloatArray | None = None) -> FloatArray:
        total = np.empty(matrix.shape[0])
        for start in range(0, matrix.shape[0], SCORE_CHUNK_ROWS):
            stop = start + SCORE_CHUNK_ROWS
            part = None if contributions is None else contributions[start:stop]
            total[start:stop] = self._walk(matrix[start:stop], part)
        total /= self.feature_.shape[0]
        return total

    def score_samples(self, X: npt.ArrayLike) -> FloatArray:
        """Return the anomaly score of each row: ``-2 ** (-E[h(x)] / c(max_samples_))``.

        The opposite of the paper's score s(x, ψ), as in scikit-learn: the lower, the more
        abnormal; around -0.5 for ordinary rows, towards -1 for anomalies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        mean_path = self._mean_path_length(self._matrix(X))
        return -np.exp2(-mean_path / average_path_length(self.max_samples_))

    def decision_function(self, X: npt.ArrayLike) -> FloatArray:
        """Return ``score_samples(X) - offset_``: negative for the rows :meth:`predict` calls outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.int_]:
        """Return -1 for outliers and 1 for inliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    # -- explanation -------------------------------------------------------------------------------

    def feature_contributions(self, X: npt.ArrayLike) -> FloatArray:
        """Return, per row and feature, the share of the row's isolation owed to that feature.

        Each split on a row's path in a tree that sends the row from a node holding ``m``
        training rows to a child holding ``m'`` isolates it by ``log2(m / m')`` bits; the bits
        along one path add up to ``log2(ψ / leaf size)``. Bits are summed per split feature over
        all trees, then divided by the row's total. A split on the feature that makes a row
        abnormal sends it to a nearly empty child (many bits at once); splits on ordinary
        features halve the node on average (about one bit each).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        shares : ndarray of shape (n_samples, n_features)
            Non-negative, each row sums to 1 (0 for a row never split, e.g. a constant forest).
        """
        matrix = self._matrix(X)
        bits = np.zeros_like(matrix)
        self._mean_path_length(matrix, bits)
        total = bits.sum(axis=1, keepdims=True)
        shares = np.zeros_like(bits)
        np.divide(bits, total, out=shares, where=total > 0)
        return shares

    def explain(self, X: npt.ArrayLike, top: int = 3) -> list[list[tuple[int, float]]]:
        """Return, per row, the ``top`` features that drove its isolation, most important first.

        Each entry is ``(feature_index, share)`` from :meth:`feature_contributions`; features
        with no share are left out.
        """
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"IsolationForest.explain: top must be an int >= 1; got {top!r}")
        shares = self.feature_contributions(X)
        order = np.argsort(-shares, axis=1, kind="stable")[:, :top]
        return [
            [(int(f), float(row[f])) for f in ranked if row[f] > 0] for row, ranked in zip(shares, order, strict=True)
        ]

    # -- saving ------------------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Return the fitted forest as plain arrays: ``np.savez(path, **forest.to_arrays())``.

        The constructor parameters travel as a JSON string (an int or None ``random_state``
        only; a Generator is saved as None). Load with ``np.load(path, allow_pickle=False)``.
        """
        self._check_fitted()
        params = self.get_params()
        if not isinstance(params["random_state"], int | None):
            params["random_state"] = None
        for name in ("n_estimators", "max_samples", "max_features", "contamination"):
            if isinstance(params[name], np.generic):
                params[name] = params[name].item()
        return {
            "feature": self.feature_,
            "threshold": self.threshold_,
            "node_size": self.node_size_,
            "leaf_path_length": self.leaf_path_length_,
            "max_samples": np.array(self.max_samples_, dtype=np.int64),
            "n_features_in": np.array(self.n_features_in_, dtype=np.int64),
            "offset": np.array(self.offset_, dtype=np.float64),
            "params": np.array(json.dumps(params)),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, npt.ArrayLike]) -> IsolationForest:
        """Rebuild a fitted forest from :meth:`to_arrays` output (or an ``np.load`` of it)."""
        forest = cls(**json.loads(str(np.asarray(arrays["params"]))))
        feature = np.asarray(arrays["feature"], dtype=np.int32)
        t, internal = feature.shape if feature.ndim == 2 else (0, 0)
        depth = int(math.log2(internal + 1)) if internal > 0 else -1
        shapes = {
            "feature": (t, 2**depth - 1),
            "threshold": (t, 2**depth - 1),
            "node_size": (t, 2 ** (depth + 1) - 1),
            "leaf_path_length": (t, 2**depth),
        }
        for name, shape in shapes.items():
            if depth < 0 or np.shape(arrays[name]) != shape:
                raise ValueError(f"IsolationForest.from_arrays: {name} has shape {np.shape(arrays[name])}")
        forest.feature_ = feature
        forest.threshold_ = np.asarray(arrays["threshold"], dtype=np.float64)
        forest.node_size_ = np.asarray(arrays["node_size"], dtype=np.int32)
        forest.leaf_path_length_ = np.asarray(arrays["leaf_path_length"], dtype=np.float64)
        forest.max_samples_ = int(np.asarray(arrays["max_samples"]))
        forest.n_features_in_ = int(np.asarray(arrays["n_features_in"]))
        forest.offset_ = float(np.asarray(arrays["offset"]))
        if feature.size and int(feature.max()) >= forest.n_features_in_:
            raise ValueError("IsolationForest.from_arrays: feature refers past n_features_in")
        forest._compile()
        return forest


def _as_matrix(X: npt.ArrayLike, n_features: int | None) -> FloatArray:
    matrix = np.ascontiguousarray(X, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"IsolationForest: X must be 2-D (n_samples, n_features); got shape {matrix.shape}")
    if n_features is not None and matrix.shape[1] != n_features:
        raise ValueError(f"IsolationForest: X has {matrix.shape[1]} features, the forest was fitted on {n_features}")
    if not np.isfinite(matrix).all():
        raise ValueError("IsolationForest: X must be finite (no NaN or inf)")
    return matrix
