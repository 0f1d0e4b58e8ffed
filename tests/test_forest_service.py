"""The Isolation Forest service: background training per model group, outlier candidates, persistence."""

from __future__ import annotations

import itertools
import json
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import aggregator.analysis.forest.consumer as fs
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.forest.consumer import ForestConfig, ForestConsumer, TrainedForest
from aggregator.analysis.pipeline import restore, save
from sentinel.config import ConfigError
from sentinel.model import NUMERIC_COLUMNS, STRING_COLUMNS, FeatureBatch
from sentinel.wire import WireBatch

MODEL = "gpt-4o"
_seq = itertools.count()


def make_batch(n: int, *, model: str | None = MODEL, seed: int = 0, latency_x: float = 1.0,
               tokens_x: float = 1.0, anomalies: int = 0, prefix: str = "t") -> FeatureBatch:
    """``n`` ordinary calls; the last ``anomalies`` rows get ``latency_x`` x latency and ``tokens_x`` x input tokens."""
    rng = np.random.default_rng(seed)
    latency = rng.lognormal(np.log(800.0), 0.25, n)
    ttft = rng.lognormal(np.log(200.0), 0.25, n)
    tokens_in = np.round(rng.lognormal(np.log(500.0), 0.3, n))
    tokens_out = np.round(rng.lognormal(np.log(200.0), 0.3, n))
    if anomalies:
        latency[n - anomalies:] *= latency_x
        tokens_in[n - anomalies:] *= tokens_x
    numeric: dict[str, Any] = {
        "time_unix_nano": 1_700_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 1_000_000,
        "latency_ms": latency,
        "ttft_ms": ttft,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "tokens_per_s": tokens_out / (latency / 1000.0),
        "cost_usd": tokens_in * 2.5e-6 + tokens_out * 1e-5,
        "is_error": np.zeros(n, dtype=np.uint8),
    }
    assert set(numeric) == set(NUMERIC_COLUMNS)
    strings: dict[str, list[str | None]] = {k: [None] * n for k in STRING_COLUMNS}
    strings["service"] = ["chat"] * n
    strings["region"] = ["eu-west-1"] * n
    strings["request_model"] = [model] * n
    strings["trace_id"] = [f"{prefix}{seed}-{i}" for i in range(n)]
    return FeatureBatch(n=n, numeric=numeric, strings=strings)


def feed(service: ForestConsumer, batch: FeatureBatch) -> None:
    found = service.consume(WireBatch(sidecar="sc", seq=next(_seq), batch=batch), arrival_ns=0)
    if found and isinstance(service, Fed):
        service.sink(found)


