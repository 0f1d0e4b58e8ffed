"""Token, tokens/s and categorical-drift detectors on synthetic FeatureBatches (pure logic, seeded)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from aggregator.analysis.detectors import (
    DriftConfig,
    DriftDetector,
    ExpensivePromptConfig,
    ExpensivePromptDetector,
    ThroughputDropConfig,
    ThroughputDropDetector,
    TokenAbuseConfig,
    TokenAbuseDetector,
)
from aggregator.analysis.detectors.expensive_prompt import _KeyState, _robust_limit, ring_limits
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch
from tests.test_aggregator_detectors import MIN, MODEL, NS, SVC, T0, flush, make_batch, run

USERS = [f"user-{i}" for i in range(8)]


def calls(
    minutes: int, seed: int, *, rate: float = 30.0, tokens_in: float = 400.0, tps: float = 50.0,
    incident: Callable[[int, dict[str, Any]], None] | None = None,
) -> list[FeatureBatch]:
    """One batch per minute: Poisson calls of 8 users, lognormal tokens and tokens/s, two finish reasons.

    ``incident(minute, params)`` may change ``rate``, ``tokens_in``, ``tps``, ``big`` (a list of
    (user, input tokens) calls added that minute), ``length_share`` or ``response_models``.
    """
    rng = np.random.default_rng(seed)
    out = []
    for m in range(minutes):
        p: dict[str, Any] = {"rate": rate, "tokens_in": tokens_in, "tps": tps, "big": [], "length_share": 0.05,
                             "response_models": {MODEL: 1.0}}
        if incident is not None:
            incident(m, p)
        n = int(rng.poisson(p["rate"]))
        big = p["big"]
        t = np.sort(T0 + m * MIN + rng.integers(0, MIN, n + len(big)))
        tin = np.round(p["tokens_in"] * rng.lognormal(0.0, 0.5, n)).tolist() + [float(b) for _, b in big]
        users = rng.choice(USERS, size=n).tolist() + [u for u, _ in big]
        models = list(p["response_models"])
        resp = rng.choice(models, size=n + len(big), p=[p["response_models"][x] for x in models]).tolist()
        finish = np.where(rng.random(n + len(big)) < p["length_share"], "length", "stop").tolist()
        out.append(make_batch(
            t.tolist(), input_tokens=tin, output_tokens=np.round(150 * rng.lognormal(0.0, 0.5, n + len(big))),
            tokens_per_s=p["tps"] * rng.lognormal(0.0, 0.3, n + len(big)),
            latency_ms=800 * rng.lognormal(0, 0.3, n + len(big)),
            user=users, api_key_hash=[f"k-{u}" for u in users], response_model=resp, finish_reason=finish))
    return out


def round_trip(make: Callable[[], Any], cls: Any, batches: list[FeatureBatch], cut: int) -> None:
    whole = run(make(), batches)
    first = make()
    run(first, batches[:cut])
    state = json.loads(json.dumps(first.to_state(), allow_nan=False))
    resumed = cls.from_state(state, first.config)
    assert [c.to_dict() for c in run(resumed, batches[cut:])] == [c.to_dict() for c in whole] != []


# --- expensive prompts ------------------------------------------------------------------------


def huge_prompts(m: int, p: dict[str, Any]) -> None:
    if m == 30:
        p["big"] = [("user-3", 40_000), ("user-3", 25_000), ("user-5", 30_000)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_expensive_prompt_quiet_on_clean_traffic(seed: int) -> None:
    assert run(ExpensivePromptDetector(), calls(240, seed)) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_expensive_prompt_fires_once_per_window_with_count_and_max(seed: int) -> None:
    det = ExpensivePromptDetector()
    found = run(det, calls(40, seed, incident=huge_prompts))
    assert len(found) == 1
    c = found[0]
    assert (c.anomaly_type, c.service, c.model, c.metric, c.detection_method) == (
        "expensive_prompt", SVC, MODEL, "input_tokens", "p95_factor")
    assert (c.window_start, c.window_end) == (T0 + 30 * MIN, T0 + 31 * MIN)
    assert c.value == 40_000 and c.context["count"] == 3 and c.context["max_input_tokens"] == 40_000
    # the larger of 4 x p95 and the robust log-scale limit (median + 6 MAD-sigmas of log tokens)
    assert 400 < c.baseline < 2000 and 4 * c.baseline <= c.threshold < 40_000 and c.context["robust_z"] == 6.0
    assert len(c.context["trace_ids"]) == 3 and 0.5 <= c.confidence <= 1
    json.dumps(c.to_dict(), allow_nan=False)


def test_expensive_prompt_absolute_limit_works_before_warmup() -> None:
    det = ExpensivePromptDetector(ExpensivePromptConfig(max_input_tokens=10_000))
    det.update(make_batch([T0, T0 + NS, T0 + 2 * NS], input_tokens=[500, 12_000, 11_000]))
    found = flush(det, T0 + 2 * MIN)
    assert len(found) == 1
    c = found[0]
    assert (c.detection_method, c.value, c.threshold, c.context["count"]) == ("absolute_limit", 12_000, 10_000, 2)
    assert c.context["p95"] is None


def test_expensive_prompt_state_round_trip() -> None:
    batches = calls(40, 4, incident=huge_prompts)
    round_trip(ExpensivePromptDetector, ExpensivePromptDetector, batches, 20)
    round_trip(lambda: ExpensivePromptDetector(ExpensivePromptConfig(max_input_tokens=20_000, warmup_calls=10,
                                                                     sample_size=10)),
               ExpensivePromptDetector, batches, 30)  # cut inside the incident's open window


# --- token abuse ------------------------------------------------------------------------------


def abuser(m: int, p: dict[str, Any]) -> None:
    if 21 <= m < 26:  # one 5-min window (T0 + 1 min is a multiple of 300 s)
        p["big"] = [("user-6", 30_000)] * 4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_token_abuse_quiet_on_clean_traffic(seed: int) -> None:
    cfg = TokenAbuseConfig(min_total_tokens=1000)  # peers only: the clean users differ by chance alone
    assert run(TokenAbuseDetector(cfg), calls(240, seed)) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_token_abuse_fires_on_one_heavy_user(seed: int) -> None:
    found = run(TokenAbuseDetector(), calls(40, seed, incident=abuser))
    assert len(found) == 1
    c = found[0]
    assert (c.anomaly_type, c.service, c.model, c.metric) == ("token_abuse", SVC, None, "tokens")
    assert c.context["user"] == "user-6" and c.context["api_key_hash"] == "k-user-6"
    assert (c.window_start, c.window_end) == (T0 + 21 * MIN, T0 + 26 * MIN)
    assert c.value > 10 * c.baseline and c.value >= c.threshold >= 50_000 and c.context["peers"] == 8
    assert len(c.context["trace_ids"]) == 3


def test_token_abuse_needs_peers_and_min_total() -> None:
    det = TokenAbuseDetector(TokenAbuseConfig(window_s=60, own_warmup=0))
    b = make_batch([T0, T0 + 1], input_tokens=[100_000, 10], user=["a", "b"])
    det.update(b)
    assert flush(det, T0 + 3 * MIN) == []  # two peers only
    det = TokenAbuseDetector(TokenAbuseConfig(window_s=60, min_total_tokens=1e9, own_warmup=0))
    det.update(make_batch([T0, T0 + 1, T0 + 2], input_tokens=[100_000, 10, 10], user=["a", "b", "c"]))
    assert flush(det, T0 + 3 * MIN) == []


def test_token_abuse_state_round_trip() -> None:
    round_trip(TokenAbuseDetector, TokenAbuseDetector, calls(40, 4, incident=abuser), 22)


# --- config errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(("make", "key"), [
    (lambda: ExpensivePromptConfig(factor=0.5), "detectors.expensive_prompt.factor"),
    (lambda: ExpensivePromptConfig(quantile=1.0), "detectors.expensive_prompt.quantile"),
    (lambda: ExpensivePromptConfig(max_input_tokens=0), "detectors.expensive_prompt.max_input_tokens"),
    (lambda: ExpensivePromptConfig(warmup_calls=600), "detectors.expensive_prompt.sample_size"),
    (lambda: TokenAbuseConfig(k=0.5), "detectors.token_abuse.k"),
    (lambda: TokenAbuseConfig(min_peers=1), "detectors.token_abuse.min_peers"),
    (lambda: TokenAbuseConfig(window_s=0), "detectors.token_abuse.window_s"),
    (lambda: ThroughputDropConfig(sustain_s=0), "detectors.throughput_drop.sustain_s"),
    (lambda: ThroughputDropConfig(tps_drop_ratio=1.5), "detectors.throughput_drop.tps_drop_ratio"),
    (lambda: ThroughputDropConfig(tps_min_calls=0), "detectors.throughput_drop.tps_min_calls"),
    (lambda: ThroughputDropConfig(sustain_s=600, relearn_buckets=5), "detectors.throughput_drop.relearn_buckets"),
    (lambda: DriftConfig(categorical=("trace_id",)), "detectors.drift.categorical"),
    (lambda: DriftConfig(categorical=("colour",)), "detectors.drift.categorical"),
    (lambda: DriftConfig(js_threshold=2.0), "detectors.drift.js_threshold"),
    (lambda: DriftConfig(rearm_js=0.5), "detectors.drift.rearm_js"),
    (lambda: DriftConfig(max_categories=1), "detectors.drift.max_categories"),
])
def test_config_errors_name_the_key(make: Callable[[], Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        make().validate()


# --- throughput in tokens/s -------------------------------------------------------------------


def slow(m: int, p: dict[str, Any]) -> None:
    if m >= 30:
        p["tps"] = 15.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_tps_drop_quiet_on_clean_traffic(seed: int) -> None:
    assert run(ThroughputDropDetector(), calls(240, seed)) == []


@pytest.mark.parametrize(("seed", "sustain_s", "buckets"), [(1, 60.0, 2), (2, 120.0, 4), (3, 90.0, 3)])
def test_tps_drop_fires_after_sustained_drop(seed: int, sustain_s: float, buckets: int) -> None:
    """``buckets``: the 30 s buckets covering ``sustain_s``."""
    det = ThroughputDropDetector(ThroughputDropConfig(sustain_s=sustain_s))
    found = run(det, calls(40, seed, incident=slow))
    assert len(found) == 1
    c = found[0]
    assert (c.anomaly_type, c.service, c.model, c.metric, c.detection_method) == (
        "throughput_drop", SVC, MODEL, "tokens_per_s", "mean_ratio")
    assert c.window_start == T0 + 30 * MIN and c.window_end == T0 + 30 * MIN + buckets * 30 * NS
    assert c.value < c.threshold == pytest.approx(0.5 * c.baseline) and 40 < c.baseline < 65
    assert c.context["low_buckets"] == buckets and c.context["calls"] >= 10 and 0.5 < c.confidence <= 1


def test_tps_drop_ignores_a_single_slow_minute_when_sustain_is_longer() -> None:
    def blip(m: int, p: dict[str, Any]) -> None:
        if m == 30:
            p["tps"] = 5.0

    cfg = ThroughputDropConfig(sustain_s=120)
    assert run(ThroughputDropDetector(cfg), calls(40, 5, incident=blip)) == []
    assert [c.metric for c in run(ThroughputDropDetector(), calls(40, 5, incident=blip))] == ["tokens_per_s"]


def test_tps_drop_and_call_drop_both_reported() -> None:
    def both(m: int, p: dict[str, Any]) -> None:
        if m >= 30:
            p["rate"], p["tps"] = 12.0, 10.0

    found = run(ThroughputDropDetector(ThroughputDropConfig(min_baseline_calls=10)),
                calls(40, 6, rate=60, incident=both))
    assert sorted(c.metric for c in found) == ["calls_per_bucket", "tokens_per_s"]


def test_tps_drop_state_round_trip_and_version_1() -> None:
    round_trip(ThroughputDropDetector, ThroughputDropDetector, calls(40, 4, incident=slow), 20)
    det = ThroughputDropDetector()
    run(det, calls(5, 4))
    v1 = det.to_state()
    v1["version"] = 1
    for _, buckets, st in v1["keys"]:
        del st["tps"]
        for entry in buckets["open"]:
            entry[1] = entry[1][:1]
    resumed = ThroughputDropDetector.from_state(json.loads(json.dumps(v1)))
    found = run(resumed, calls(40, 4, incident=slow)[5:])  # tokens/s learns afresh after the load
    assert [(c.metric, c.window_start) for c in found] == [("tokens_per_s", T0 + 30 * MIN)]


# --- categorical drift ------------------------------------------------------------------------


def more_length(m: int, p: dict[str, Any]) -> None:
    if m >= 60:
        p["length_share"] = 0.3


def new_model(m: int, p: dict[str, Any]) -> None:
    if m >= 60:
        p["response_models"] = {MODEL: 0.8, "gpt-4o-mini": 0.2}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_categorical_drift_quiet_on_clean_traffic(seed: int) -> None:
    def mix(m: int, p: dict[str, Any]) -> None:
        p["response_models"] = {MODEL: 0.7, "gpt-4o-2024-08-06": 0.3}

    assert run(DriftDetector(DriftConfig(metrics=())), calls(300, seed, incident=mix)) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("incident", "metric", "category"), [
    (more_length, "finish_reason", "length"), (new_model, "response_model", "gpt-4o-mini")])
def test_categorical_drift_fires_on_mix_change(
    seed: int, incident: Callable[[int, dict[str, Any]], None], metric: str, category: str
) -> None:
    found = run(DriftDetector(DriftConfig(metrics=())), calls(100, seed, incident=incident))
    assert len(found) == 1
    c = found[0]
    assert (c.anomaly_type, c.service, c.model, c.metric, c.detection_method) == (
        "drift", SVC, MODEL, metric, "jensen_shannon")
    start = T0 + 60 * MIN
    assert c.window_end > start and c.window_start < start + 15 * MIN
    assert 1 >= c.value >= c.threshold == 0.05 and c.value == c.context["js_divergence"]
    window, reference = c.context["window_counts"], c.context["reference_counts"]
    assert sum(reference.values()) == 1000 and sum(window.values()) == c.context["count"] >= 200
    assert window[category] / c.context["count"] > reference.get(category, 0) / 1000 + 0.1


def test_categorical_drift_other_slot_and_nulls() -> None:
    det = DriftDetector(DriftConfig(metrics=(), categorical=("finish_reason",), max_categories=2, reference_size=10,
                                    min_count=10, window_s=60))
    det.update(make_batch([T0 + i * NS for i in range(12)], finish_reason=["stop"] * 10 + [None, "length"]))
    det.update(make_batch([T0 + MIN + i * NS for i in range(20)], finish_reason=["x", "y", "z", "stop"] * 5))
    found = flush(det, T0 + 3 * MIN)
    assert len(found) == 1
    c = found[0]
    assert c.context["reference_counts"] == {"stop": 10.0}
    # "length" (after the reference) took the second and last slot: x, y, z share "(other)".
    assert c.context["window_counts"] == {"stop": 5.0, "(other)": 15.0}


def test_categorical_drift_state_round_trip_and_version_1() -> None:
    batches = calls(100, 4, incident=more_length)
    cfg = DriftConfig(metrics=())
    for cut in (10, 50):  # during the reference, and after
        round_trip(lambda: DriftDetector(cfg), DriftDetector, batches, cut)
    v1 = DriftDetector().to_state()
    v1["version"] = 1
    del v1["categorical"]
    assert DriftDetector.from_state(v1).update(batches[0]) == []
    saved = DriftDetector(cfg)
    run(saved, batches[:30])
    other = DriftDetector.from_state(saved.to_state(), DriftConfig(metrics=(), max_categories=4))
    assert len(other._categorical["finish_reason"].keys) == 0  # max_categories changed: that column afresh


def test_expensive_prompt_ring_limits_equal_the_per_ring_statistics_bit_for_bit() -> None:
    # The batch's rings are stacked by length and reduced along an axis (speed, issue 16); the
    # thresholds must be exactly those of np.quantile and the robust limit computed ring by ring.
    rng = np.random.default_rng(7)
    rings = [np.round(400 * rng.lognormal(0.0, s, n)) for n, s in
             [(500, 0.5), (500, 0.9), (200, 0.3), (350, 1.2), (500, 0.1), (350, 0.7), (1, 0.0)]]
    for z in (6.0, 0.0):
        p95, learned = ring_limits(rings, 0.95, 4.0, z)
        for ring, q, lim in zip(rings, p95, learned, strict=True):
            assert q == float(np.quantile(ring, 0.95))
            assert lim == max(4.0 * q, _robust_limit(ring, z))


def test_expensive_prompt_ring_push_is_the_value_by_value_ring() -> None:
    rng = np.random.default_rng(3)
    st, pos, size = _KeyState(), 0, 50
    ring: list[float] = []
    for n in [0, 7, 30, 20, 1, 120, 0, 49, 50, 3]:
        values = rng.random(n)
        st.push(values, size)
        for v in values[-size:].tolist():  # the ring as it was kept before: a list, one value at a time
            if len(ring) < size:
                ring.append(v)
            else:
                ring[pos] = v
                pos = (pos + 1) % size
        assert (st.ring.tolist(), st.pos) == (ring, pos)
