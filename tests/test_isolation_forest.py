"""aggregator.analysis.forest.isolation_forest: scikit-learn parity, the estimator contract, saving, explanations."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import IsolationForest as SklearnIsolationForest
from sklearn.metrics import roc_auc_score

from aggregator.analysis.forest.isolation_forest import IsolationForest, NotFittedError, average_path_length

TABULAR = Path(__file__).resolve().parents[1] / "testdata" / "tabular"
HTTP_SUBSAMPLE = 50_000

# Single-seed AUCs of either implementation vary by up to ~0.05 on satellite and mammography
# (seed std about 0.01-0.015), so the 0.01 bound is checked on the mean over several seeds.
# Observed mean differences (ours - scikit-learn) over these seeds: mammography +0.002,
# satellite +0.002, shuttle +0.0003, http -0.0000.
PARITY_CASES = [
    ("23_mammography", 20),
    ("30_satellite", 20),
    ("32_shuttle", 3),
    ("16_http", 3),
]


def load_tabular(name: str) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    path = TABULAR / f"{name}.npz"
    with np.load(path, allow_pickle=False) as data:
        X, y = data["X"].astype(np.float64), data["y"]
    if len(X) > HTTP_SUBSAMPLE:
        rows = np.random.default_rng(0).choice(len(X), HTTP_SUBSAMPLE, replace=False)
        X, y = X[rows], y[rows]
    return X, y


@pytest.fixture(scope="module")
def gaussian() -> np.ndarray[Any, Any]:
    return np.random.default_rng(7).normal(size=(2000, 4))


@pytest.mark.system
@pytest.mark.parametrize(("name", "seeds"), PARITY_CASES)
def test_auc_within_001_of_sklearn(name: str, seeds: int) -> None:
    X, y = load_tabular(name)
    ours, theirs = [], []
    for seed in range(seeds):
        forest = IsolationForest(n_estimators=100, max_samples=256, random_state=seed).fit(X)
        reference = SklearnIsolationForest(n_estimators=100, max_samples=256, random_state=seed).fit(X)
        ours.append(roc_auc_score(y, -forest.score_samples(X)))
        theirs.append(roc_auc_score(y, -reference.score_samples(X)))
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.01, (np.mean(ours), np.mean(theirs))


def test_average_path_length_matches_the_paper() -> None:
    n = np.array([0, 1, 2, 3, 256])
    expected = [0.0, 0.0, 1.0, 2 * (np.log(2) + 0.5772156649) - 4 / 3, 2 * (np.log(255) + 0.5772156649) - 510 / 256]
    np.testing.assert_allclose(average_path_length(n), expected, rtol=1e-9)


def test_fit_returns_self_and_keeps_params_untouched(gaussian: np.ndarray[Any, Any]) -> None:
    forest = IsolationForest(n_estimators=10, max_samples=0.5, random_state=3)
    assert forest.fit(gaussian) is forest
    assert forest.get_params() == {
        "n_estimators": 10,
        "max_samples": 0.5,
        "contamination": "auto",
        "max_features": 1.0,
        "random_state": 3,
    }
    assert forest.max_samples_ == 1000
    assert forest.feature_.shape == (10, 2**10 - 1)
    assert forest.leaf_path_length_.shape == (10, 2**10)
    assert forest.offset_ == -0.5


def test_same_seed_same_forest(gaussian: np.ndarray[Any, Any]) -> None:
    a = IsolationForest(random_state=11).fit(gaussian)
    b = IsolationForest(random_state=11).fit(gaussian)
    np.testing.assert_array_equal(a.score_samples(gaussian), b.score_samples(gaussian))


def test_scores_are_in_range_and_outliers_score_lower(gaussian: np.ndarray[Any, Any]) -> None:
    forest = IsolationForest(random_state=0).fit(gaussian)
    scores = forest.score_samples(np.vstack([np.zeros(4), np.full(4, 6.0)]))
    assert -1.0 < scores[1] < scores[0] < 0.0
    assert scores[0] > -0.5 > scores[1]


def test_predict_agrees_with_decision_function(gaussian: np.ndarray[Any, Any]) -> None:
    forest = IsolationForest(contamination=0.1, random_state=0).fit(gaussian)
    decision = forest.decision_function(gaussian)
    np.testing.assert_allclose(decision, forest.score_samples(gaussian) - forest.offset_)
    np.testing.assert_array_equal(forest.predict(gaussian), np.where(decision < 0, -1, 1))


@pytest.mark.parametrize("contamination", [0.01, 0.05, 0.2, 0.5])
def test_contamination_is_the_share_flagged_in_training(gaussian: np.ndarray[Any, Any], contamination: float) -> None:
    forest = IsolationForest(contamination=contamination, random_state=1).fit(gaussian)
    flagged = float(np.mean(forest.predict(gaussian) == -1))
    assert flagged == pytest.approx(contamination, abs=0.002)


def test_max_features_limits_the_features_each_tree_splits_on(gaussian: np.ndarray[Any, Any]) -> None:
    forest = IsolationForest(n_estimators=20, max_features=2, random_state=0).fit(gaussian)
    for tree in forest.feature_:
        assert len(set(tree[tree >= 0].tolist())) <= 2


def test_constant_data_gives_one_leaf_per_tree() -> None:
    X = np.ones((50, 3))
    forest = IsolationForest(n_estimators=5, random_state=0).fit(X)
    assert (forest.feature_ == -1).all()
    expected = -(2.0 ** -(average_path_length(50) / average_path_length(50)))
    np.testing.assert_allclose(forest.score_samples(X[:3]), expected)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"n_estimators": 0}, "n_estimators"),
        ({"n_estimators": 2.5}, "n_estimators"),
        ({"n_estimators": True}, "n_estimators"),
        ({"max_samples": "all"}, "max_samples"),
        ({"max_samples": 1}, "max_samples"),
        ({"max_samples": 1.5}, "max_samples"),
        ({"max_samples": 0.0}, "max_samples"),
        ({"contamination": 0.0}, "contamination"),
        ({"contamination": 0.6}, "contamination"),
        ({"contamination": "high"}, "contamination"),
        ({"max_features": 0}, "max_features"),
        ({"max_features": 1.2}, "max_features"),
        ({"max_features": 5}, "max_features"),  # more than the 4 features of the data
        ({"random_state": -1}, "random_state"),
        ({"random_state": "seed"}, "random_state"),
    ],
)
def test_invalid_params_raise_naming_the_parameter(
    gaussian: np.ndarray[Any, Any], params: dict[str, Any], name: str
) -> None:
    forest = IsolationForest(**params)  # stored untouched: checked by fit
    with pytest.raises(ValueError, match=name):
        forest.fit(gaussian)


def test_invalid_input() -> None:
    forest = IsolationForest(n_estimators=5, random_state=0)
    with pytest.raises(NotFittedError, match="not fitted"):
        forest.score_samples(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="2-D"):
        forest.fit(np.zeros(10))
    with pytest.raises(ValueError, match="at least 2 rows"):
        forest.fit(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="finite"):
        forest.fit(np.array([[0.0, np.nan], [1.0, 2.0]]))
    forest.fit(np.random.default_rng(0).normal(size=(100, 2)))
    with pytest.raises(ValueError, match="3 features"):
        forest.score_samples(np.zeros((1, 3)))


def test_round_trip_through_npz_without_pickle(gaussian: np.ndarray[Any, Any]) -> None:
    forest = IsolationForest(n_estimators=30, contamination=0.05, random_state=5).fit(gaussian)
    buffer = io.BytesIO()
    np.savez(buffer, **forest.to_arrays())
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as arrays:
        loaded = IsolationForest.from_arrays(arrays)
    assert loaded.get_params() == forest.get_params()
    assert loaded.offset_ == forest.offset_
    np.testing.assert_array_equal(loaded.score_samples(gaussian), forest.score_samples(gaussian))
    np.testing.assert_array_equal(loaded.predict(gaussian), forest.predict(gaussian))
    np.testing.assert_array_equal(loaded.feature_contributions(gaussian), forest.feature_contributions(gaussian))


def test_from_arrays_rejects_inconsistent_shapes(gaussian: np.ndarray[Any, Any]) -> None:
    arrays = IsolationForest(n_estimators=5, random_state=0).fit(gaussian).to_arrays()
    arrays["threshold"] = arrays["threshold"][:, :-1]
    with pytest.raises(ValueError, match="threshold"):
        IsolationForest.from_arrays(arrays)


def test_explain_points_at_the_anomalous_feature() -> None:
    rng = np.random.default_rng(42)
    X = rng.normal(size=(5000, 6))
    forest = IsolationForest(random_state=0).fit(X)
    # One clean anomaly per feature: that feature 7 sigma out, the others at the centre.
    clean = 7.0 * np.eye(6)
    assert [row[0][0] for row in forest.explain(clean, top=1)] == list(range(6))
    # Noisy anomalies: a random feature shifted by 6 sigma, the others ordinary draws.
    noisy = rng.normal(size=(300, 6))
    which = rng.integers(0, 6, size=300)
    noisy[np.arange(300), which] += 6.0 * rng.choice([-1.0, 1.0], size=300)
    top = np.array([row[0][0] for row in forest.explain(noisy, top=1)])
    assert np.mean(top == which) >= 0.9


def test_explain_shape_and_shares(gaussian: np.ndarray[Any, Any]) -> None:
    forest = IsolationForest(n_estimators=20, random_state=0).fit(gaussian)
    shares = forest.feature_contributions(gaussian[:50])
    assert shares.shape == (50, 4)
    assert (shares >= 0).all()
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    explained = forest.explain(gaussian[:50], top=2)
    assert len(explained) == 50
    for row, entries in zip(shares, explained, strict=True):
        assert len(entries) == 2
        assert entries[0][1] >= entries[1][1]
        assert entries[0][1] == pytest.approx(row.max())
    with pytest.raises(ValueError, match="top"):
        forest.explain(gaussian[:1], top=0)