def wait_trained(service: ForestConsumer, group: str | None = MODEL, *, not_this: object = None,
                 timeout: float = 15.0) -> TrainedForest:
    """Poll (bounded) until ``group`` has a forest (other than ``not_this``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = service.model(group)
        if model is not None and model is not not_this:
            return model
        time.sleep(0.005)
    raise AssertionError(f"group {group!r} was not trained within {timeout} s")


def warm(service: ForestConsumer) -> TrainedForest:
    """Three clean batches of 500 rows, then the forest they trained."""
    for seed in range(3):
        feed(service, make_batch(500, seed=seed))
    return wait_trained(service)


class Sink:
    def __init__(self) -> None:
        self.calls: list[list[Candidate]] = []

    def __call__(self, candidates: list[Candidate]) -> None:
        self.calls.append(candidates)

    @property
    def all(self) -> list[Candidate]:
        return [c for call in self.calls for c in call]


class Fed(ForestConsumer):
    """A forest consumer whose returned candidates :func:`feed` hands to ``sink``."""

    def __init__(self, config: ForestConfig, data_dir: Path, sink: Sink) -> None:
        super().__init__(config, data_dir)
        self.sink = sink


def config(**overrides: Any) -> ForestConfig:
    # Every row scored: these tests plant outliers and look for each one (sampling has its own tests).
    base: dict[str, Any] = {"window_rows": 4000, "min_train_rows": 1000, "retrain_every_rows": 2000,
                            "random_state": 0, "score_sample_rows": 0}
    return ForestConfig(**{**base, **overrides})


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def trained(tmp_path: Path, sink: Sink) -> Any:
    service = Fed(config(), tmp_path, sink)
    for seed in range(4):
        feed(service, make_batch(500, seed=seed))
    wait_trained(service)
    yield service
    service.shutdown()


def test_trains_in_background_then_flags_the_outliers_with_their_features(trained: ForestConsumer, sink: Sink) -> None:
    assert sink.calls == []  # nothing is scored before the first forest
    model = trained.model(MODEL)
    assert model is not None and model.trained_rows >= 1000

    clean = make_batch(2000, seed=100)
    sink.calls.clear()
    feed(trained, clean)
    assert len(sink.all) <= 0.02 * clean.n  # contamination 0.5 %: a low false-positive rate


    # Rows that are off on several features at once: 50x latency and 30x input tokens.
    sink.calls.clear()
    probe = make_batch(300, seed=200, latency_x=50.0, tokens_x=30.0, anomalies=5, prefix="x")
    feed(trained, probe)
    by_trace = {c.context["trace_ids"][0]: c for c in sink.all}
    anomalous = {f"x200-{i}" for i in range(295, 300)}
    assert anomalous <= set(by_trace)
    assert len(by_trace) <= 5 + 0.02 * probe.n

    for trace_id in anomalous:
        c = by_trace[trace_id]
        names = [name for name, _ in c.context["explanation"]]
        # The forest blames what changed: latency (or tokens/s, which it drives) and input tokens (or cost).
        assert set(names) <= {"latency_ms", "tokens_per_s", "input_tokens", "cost_usd"}, c.context["explanation"]
        assert set(names) & {"latency_ms", "tokens_per_s"} and set(names) & {"input_tokens", "cost_usd"}
        assert c.metric == names[0]
        row = int(trace_id.rsplit("-", 1)[1])
        assert c.context["values"][names[0]] == pytest.approx(float(probe.numeric[names[0]][row]))
        shares = [share for _, share in c.context["explanation"]]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001
        assert c.anomaly_type == "multivariate_outlier" and c.detection_method == "isolation_forest"
        assert c.model == MODEL and c.service == "chat" and c.context["region"] == "eu-west-1"
        assert 0.5 <= c.confidence <= 1.0
        assert c.value > c.threshold > c.baseline > 0
        assert c.window_start == int(probe.numeric["time_unix_nano"][row]) and c.window_end == c.window_start + 1
        json.dumps(c.to_dict())  # JSON-able for the alert manager


def test_missing_values_are_imputed_not_flagged(trained: ForestConsumer, sink: Sink) -> None:
    batch = make_batch(1000, seed=300)
    batch.numeric["ttft_ms"][::2] = np.nan  # non-streaming calls have no TTFT
    batch.numeric["cost_usd"][::3] = np.inf
    sink.calls.clear()
    feed(trained, batch)
    assert len(sink.all) <= 0.02 * batch.n


def test_candidates_are_capped_most_anomalous_first(tmp_path: Path, sink: Sink) -> None:
    service = Fed(config(max_candidates_per_batch=2), tmp_path, sink)
    try:
        warm(service)
        sink.calls.clear()
        feed(service, make_batch(200, seed=400, latency_x=50.0, tokens_x=30.0, anomalies=10))
        assert len(sink.calls) == 1 and len(sink.calls[0]) == 2
        scores = [c.context["score"] for c in sink.calls[0]]
        assert scores == sorted(scores)
        assert service.suppressed >= 8
    finally:
        service.shutdown()


def test_fits_run_off_the_analysis_thread_and_swap_in_when_done(
        tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    started: list[str] = []
    real_fit = fs.fit_forest

    def slow_fit(window: Any, cfg: ForestConfig) -> TrainedForest:
        started.append(threading.current_thread().name)
        assert release.wait(10)
        return real_fit(window, cfg)

    monkeypatch.setattr(fs, "fit_forest", slow_fit)
    service = Fed(config(), tmp_path, sink)
    try:
        release.set()
        for seed in range(2):
            feed(service, make_batch(500, seed=seed))
        first = wait_trained(service)
        assert started and all(name.startswith("forest-fit") for name in started)

        release.clear()
        t0 = time.monotonic()
        for seed in range(2, 6):  # 2,000 new rows: a retrain is due, and its fit is held up
            feed(service, make_batch(500, seed=seed))
        assert time.monotonic() - t0 < 5.0  # consume never waited for the fit
        assert service.fits_in_flight() == 1
        n_started = len(started)
        for seed in range(6, 10):  # another retrain's worth: still one fit in flight per group
            feed(service, make_batch(500, seed=seed))
        assert service.fits_in_flight() == 1
        assert service.model(MODEL) is first  # the old forest keeps scoring meanwhile
        feed(service, make_batch(300, seed=500, latency_x=50.0, tokens_x=30.0, anomalies=1, prefix="old"))
        assert "old500-299" in {c.context["trace_ids"][0] for c in sink.all}

        release.set()
        second = wait_trained(service, not_this=first)
        assert second.trained_rows == 3000  # the window as it was when the retrain was due
        assert service.wait_for_fits(10)
        assert len(started) <= n_started + 1
    finally:
        release.set()
        service.shutdown()


def test_save_and_restore_give_identical_scores(trained: ForestConsumer, tmp_path: Path) -> None:
    feed(trained, make_batch(500, model="claude", seed=7))
    feed(trained, make_batch(500, model="claude", seed=8))
    wait_trained(trained, "claude")
    assert trained.wait_for_fits(10)
    save(trained)
    index = json.loads((tmp_path / "forests" / "index.json").read_text())
    assert [e["group"] for e in index["groups"]] == [MODEL, "claude"]
    for e in index["groups"]:
        with np.load(tmp_path / "forests" / e["file"], allow_pickle=False) as arrays:
            assert "feature" in arrays and "medians" in arrays
        # Compressed: a cluster checkpoint carries every forest file each time (docs/cluster-capacity.md).
        with zipfile.ZipFile(tmp_path / "forests" / e["file"]) as z:
            assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_DEFLATED}
    # A forest saved uncompressed (before the files were compressed) is still restored, to the same scores.
    first = tmp_path / "forests" / index["groups"][0]["file"]
    with np.load(first, allow_pickle=False) as arrays:
        plain = {k: arrays[k] for k in arrays.files}
    np.savez(first, **plain)

    restored = Fed(config(), tmp_path, Sink())
    restore(restored)
    try:
        assert restored.groups() == [MODEL, "claude"]
        probe = make_batch(300, seed=9, latency_x=50.0, anomalies=5)
        probe.numeric["ttft_ms"][:10] = np.nan
        X = trained.transform(probe)
        for group in (MODEL, "claude"):
            before, after = trained.model(group), restored.model(group)
            assert before is not None and after is not None
            assert np.array_equal(before.forest.score_samples(before.prepare(X)),
                                  after.forest.score_samples(after.prepare(X)))
            assert after.offset == before.offset and after.baseline == before.baseline
    finally:
        restored.shutdown()

    # A forest trained on other features is skipped, not loaded wrongly.
    other = Fed(config(features=("latency_ms", "ttft_ms"), log_features=("latency_ms",)), tmp_path, Sink())
    restore(other)
    try:
        assert other.groups() == []
    finally:
        other.shutdown()


def test_groups_are_bounded_least_recently_fed_first(tmp_path: Path, sink: Sink) -> None:
    service = Fed(config(max_groups=3), tmp_path, sink)
    try:
        for name in ("a", "b", "c", "a", "d", "e"):
            feed(service, make_batch(10, model=name))
        assert service.groups() == ["a", "d", "e"]
        feed(service, make_batch(10, model=None))
        assert service.groups() == ["d", "e", None]
    finally:
        service.shutdown()


def test_groups_train_separately(tmp_path: Path, sink: Sink) -> None:
    service = Fed(config(), tmp_path, sink)
    try:
        feed(service, make_batch(600, model="a", seed=1))
        feed(service, make_batch(600, model="b", seed=2))
        assert service.wait_for_fits(10)
        assert service.model("a") is None and service.model("b") is None  # 600 < min_train_rows each
        feed(service, make_batch(600, model="a", seed=3))
        model = wait_trained(service, "a")
        assert model.trained_rows == 1200 and service.model("b") is None
    finally:
        service.shutdown()


@pytest.mark.parametrize(("overrides", "key"), [
    ({"window_rows": 1}, "forest_window_rows"),
    ({"min_train_rows": 5000}, "forest_min_train_rows"),
    ({"retrain_every_rows": 0}, "forest_retrain_every_rows"),
    ({"retrain_interval_s": 0.0}, "forest_retrain_interval_s"),
    ({"n_estimators": 0}, "forest_n_estimators"),
    ({"max_samples": 1}, "forest_max_samples"),
    ({"contamination": 0.0}, "forest_contamination"),
    ({"features": ("latency_ms", "user")}, "forest_features"),
    ({"features": ()}, "forest_features"),
    ({"log_features": ("is_error",)}, "forest_log_features"),
    ({"max_groups": 0}, "forest_max_groups"),
    ({"max_candidates_per_batch": -1}, "forest_max_candidates_per_batch"),
    ({"score_sample_rows": -1}, "forest_score_sample_rows"),
])
def test_config_errors_name_the_setting(overrides: dict[str, Any], key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        config(**overrides).validate()
    with pytest.raises(ConfigError, match=f"^{key}:"):
        Fed(config(**overrides), tmp_path, Sink())


def test_defaults_match_the_design() -> None:
    c = ForestConfig()
    c.validate()
    assert (c.window_rows, c.min_train_rows, c.retrain_every_rows, c.n_estimators, c.max_samples) == (
        10_000, 1_000, 5_000, 100, 256)
    assert c.contamination == 0.005 and c.max_groups == 100 and c.max_candidates_per_batch == 50
    assert c.score_sample_rows == 256
    assert fs.confidence_from_score(-0.6, -0.6) == 0.5 and fs.confidence_from_score(-1.0, -0.6) == 1.0


def test_the_forest_explains_another_detection_with_the_features_that_moved(trained: ForestConsumer) -> None:
    probe = make_batch(300, seed=210, latency_x=50.0, tokens_x=30.0, anomalies=5, prefix="y")
    feed(trained, probe)
    times = probe.numeric["time_unix_nano"]

    def other(model: str | None, start: int, end: int) -> Candidate:
        return Candidate(anomaly_type="latency_spike", service="chat", model=model, detection_method="level_shift",
                         confidence=0.9, metric="latency_ms", value=40_000.0, baseline=800.0, threshold=2400.0,
                         deviation_sigma=float("nan"), window_start=start, window_end=end, context={})

    note = trained.explain(other(MODEL, int(times[0]), int(times[-1]) + 1))
    assert note is not None and note["outliers"] >= 5 and note["min_score"] < 0
    assert set(note["features"]) <= {"latency_ms", "tokens_per_s", "input_tokens", "cost_usd"}
    assert trained.explain(other(None, int(times[0]), int(times[-1]) + 1)) == note  # service-wide: every model
    assert trained.explain(other(MODEL, int(times[-1]) + 10, int(times[-1]) + 20)) is None  # outside the window
    assert trained.explain(other("claude", int(times[0]), int(times[-1]) + 1)) is None


def test_a_sample_of_each_batch_is_scored_and_every_row_trains(tmp_path: Path, sink: Sink) -> None:
    forest = Fed(config(score_sample_rows=50), tmp_path, sink)
    try:
        for seed in range(2):
            feed(forest, make_batch(500, seed=seed))
        trained = wait_trained(forest)
        assert trained.trained_rows == 1000  # every row joined the window
        assert forest.rows_scored == 0 and forest.rows_seen == 1000  # nothing to score with until trained
        feed(forest, make_batch(500, seed=9))
        feed(forest, make_batch(40, seed=10))  # no larger than the sample: every row
        assert forest.rows_scored == 50 + 40 and forest.rows_seen == 1540
    finally:
        forest.shutdown()


def test_a_sampled_explanation_estimates_the_outliers_among_all_rows(tmp_path: Path, sink: Sink) -> None:
    forest = Fed(config(score_sample_rows=100), tmp_path, sink)
    try:
        warm(forest)
        probe = make_batch(400, seed=211, latency_x=50.0, tokens_x=30.0, anomalies=200, prefix="z")
        feed(forest, probe)
        times = probe.numeric["time_unix_nano"]
        note = forest.explain(Candidate(
            anomaly_type="latency_spike", service="chat", model=MODEL, detection_method="level_shift",
            confidence=0.9, metric="latency_ms", value=1.0, baseline=1.0, threshold=1.0,
            deviation_sigma=float("nan"), window_start=int(times[0]), window_end=int(times[-1]) + 1, context={}))
        assert note is not None and note["outliers"] <= 100  # found among the 100 rows scored
        assert note["estimated_outliers"] == 4 * note["outliers"]  # each stands for 400 / 100 rows
    finally:
        forest.shutdown()


async def test_the_aggregator_puts_the_forest_explanation_in_other_alerts(make_aggregator: Any) -> None:
    from aggregator.alerting.store import AlertQuery
    agg = await make_aggregator()
    assert agg.forest is not None
    agg.forest.explain = lambda c: {"outliers": 3, "features": ["output_tokens"], "min_score": -0.7}  # type: ignore[method-assign]
    t = time.time_ns()
    agg._emit([Candidate(anomaly_type="throughput_drop", service="chat", model=MODEL, detection_method="mean_ratio",
                         confidence=0.9, metric="tokens_per_s", value=1.0, baseline=40.0, threshold=20.0,
                         deviation_sigma=float("nan"), window_start=t, window_end=t + 60 * 10**9, context={})])
    [alert] = agg.alert_store.query(AlertQuery(limit=10))[0]
    assert alert.context["forest"] == {"outliers": 3, "features": ["output_tokens"], "min_score": -0.7}
