"""Table-driven tests of the sidecar's local detection logic (pure numpy, no I/O)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch
from sidecar.detectors.local import METRICS, LocalDetectionConfig, LocalDetector
from sidecar.detectors.persistence import PersistenceFilter
from sidecar.detectors.rolling import DEFAULT_HALF_LIFE_S, RollingStats

T0 = 1_700_000_000 * 10**9
KEY = ("chat-api", "gpt-4o", "chat")


def batch(rows: list[dict[str, Any]]) -> FeatureBatch:
    """Rows given as partial dicts; the key defaults to KEY, times to one call per 100 ms."""
    out = []
    for i, r in enumerate(rows):
        d: dict[str, Any] = {c: None for c in COLUMNS}
        d.update(service=KEY[0], request_model=KEY[1], operation=KEY[2], is_error=0,
                 time_unix_nano=T0 + i * 100_000_000, trace_id=f"t{i}", span_id=f"s{i}")
        d.update(r)
        out.append(tuple(d[c] for c in COLUMNS))
    return FeatureBatch.from_rows(out)


def normal_latencies(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"latency_ms": float(v)} for v in rng.normal(1000.0, 50.0, n)]


def rolling(d: LocalDetector) -> RollingStats:
    stats = d._stacks[0].detector
    assert isinstance(stats, RollingStats)
    return stats


def expected_baseline(x: np.ndarray, step_s: float = 0.1, half_life_s: float = DEFAULT_HALF_LIFE_S
                      ) -> tuple[float, float]:
    """Mean and robust std a fresh slot learns from ``x`` in one batch, values ``step_s`` apart:
    weights halve every ``half_life_s`` of age at the newest value; the std is the weighted mean
    absolute deviation from that mean times sqrt(pi/2)."""
    age = (x.size - 1 - np.arange(x.size)) * step_s
    w = 0.5 ** (age / half_life_s)
    mean = float((w * x).sum() / w.sum())
    return mean, float((w * np.abs(x - mean)).sum() / w.sum()) * math.sqrt(math.pi / 2)


#: Every metric scored on its raw scale (the default is log): tests of the z-score arithmetic.
RAW = {m: {"transform": "none"} for m in METRICS}


def detector(**detection: Any) -> LocalDetector:
    # Error rate off unless a test is about it, so other tests see only what they set up.
    detection.setdefault("error_rate", {"enabled": False})
    return LocalDetector(LocalDetectionConfig.from_mapping(detection))


def test_warmup_suppresses_then_outlier_reported_with_fields() -> None:
    d = detector(persistence={"k": 1}, metrics=RAW)
    assert d.process(batch([*normal_latencies(29), {"latency_ms": 9000.0}])) == []  # cold: 29 < 30
    d = detector(persistence={"k": 1}, metrics=RAW)
    assert d.process(batch(normal_latencies(40))) == []
    mean, std = expected_baseline(np.array([r["latency_ms"] for r in normal_latencies(40)]))
    assert float(rolling(d).mean_[0]) == pytest.approx(mean)
    std = max(std, 0.05 * mean)  # the default floor, min_std_ratio
    b = batch([{"latency_ms": 1010.0}, {"latency_ms": 5000.0, "trace_id": "bad", "span_id": "sp"}])
    [a] = d.process(b)
    assert a.to_wire() == {
        "metric": "latency_ms", "value": 5000.0, "baseline": pytest.approx(mean), "deviation": pytest.approx(std),
        "threshold": pytest.approx(mean + 3.5 * std), "sigma": pytest.approx((5000.0 - mean) / std),
        "method": "zscore", "service": KEY[0], "model": KEY[1], "operation": KEY[2], "trace_id": "bad",
        "span_id": "sp", "time_unix_nano": T0 + 100_000_000,
    }
    assert 900 < mean < 1100 and 20 < std < 80
    assert d.process(batch([{"latency_ms": mean + 3.4 * std}])) == []


def test_batch_update_equals_one_value_at_a_time() -> None:
    # Unclipped values, and a weight that never falls to the floor (warmup 1): the level and
    # weight are exactly those of sequential updates; the deviation, measured from the mean
    # before the batch, is close.
    x = np.random.default_rng(3).normal(10.0, 2.0, 80)
    t = np.concatenate([np.arange(40.0) * 30, np.arange(40.0) * 7])  # seconds; two series
    group = np.repeat(np.arange(2), 40)
    whole, single = (RollingStats(warmup=1, half_life_s=300.0, clip_sigma=1e9, capacity=2) for _ in range(2))
    for r in (whole, single):  # a prior of 50 values at t = 0 in each series
        r.update(np.repeat(np.arange(2), 50), np.array([0, 1]), np.full(100, 9.0), np.zeros(100))
    t = t + 1.0
    whole.update(group, np.array([0, 1]), x, t)
    for g, v, tv in zip(group, x, t, strict=True):
        single.update(np.zeros(1, np.int64), np.array([g]), np.array([v]), np.array([tv]))
    np.testing.assert_allclose(whole.mean_, single.mean_, rtol=1e-12)
    np.testing.assert_allclose(whole.weight_, single.weight_, rtol=1e-12)
    np.testing.assert_allclose(whole.dev_, single.dev_, rtol=0.1)
    assert whole.count_.tolist() == [90, 90] and whole.time_.tolist() == [39 * 30.0 + 1, 39 * 7.0 + 1]


def test_decay_is_per_second_of_event_time_not_per_value() -> None:
    # A burst of 1,000 values in one second weighs 1,000 values; one second later it still does,
    # an hour later (the half-life) half that -- but never below warmup values' worth.
    r = RollingStats(warmup=10, half_life_s=3600.0, capacity=1)
    one = np.zeros(1, np.int64), np.array([0])
    r.update(np.zeros(1000, np.int64), one[1], np.full(1000, 5.0), np.linspace(0.0, 1.0, 1000))
    assert float(r.weight_[0]) == pytest.approx(1000.0, rel=1e-3)
    r.update(*one, np.array([5.0]), np.array([3601.0]))
    assert float(r.weight_[0]) == pytest.approx(501.0, rel=1e-3)
    r.update(*one, np.array([5.0]), np.array([3601.0 + 3600 * 20]))
    assert float(r.weight_[0]) == pytest.approx(11.0)  # the floor: warmup values, plus the new one
    # A value whose time is older than the slot's newest counts with its age.
    r2 = RollingStats(warmup=5, half_life_s=10.0, capacity=1)
    r2.update(*one, np.array([0.0]), np.array([100.0]))
    r2.update(*one, np.array([3.0]), np.array([90.0]))  # 10 s older: half weight
    assert float(r2.mean_[0]) == pytest.approx(1.0)  # (1*0 + 0.5*3) / 1.5


def test_robust_scale_is_barely_moved_by_a_wild_value() -> None:
    d = detector(metrics=RAW)
    d.process(batch(normal_latencies(500)))
    stats = rolling(d)
    before = float(stats.std(np.array([0]))[0])
    d.process(batch([{"latency_ms": 1e7}]))
    # Clipped to mean + 4 std and averaged with a weight of 1/501: the scale moves < 1 %.
    assert float(stats.std(np.array([0]))[0]) < before * 1.01


def test_spike_is_clipped_but_level_shift_is_learned() -> None:
    d = detector(metrics=RAW)
    d.process(batch(normal_latencies(200)))
    stats = rolling(d)
    before = float(stats.mean_[0])
    d.process(batch([{"latency_ms": 1e6}]))
    assert float(stats.mean_[0]) - before < 4 * 60 / 200  # by at most clip·std / weight
    # A lasting shift is learned once the level-shift detector lets go of it (relearn_after).
    d = detector(metrics=RAW, level_shift={"relearn_after": "10s"})
    d.process(batch(normal_latencies(200)))
    for k in range(30):
        d.process(batch([{"latency_ms": 2000.0, "time_unix_nano": T0 + 30 * 10**9 + k * 10**9 + i * 10**6}
                         for i in range(100)]))
    assert float(rolling(d).mean_[0]) > 1500


@pytest.mark.parametrize(
    ("metric", "values", "new", "direction", "reported"),
    [
        ("tokens_per_s", (50.0, 2.0), 5.0, None, True),  # default direction "low": a drop is reported
        ("tokens_per_s", (50.0, 2.0), 500.0, None, False),  # ... a burst is not
        ("latency_ms", (1000.0, 50.0), 100.0, None, False),  # default "high": fast is fine
        ("latency_ms", (1000.0, 50.0), 100.0, "both", True),
        ("output_tokens", (300.0, 20.0), 900.0, None, True),
    ],
)
def test_direction(metric: str, values: tuple[float, float], new: float, direction: str | None, reported: bool) -> None:
    metrics = {metric: {"direction": direction}} if direction else {}
    d = detector(persistence={"k": 1}, metrics=metrics)
    rng = np.random.default_rng(1)
    d.process(batch([{metric: float(v)} for v in rng.normal(*values, 50)]))
    out = d.process(batch([{metric: new}]))
    assert [(a.metric, a.value) for a in out] == ([(metric, new)] if reported else [])
    if reported:
        assert (out[0].sigma < 0) == (new < values[0])
        assert (new < out[0].threshold) == (new < values[0])


def test_static_thresholds_apply_from_first_call() -> None:
    d = detector(thresholds={"latency_ms": {"max": 30000}, "input_tokens": {"max": 4000, "min": 1}})
    out = d.process(batch([{"latency_ms": 31000.0}, {"input_tokens": 5000.0}, {"input_tokens": 0.0},
                           {"latency_ms": 29000.0, "input_tokens": 4000.0}]))
    got = [(a.metric, a.value, a.threshold, a.method, a.trace_id) for a in out]
    assert got == [
        ("latency_ms", 31000.0, 30000.0, "threshold", "t0"),
        ("input_tokens", 5000.0, 4000.0, "threshold", "t1"),
        ("input_tokens", 0.0, 1.0, "threshold", "t2"),
    ]
    assert all(math.isnan(a.sigma) and math.isnan(a.baseline) for a in out)


def test_threshold_wins_over_zscore_for_the_same_value_and_has_baseline() -> None:
    d = detector(persistence={"k": 1}, thresholds={"latency_ms": {"max": 30000}})
    d.process(batch(normal_latencies(50)))
    [a] = d.process(batch([{"latency_ms": 40000.0}]))
    assert a.method == "threshold" and 900 < a.baseline < 1100 and math.isnan(a.sigma)


def test_mad_on_heavy_tailed_data() -> None:
    rng = np.random.default_rng(7)
    tail = 1000.0 * (1 + rng.pareto(2.5, 400))  # heavy right tail
    d_mad = detector(metrics={"latency_ms": {"method": "mad", "transform": "none"}}, persistence={"k": 1},
                     robust={"window": 128})
    d_mad.process(batch([{"latency_ms": float(v)} for v in tail]))
    window = tail[-128:]
    med = float(np.median(window))
    mad = float(np.median(np.abs(window - med)))
    [a] = d_mad.process(batch([{"latency_ms": 100000.0}]))
    assert a.method == "mad"
    assert a.baseline == pytest.approx(med)
    assert a.sigma == pytest.approx(0.6745 * (100000.0 - med) / mad)
    assert a.threshold == pytest.approx(med + 4.0 * mad / 0.6745)
    # Just inside the limit is not flagged; the mean/std of the same data would sit far higher.
    assert d_mad.process(batch([{"latency_ms": a.threshold - a.deviation}])) == []
    assert float(np.mean(window) + 4 * np.std(window)) > a.threshold


def test_iqr_fence() -> None:
    d = detector(metrics={"cost_usd": {"method": "iqr", "transform": "none"}}, persistence={"k": 1})
    d.process(batch([{"cost_usd": float(v)} for v in np.linspace(1.0, 2.0, 101)]))
    # Q1 = 1.25, Q3 = 1.75: the fence is 1.75 + 3 * 0.5 = 3.25.
    out = d.process(batch([{"cost_usd": 3.2}, {"cost_usd": 3.3}]))
    assert [(a.value, a.method) for a in out] == [(3.3, "iqr")]
    assert out[0].threshold == pytest.approx(3.25)
    assert out[0].baseline == pytest.approx(1.5) and out[0].deviation == pytest.approx(0.5 / 1.349)


def test_error_rate_emits_once_and_rearms() -> None:
    d = detector(error_rate={"window": 60, "threshold": 0.2, "min_calls": 20})

    def second(sec: int, calls: int, errors: int) -> FeatureBatch:
        return batch([{"time_unix_nano": T0 + sec * 10**9 + i, "is_error": int(i < errors), "trace_id": f"{sec}-{i}"}
                      for i in range(calls)])

    assert d.process(second(0, 10, 5)) == []  # 50 % but only 10 calls
    [a] = d.process(second(1, 10, 0))  # 5 / 20 = 25 %
    assert (a.metric, a.method, a.value, a.threshold) == ("error_rate", "error_rate", 0.25, 0.2)
    assert a.time_unix_nano == T0 + 1 * 10**9 + 9  # no error in this batch: its last call
    assert d.process(second(2, 10, 5)) == []  # still above: no repeat
    assert d.process(second(3, 100, 0)) == []  # 10 / 130: re-armed
    [b] = d.process(second(4, 50, 50))  # 60 / 180
    assert b.trace_id == "4-49"  # the last failed call
    # Event time: 61 s later the old buckets have left the window.
    assert d.process(second(70, 30, 3)) == []


def test_persistence_k_of_n_and_extreme_sigma() -> None:
    d = detector(metrics=RAW)  # k=2, n=5, threshold 3.5, extreme 5
    d.process(batch(normal_latencies(100)))
    stats = rolling(d)
    mean, std = float(stats.mean_[0]), float(stats.std(np.array([0]))[0])
    moderate = mean + 4.5 * std
    assert d.process(batch([{"latency_ms": moderate}])) == []  # alone: suppressed
    assert d.process(batch([{"latency_ms": 1000.0}] * 2)) == []
    [a] = d.process(batch([{"latency_ms": moderate}]))  # 2 of the last 4: reported
    assert a.value == moderate
    d.process(batch([{"latency_ms": 1000.0}] * 5))
    [b] = d.process(batch([{"latency_ms": mean + 20 * std}]))  # alone but extreme
    assert b.sigma > 5


@pytest.mark.parametrize(
    ("flags", "hist", "expected", "new_hist"),
    [
        ([1], 0b0000, [0], 0b0001),
        ([1], 0b1000, [1], 0b0001),  # 4 values back is inside n=5
        ([0, 1], 0b1000, [0, 0], 0b0001),  # now 5 back: outside
        ([1, 0, 1], 0b0001, [1, 0, 1], 0b1101),
        ([1, 0, 0, 0, 0, 1], 0, [0, 0, 0, 0, 0, 0], 0b0001),
        ([1, 0, 0, 0, 1], 0, [0, 0, 0, 0, 1], 0b0001),  # the history keeps n - 1 = 4 flags
    ],
)
def test_persistence_window_table(flags: list[int], hist: int, expected: list[int], new_hist: int) -> None:
    p = PersistenceFilter(k=2, n=5, capacity=1)
    p.hist_[0] = hist
    out = p.filter(np.zeros(len(flags), np.int64), np.array([0]), np.array(flags, bool), np.zeros(len(flags)))
    assert out.astype(int).tolist() == expected
    assert int(p.hist_[0]) == new_hist


def test_nan_values_are_neither_scored_nor_learned() -> None:
    d = detector(persistence={"k": 1})
    rows = [{"latency_ms": r["latency_ms"], "ttft_ms": None} for r in normal_latencies(40)]
    d.process(batch(rows))
    stack = d._stacks[0]
    j_ttft = stack.metrics.index("ttft_ms")
    assert int(stack.detector.count_[j_ttft]) == 0
    assert int(stack.detector.count_[stack.metrics.index("latency_ms")]) == 40
    assert d.process(batch([{"latency_ms": None, "ttft_ms": 1e9}])) == []  # ttft still cold
    assert int(stack.detector.count_[stack.metrics.index("latency_ms")]) == 40


def test_least_recently_seen_key_is_evicted() -> None:
    d = detector(max_keys=2)
    d.process(batch([{"service": "a"}]))
    d.process(batch([{"service": "b"}]))
    d.process(batch([{"service": "a"}]))
    d.process(batch([{"service": "c"}]))  # evicts b, seen longest ago
    assert sorted(k[0] or "" for k in d.keys) == ["a", "c"]
    d.process(batch([{"service": s} for s in "xyz"]))  # 3 new keys, room for 2
    assert d.n_keys == 2 and d.dropped_rows == 1


def test_evicted_slot_starts_fresh() -> None:
    d = detector(max_keys=1, persistence={"k": 1})
    d.process(batch(normal_latencies(40)))
    d.process(batch([{"service": "other", "latency_ms": 1.0}]))
    # KEY comes back to a fresh slot: cold again, so a huge value is not reported.
    assert d.process(batch([{"latency_ms": 1e6}])) == []


def test_anomalies_capped_per_batch() -> None:
    d = detector(max_anomalies_per_batch=3, thresholds={"latency_ms": {"max": 10}})
    out = d.process(batch([{"latency_ms": float(v)} for v in range(100, 110)]))
    assert len(out) == 3 and d.dropped_anomalies == 7


def test_state_round_trip_gives_identical_results() -> None:
    cfg = {"metrics": {"ttft_ms": {"method": "mad"}}, "error_rate": {"min_calls": 5}}
    a = LocalDetector(LocalDetectionConfig.from_mapping(cfg))

    def random_batch(seed: int) -> FeatureBatch:
        r = np.random.default_rng(seed)
        return batch([{"service": f"s{r.integers(3)}",
                       "latency_ms": float(r.lognormal(7, 0.5)) * (50.0 if r.random() < 0.03 else 1.0),
                       "ttft_ms": float(r.lognormal(5, 1)) if r.random() < 0.8 else None,
                       "is_error": int(r.random() < 0.3), "time_unix_nano": T0 + seed * 10**9 + i}
                      for i in range(60)])

    for s in range(5):
        a.process(random_batch(s))
    state = json.loads(json.dumps(a.to_state(), allow_nan=False))
    b = LocalDetector.from_state(state, LocalDetectionConfig.from_mapping(cfg))
    seen = 0
    for s in range(5, 15):
        rb = random_batch(s)
        got_a, got_b = a.process(rb), b.process(rb)
        assert [x.to_wire() for x in got_a] == [x.to_wire() for x in got_b]
        seen += len(got_a)
    assert seen > 0  # the comparison covered some detections
    assert json.dumps(a.to_state()) == json.dumps(b.to_state())


def test_state_from_other_config_is_refused() -> None:
    a = detector()
    a.process(batch(normal_latencies(5)))
    state = json.loads(json.dumps(a.to_state()))
    with pytest.raises(ValueError, match="state"):
        mad = LocalDetectionConfig.from_mapping({"metrics": {"latency_ms": {"method": "mad"}}})
        LocalDetector.from_state(state, mad)
    with pytest.raises(ValueError, match="malformed"):
        LocalDetector.from_state({**state, "stacks": [{}]})


@pytest.mark.parametrize(
    ("detection", "key"),
    [
        ({"zscore": {"threshold": -1}}, "detection.zscore.threshold"),
        ({"zscore": {"threshold": "high"}}, "detection.zscore.threshold"),
        ({"zscore": {"treshold": 3}}, "detection.zscore.treshold"),
        ({"zscore": {"half_life": 0}}, "detection.zscore.half_life"),
        ({"zscore": {"half_life": "soon"}}, "detection.zscore.half_life"),
        ({"level_shift": {"threshold": 0}}, "detection.level_shift.threshold"),
        ({"level_shift": {"relearn_after": "-1s"}}, "detection.level_shift.relearn_after"),
        ({"level_shift": {"drift": -1}}, "detection.level_shift.drift"),
        ({"warmup": 0}, "detection.warmup"),
        ({"max_keys": True}, "detection.max_keys"),
        ({"metrics": {"latency_ms": {"method": "lstm"}}}, "detection.metrics.latency_ms.method"),
        ({"metrics": {"latency": {}}}, "detection.metrics.latency"),
        ({"metrics": {"latency_ms": {"transform": "sqrt"}}}, "detection.metrics.latency_ms.transform"),
        ({"metrics": {"cost_usd": {"transform": 1}}}, "detection.metrics.cost_usd.transform"),
        ({"metrics": {"cost_usd": {"tranform": "log"}}}, "detection.metrics.cost_usd.tranform"),
        ({"thresholds": {"latency_ms": {"max": 1, "min": 2}}}, "detection.thresholds.latency_ms.min"),
        ({"thresholds": {"latency_ms": {}}}, "detection.thresholds.latency_ms"),
        ({"thresholds": {"input_tokens": {"max": "lots"}}}, "detection.thresholds.input_tokens.max"),
        ({"persistence": {"k": 6}}, "detection.persistence.k"),
        ({"error_rate": {"window": "1.5s"}}, "detection.error_rate.window"),
        ({"error_rate": {"threshold": 1.5}}, "detection.error_rate.threshold"),
        ({"robust": []}, "detection.robust"),
        ({"frobnicate": 1}, "detection.frobnicate"),
    ],
)
def test_config_errors_name_the_key(detection: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        LocalDetectionConfig.from_mapping(detection)
    assert str(e.value).startswith(key + ":")


def test_config_defaults_and_parsing() -> None:
    c = LocalDetectionConfig.from_mapping({"error_rate": {"window": "2m"}, "zscore": {"half_life": "2h"},
                                           "level_shift": {"relearn_after": "30m", "drift": 0.5},
                                           "metrics": {"latency_ms": {"method": "mad"}}})
    assert (c.warmup, c.zscore.threshold, c.max_keys, c.max_anomalies_per_batch) == (30, 3.5, 10_000, 100)
    assert (c.robust.threshold, c.robust.window) == (4.0, 128)
    assert (c.persistence.k, c.persistence.n, c.persistence.extreme_sigma) == (2, 5, 5.0)
    assert (c.error_rate.window, c.error_rate.threshold, c.error_rate.min_calls) == (120.0, 0.2, 20)
    assert c.zscore.half_life == 7200.0
    assert (c.level_shift.enabled, c.level_shift.relearn_after, c.level_shift.drift) == (True, 1800.0, 0.5)
    assert LocalDetectionConfig().zscore.half_life == 86400.0
    assert (LocalDetectionConfig().level_shift.threshold, LocalDetectionConfig().level_shift.cap_sigma) == (20.0, 3.0)
    with pytest.raises(ConfigError, match=r"^detection\.zscore\.alpha: replaced by detection\.zscore\.half_life"):
        LocalDetectionConfig.from_mapping({"zscore": {"alpha": 0.01}})
    assert c.metrics["tokens_per_s"].direction == "low" and c.metrics["latency_ms"].direction == "high"
    assert c.metrics["latency_ms"].method == "mad"
    assert c.metrics["latency_ms"].transform == "log"  # merged over the defaults
    assert all(c.metrics[m].transform == "log" for m in METRICS)
    c = LocalDetectionConfig.from_mapping({"metrics": {"tokens_per_s": {"transform": "none"}}})
    assert (c.metrics["tokens_per_s"].transform, c.metrics["tokens_per_s"].direction) == ("none", "low")
    assert LocalDetectionConfig.from_mapping(None) == LocalDetectionConfig()


# -- transform: log ------------------------------------------------------------------------------


def test_log_transform_scores_log1p_and_reports_original_units() -> None:
    # With warmup = 40 and 40 values, the baseline is the plain mean/std of log1p(value).
    x = np.random.default_rng(5).lognormal(np.log(700.0), 0.9, 40)
    d = detector(warmup=40, persistence={"k": 1})
    assert d.process(batch([{"input_tokens": float(v)} for v in x])) == []
    mean, std = expected_baseline(np.log1p(x))
    [a] = d.process(batch([{"input_tokens": 500.0}, {"input_tokens": 200_000.0, "trace_id": "big"}]))
    assert (a.metric, a.method, a.trace_id, a.value) == ("input_tokens", "zscore", "big", 200_000.0)
    assert a.baseline == pytest.approx(math.expm1(mean))  # the geometric-mean-like level, in tokens
    assert a.threshold == pytest.approx(math.expm1(mean + 3.5 * std))  # the limit crossed, in tokens
    assert a.deviation == pytest.approx(std)  # log units
    assert a.sigma == pytest.approx((math.log1p(200_000.0) - mean) / std)
    assert a.baseline < a.threshold < a.value


def test_log_transform_cost_is_scaled_to_micro_dollars() -> None:
    # log1p(0.002) ≈ 0.002 would make log scale a no-op for dollars; cost is scored in µ$.
    x = np.random.default_rng(6).lognormal(np.log(0.002), 0.8, 40)
    d = detector(warmup=40, persistence={"k": 1})
    d.process(batch([{"cost_usd": float(v)} for v in x]))
    mean, std = expected_baseline(np.log1p(x / 1e-6))
    [a] = d.process(batch([{"cost_usd": 5.0}]))
    assert a.baseline == pytest.approx(1e-6 * math.expm1(mean))
    assert 0.001 < a.baseline < 0.004
    assert a.threshold == pytest.approx(1e-6 * math.expm1(mean + 3.5 * std))
    assert a.sigma == pytest.approx((math.log1p(5.0 / 1e-6) - mean) / std)


def test_log_transform_direction_low_reports_the_lower_limit() -> None:
    x = np.random.default_rng(8).lognormal(np.log(60.0), 0.3, 200)
    d = detector(persistence={"k": 1})  # tokens_per_s: direction low, log scale
    d.process(batch([{"tokens_per_s": float(v)} for v in x]))
    [a] = d.process(batch([{"tokens_per_s": 5.0}, {"tokens_per_s": 500.0}]))
    assert a.value == 5.0 and a.sigma < -3.5
    assert 5.0 < a.threshold < a.baseline < 60.0 * 1.3


def test_log_transform_quiet_on_heavy_tails_where_raw_cries_wolf() -> None:
    rng = np.random.default_rng(11)
    rows = [{"input_tokens": float(v)} for v in rng.lognormal(np.log(700.0), 0.9, 5000)]
    raw, log = detector(metrics=RAW), detector()
    found_raw = [a for i in range(0, 5000, 500) for a in raw.process(batch(rows[i:i + 500]))]
    found_log = [a for i in range(0, 5000, 500) for a in log.process(batch(rows[i:i + 500]))]
    assert len(found_raw) > 5 and found_log == []


def test_log_transform_with_mad_reports_the_median() -> None:
    x = np.random.default_rng(9).lognormal(np.log(1000.0), 0.7, 127)
    d = detector(metrics={"latency_ms": {"method": "mad"}}, robust={"window": 127}, persistence={"k": 1})
    d.process(batch([{"latency_ms": float(v)} for v in x]))
    [a] = d.process(batch([{"latency_ms": 1e6}]))
    assert a.method == "mad"
    assert a.baseline == pytest.approx(float(np.median(x)))  # the median commutes with log1p
    assert a.threshold > a.baseline


def test_log_transform_negative_and_zero_values() -> None:
    d = detector(persistence={"k": 1}, warmup=5)
    # Zero is log1p(0) = 0; a negative value (never extracted) is scored as zero, not NaN.
    assert d.process(batch([{"output_tokens": 0.0}] * 5 + [{"output_tokens": -3.0}])) == []
    [a] = d.process(batch([{"output_tokens": 100.0}]))
    assert a.baseline == pytest.approx(0.0) and a.value == 100.0


def test_state_from_other_transform_is_refused() -> None:
    a = detector()
    a.process(batch(normal_latencies(5)))
    state = json.loads(json.dumps(a.to_state()))
    with pytest.raises(ValueError, match="state"):
        LocalDetector.from_state(state, LocalDetectionConfig.from_mapping({"metrics": RAW,
                                                                           "error_rate": {"enabled": False}}))
    b = LocalDetector.from_state(state, LocalDetectionConfig.from_mapping({"error_rate": {"enabled": False}}))
    assert json.dumps(b.to_state()) == json.dumps(a.to_state())


# -- level shifts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("s0", "steps"),
    [(0.0, [1.0, -2.0, 3.0, -0.5, -5.0, 2.0]), (4.0, [-1.0, -1.0, -3.0, 2.0]), (0.0, [-1.0, -1.0]), (2.5, [])],
)
def test_cusum_closed_form_equals_the_recursion(s0: float, steps: list[float]) -> None:
    from sidecar.detectors.level_shift import _cusum

    want, s = [], s0
    for x in steps:
        s = max(0.0, s + x)
        want.append(s)
    assert _cusum(s0, np.array(steps)).tolist() == pytest.approx(want)


def shifted_latencies(n: int, start_s: float, factor: float, seed: int = 2) -> list[dict[str, Any]]:
    """``n`` calls one per second from ``start_s``, lognormal around 1 s times ``factor``."""
    rng = np.random.default_rng(seed)
    return [{"latency_ms": float(v) * factor, "time_unix_nano": T0 + int((start_s + i) * 10**9)}
            for i, v in enumerate(rng.lognormal(np.log(1000.0), 0.2, n))]


def test_sustained_shift_reported_once_and_kept_until_it_ends() -> None:
    d = detector()
    d.process(batch(shifted_latencies(600, 0.0, 1.0)))
    mean = float(rolling(d).mean_[0])
    # x1.4 on log scale is ~1.7 sigma: hardly a point anomaly, but a shift.
    found = [a for k in range(10) for a in d.process(batch(shifted_latencies(60, 600.0 + 60 * k, 1.4, seed=k)))]
    shifts = [a for a in found if a.method == "level_shift"]
    assert len(shifts) == 1 and shifts[0].metric == "latency_ms" and shifts[0].sigma > 0
    assert shifts[0].time_unix_nano < T0 + 640 * 10**9  # within 40 calls (threshold 20 / (1.7 - drift 1))
    assert shifts[0].threshold > shifts[0].baseline  # the level values were accumulated beyond
    assert [a for a in found if a.method == "zscore"] == []  # the same incident: not repeated
    [(key, metric, direction, since)] = d.shifts()
    assert (key, metric, direction) == (KEY, "latency_ms", 1) and since == shifts[0].time_unix_nano / 1e9
    # Frozen once reported (only the few values before the report were learned): not learned away.
    assert abs(float(rolling(d).mean_[0]) - mean) < 0.1 * math.log(1.4)
    # Back to normal: the shift ends after a few normal values, nothing more is reported.
    assert [a.method for a in d.process(batch(shifted_latencies(60, 1200.0, 1.0)))] == []
    assert d.shifts() == []


def test_shift_is_relearned_after_relearn_after_without_a_new_report() -> None:
    d = detector(level_shift={"relearn_after": "5m"})
    d.process(batch(shifted_latencies(600, 0.0, 1.0)))
    found = [a for k in range(40) for a in d.process(batch(shifted_latencies(60, 600.0 + 60 * k, 2.0, seed=k)))]
    [shift] = [a for a in found if a.method == "level_shift"]
    # A point anomaly may come first (a x2 value is ~4 sigma); after the shift's report, nothing.
    assert all(a.time_unix_nano <= shift.time_unix_nano for a in found)
    assert d.shifts() == []  # the baseline caught up: the state ended
    # 40 minutes later the baseline has moved most of the way to the new level (log 2 = 0.69).
    assert float(rolling(d).mean_[0]) > math.log1p(1000.0) + 0.4


def test_drop_on_a_high_metric_is_no_shift_and_relearn_resets() -> None:
    d = detector()
    d.process(batch(shifted_latencies(600, 0.0, 1.0)))
    assert d.process(batch(shifted_latencies(120, 600.0, 0.5))) == []  # direction high: faster is fine
    assert [a.method for a in d.process(batch(shifted_latencies(120, 720.0, 3.0)))].count("level_shift") == 1
    assert d.shifts() and d.relearn(KEY) == 1 and d.shifts() == []
    assert int(rolling(d).count_[0]) == 0  # re-learns from the next values
    assert d.relearn(("no", "such", "key")) == 0 and d.relearn() == 1


def test_level_shift_off() -> None:
    d = detector(level_shift={"enabled": False})
    d.process(batch(shifted_latencies(600, 0.0, 1.0)))
    found = [a for k in range(5) for a in d.process(batch(shifted_latencies(60, 600.0 + 60 * k, 1.4, seed=k)))]
    assert [a for a in found if a.method == "level_shift"] == [] and d.shifts() == []


def _level_shift_by_hand(ls: Any, group: np.ndarray, slots: np.ndarray, z: np.ndarray, t: np.ndarray,
                         up: np.ndarray, down: np.ndarray) -> tuple[list[int], list[int]]:
    """The CUSUM value by value (the reference for the vectorised one): reports and states."""
    report, state = [0] * z.size, [int(ls.shifted_[slots[g]]) for g in group]
    for g, slot in enumerate(slots.tolist()):
        rows = np.flatnonzero(group == g).tolist()
        for sign, watch, stat in ((1, up[g], ls.up_), (-1, down[g], ls.down_)):
            ok = [i for i in rows if not np.isnan(z[i])]
            if not watch or not ok:
                continue
            s, armed = float(stat[slot]), ls.shifted_[slot] != sign
            for i in ok:
                s = max(0.0, s + sign * min(max(z[i], -ls.cap_sigma), ls.cap_sigma) - ls.drift)
                if armed and s > ls.threshold:
                    armed = False
                    report[i] = sign
                    for k in rows:
                        if k >= i:
                            state[k] = sign
                    ls.shifted_[slot], ls.since_[slot] = sign, t[i]
            stat[slot] = min(s, ls.threshold)
        sh = int(ls.shifted_[slot])
        if sh and (ls.up_ if sh > 0 else ls.down_)[slot] <= 0:
            ls.shifted_[slot], ls.since_[slot] = 0, np.nan
    return report, state


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_level_shift_equals_value_by_value(seed: int) -> None:
    from sidecar.detectors.level_shift import LevelShift

    rng = np.random.default_rng(seed)
    made = [LevelShift(threshold=6.0, capacity=8) for _ in range(2)]
    start = (rng.uniform(0, 6, 8), rng.uniform(0, 6, 8), rng.integers(-1, 2, 8).astype(np.int8))
    for ls in made:
        ls.up_, ls.down_, ls.shifted_ = (a.copy() for a in start)
        ls.since_ = np.where(ls.shifted_ != 0, 0.0, np.nan)
    n_groups = 5
    group = np.sort(rng.integers(0, n_groups, 120))
    slots = rng.permutation(8)[:n_groups]
    z = rng.normal(0.5, 2.5, group.size)
    z[rng.random(group.size) < 0.2] = np.nan
    t = np.arange(group.size, dtype=np.float64)
    up, down = rng.random(n_groups) < 0.8, rng.random(n_groups) < 0.6
    got = made[0].update(group, slots, z, t, up, down)
    want_report, want_state = _level_shift_by_hand(made[1], group, slots, z, t, up, down)
    assert got.report.tolist() == want_report and got.state.tolist() == want_state
    for a in ("up_", "down_", "shifted_"):
        np.testing.assert_allclose(getattr(made[0], a), getattr(made[1], a), atol=1e-9)
    np.testing.assert_array_equal(np.isnan(made[0].since_), np.isnan(made[1].since_))
