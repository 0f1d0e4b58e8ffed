"""The load-test traffic model (loadtest/traffic.py) and the shipped scenario files: statistics,
determinism, each incident's effect (only inside its window, only on its target), and the OTLP
requests as the sidecar's extractor reads them."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aggregator.config import AggregatorConfig
from loadtest.scenario import DETECT_AS, Incident, Scenario, load_scenario
from loadtest.traffic import (
    ERROR_TYPES,
    FINISH_REASONS,
    SERVICE_PROFILES,
    CallBatch,
    TrafficModel,
    incident_defaults,
)
from sentinel.model import COLUMNS
from sidecar.config import SidecarConfig
from sidecar.extract import ExtractConfig, Extractor

SCENARIOS = Path(__file__).resolve().parents[1] / "loadtest" / "scenarios"
T0 = 1_780_000_000 * 10**9
COL = {name: i for i, name in enumerate(COLUMNS)}


def scenario(**kw: Any) -> Scenario:
    base: dict[str, Any] = {"name": "t", "duration_s": 3600.0, "rate": 40.0, "seed": 3, "warmup_s": 600.0}
    base.update(kw)
    return Scenario(**base)


def twin(sc: Scenario, *incidents: Incident) -> tuple[CallBatch, CallBatch, TrafficModel]:
    """Calls of ``sc`` with ``incidents`` and of the same scenario without them."""
    with_ = TrafficModel(dataclasses.replace(sc, incidents=incidents))
    clean = TrafficModel(sc)
    return with_.calls(0, sc.duration_s), clean.calls(0, sc.duration_s), with_


def key(b: CallBatch) -> dict[float, int]:
    return {float(t): i for i, t in enumerate(b.t)}


# --- normal traffic ----------------------------------------------------------------------------


def test_rate_and_service_shares() -> None:
    sc = scenario(duration_s=3000.0)
    b = TrafficModel(sc).calls(0, 3000)
    expected = 40 * 3000
    assert abs(len(b) - expected) < 5 * math.sqrt(expected)
    assert np.all(np.diff(b.t) >= 0) and b.t.min() >= 0 and b.t.max() < 3000
    shares = np.bincount(b.service, minlength=4) / len(b)
    want = np.array([SERVICE_PROFILES[s].share for s in sc.services])
    assert np.allclose(shares, want / want.sum(), atol=0.01)
    # every model, region and pod is used; the error share is error_rate
    assert set(np.unique(b.model)) == {0, 1, 2}
    assert set(np.unique(b.region)) == {0, 1}
    assert abs(b.is_error.mean() - sc.error_rate) < 0.002


def test_daily_curve() -> None:
    sc = scenario(duration_s=86400.0, rate=0.5, daily_amplitude=0.5)
    b = TrafficModel(sc).calls(0, 86400)
    q1 = np.count_nonzero(b.t < 21600)
    q3 = np.count_nonzero((b.t >= 43200) & (b.t < 64800))
    # integral of 0.5 * (1 + 0.5 sin(2 pi t / 86400)) over the first and third quarter of the day
    # (about 14,300 and 7,300 calls: the two differ by ~60 standard deviations)
    want1, want3 = 0.5 * (21600 + 0.5 * 86400 / (2 * math.pi)), 0.5 * (21600 - 0.5 * 86400 / (2 * math.pi))
    assert abs(q1 - want1) < 5 * math.sqrt(want1)
    assert abs(q3 - want3) < 5 * math.sqrt(want3)


def test_users_are_zipf_and_tokens_heavy_tailed() -> None:
    sc = scenario(duration_s=3000.0)
    m = TrafficModel(sc)
    b = m.calls(0, 3000)
    counts = np.bincount(b.user, minlength=sc.users)
    assert counts[0] > counts[sc.users // 2] > counts[-1] > 0  # decreasing with the rank
    assert 2.0 < counts[0] / np.median(counts) < 10.0
    for s, name in enumerate(sc.services):
        p = SERVICE_PROFILES[name]
        x = b.input_tokens[b.service == s]
        logs = np.log(x)
        assert abs(np.median(x) / p.input_median - 1) < 0.05
        assert abs(logs.std() - p.input_sigma) < 0.03
        assert x.mean() > np.median(x)  # right-skewed
        assert np.quantile(x, 0.999) > 3 * np.median(x)  # a long right tail
        ok = ~b.is_error & (b.service == s)
        out = b.output_tokens[ok]
        assert abs(np.median(out) / p.output_median - 1) < 0.08
        assert np.quantile(out, 0.999) > 4 * np.median(out)


def test_latency_grows_with_output_tokens_and_ttft_on_streams() -> None:
    sc = scenario(duration_s=3000.0)
    m = TrafficModel(sc)
    b = m.calls(0, 3000)
    for k, prof in enumerate(m.profiles):
        ok = ~b.is_error & (b.model == k)
        out, lat = b.output_tokens[ok].astype(float), b.latency_ms[ok]
        assert np.corrcoef(out, lat)[0, 1] > 0.7
        slope = np.polyfit(out, lat, 1)[0]
        assert slope == pytest.approx(prof.ms_per_token * math.exp(0.25**2 / 2), rel=0.15)
    ok = ~b.is_error
    streamed = ok & ~np.isnan(b.ttft_ms)
    assert 0.3 < streamed.sum() / ok.sum() < 0.7
    assert np.all(b.ttft_ms[streamed] < b.latency_ms[streamed])
    assert np.all(np.isnan(b.ttft_ms[b.is_error]))
    assert np.all(b.output_tokens[b.is_error] == 0) and np.all(b.finish_reason[b.is_error] == -1)
    assert set(np.unique(b.error_type[b.is_error])) <= {0, 1}  # rate limits and server errors, no timeouts


def test_pure_and_independent_of_slicing() -> None:
    sc = scenario(duration_s=120.0, incidents=(
        Incident("s", "latency_spike", 30, 60, {"service": "support-chat"}),
        Incident("a", "token_abuse", 40, 90, {"service": "search-rag"}),))
    whole = TrafficModel(sc).calls(0, 120)
    m = TrafficModel(sc)
    cuts = [0.0, 0.1, 7.3, 9.99, 10.0, 33.3, 61.0, 95.5, 120.0]
    parts = CallBatch.concat([m.calls(a, b) for a, b in itertools.pairwise(cuts)])
    for f in dataclasses.fields(CallBatch):
        assert np.array_equal(getattr(whole, f.name), getattr(parts, f.name), equal_nan=True), f.name
    assert m.span_ids(whole) == m.span_ids(parts)
    other = TrafficModel(dataclasses.replace(sc, seed=4)).calls(0, 120)
    assert len(other) != len(whole) or not np.array_equal(other.t, whole.t)


# --- incidents ---------------------------------------------------------------------------------


def in_window(b: CallBatch, inc: Incident) -> np.ndarray:
    return (b.t >= inc.start_s) & (b.t < inc.end_s)


def test_latency_spike_only_on_target_in_window() -> None:
    sc = scenario()
    inc = Incident("s", "latency_spike", 1200, 1500, {"service": "support-chat", "model": "gpt-4o"})
    b, clean, _m = twin(sc, inc)
    assert np.array_equal(b.t, clean.t)  # the same calls: only their latencies change
    target = (b.service == 0) & (b.model == 0) & ~b.is_error
    hit = target & in_window(b, inc)
    assert np.allclose(b.latency_ms[hit] / clean.latency_ms[hit], 8.0)
    assert np.allclose(b.latency_ms[~hit], clean.latency_ms[~hit])
    assert np.array_equal(b.incident == 0, (b.service == 0) & (b.model == 0) & in_window(b, inc))
    assert np.all(b.incident[b.incident != 0] == -1)


def test_latency_drift_ramps() -> None:
    sc = scenario()
    inc = Incident("d", "latency_drift", 1000, 2000, {"service": "code-review-bot"}, {"factor": 5})
    b, clean, _ = twin(sc, inc)
    hit = (b.service == 3) & in_window(b, inc) & ~b.is_error
    ratio = b.latency_ms[hit] / clean.latency_ms[hit]
    assert np.allclose(ratio, 1 + 4 * (b.t[hit] - 1000) / 1000)
    assert np.allclose(b.latency_ms[~hit], clean.latency_ms[~hit])


def test_provider_outage() -> None:
    sc = scenario()
    inc = Incident("o", "provider_outage", 1200, 1500, {"provider": "anthropic"})
    b, clean, m = twin(sc, inc)
    claude = [i for i, p in enumerate(m.profiles) if p.provider == "anthropic"]
    hit = np.isin(b.model, claude) & in_window(b, inc)
    assert 0.75 < b.is_error[hit].mean() < 0.85
    timeouts = hit & (b.error_type == 2)
    assert ERROR_TYPES[2][0] == "APITimeoutError"
    assert timeouts.sum() > 0.7 * hit.sum()
    assert np.all(np.abs(b.latency_ms[timeouts] / 30000 - 1) < 0.2)
    assert np.array_equal(b.is_error[~hit], clean.is_error[~hit])
    assert not np.any(b.error_type[~hit] == 2)


def test_error_burst() -> None:
    sc = scenario()
    inc = Incident("e", "error_burst", 1200, 1500, {"service": "search-rag"})
    b, clean, _ = twin(sc, inc)
    hit = (b.service == 1) & in_window(b, inc)
    assert 0.45 < b.is_error[hit].mean() < 0.56
    assert np.array_equal(b.is_error[~hit], clean.is_error[~hit])
    assert abs(b.is_error[~hit].mean() - 0.01) < 0.003


def test_token_abuse() -> None:
    sc = scenario()
    inc = Incident("a", "token_abuse", 1200, 1800, {"service": "support-chat", "user": "user-abuser"})
    b, clean, m = twin(sc, inc)
    abuser = m.users.index("user-abuser")
    mine = b.user == abuser
    assert mine.any() and np.all(in_window(b, inc)[mine]) and np.all(b.service[mine] == 0)
    assert abs(mine.sum() - 0.2 * sc.rate * 600) < 5 * math.sqrt(0.2 * sc.rate * 600)
    assert np.median(b.input_tokens[mine]) > 15 * np.median(clean.input_tokens[clean.service == 0])
    assert np.all(b.incident[mine] == 0) and np.all(b.incident[~mine] == -1)
    assert len(b) - mine.sum() == len(clean)  # the others are the clean traffic


def test_cost_runaway() -> None:
    sc = scenario()
    inc = Incident("c", "cost_runaway", 1200, 1800, {"service": "code-review-bot", "model": "gpt-4o"})
    b, clean, _ = twin(sc, inc)

    def target(x: CallBatch) -> np.ndarray:
        mask: np.ndarray = (x.service == 3) & (x.model == 0) & in_window(x, inc)
        return mask

    n, n0 = target(b).sum(), target(clean).sum()
    assert 1.8 < n / n0 < 2.2
    ok, ok0 = target(b) & ~b.is_error, target(clean) & ~clean.is_error
    assert 5 < np.median(b.output_tokens[ok]) / np.median(clean.output_tokens[ok0]) < 7
    outside = ~target(b)
    assert outside.sum() == (~target(clean)).sum()


def test_model_swap() -> None:
    sc = scenario()
    inc = Incident("m", "model_swap", 1200, 1800, {"service": "support-chat", "model": "gpt-4o"})
    params = incident_defaults(inc, sc)
    assert params["to"] == "gpt-4o-mini-2024-07-18"  # the next model's response model
    b, clean, m = twin(sc, inc)
    hit = (b.service == 0) & (b.model == 0) & in_window(b, inc)
    assert {m.response_models[r] for r in np.unique(b.response_model[hit])} == {"gpt-4o-mini-2024-07-18"}
    assert np.array_equal(b.response_model[~hit], b.model[~hit])  # everyone else answers as asked
    ok = hit & ~b.is_error
    ratio = b.output_tokens[ok] / np.maximum(clean.output_tokens[ok], 1)
    assert 0.35 < np.median(ratio) < 0.45
    explicit = incident_defaults(dataclasses.replace(inc, params={"to": "claude-3-5-sonnet-latest"}), sc)
    assert explicit["to"] == "claude-3-5-sonnet-20241022"


def test_throughput_drop_and_budget_exhaustion() -> None:
    sc = scenario()
    drop = Incident("d", "throughput_drop", 1200, 1800, {"service": "doc-summarizer"})
    b, clean, _ = twin(sc, drop)
    win, win0 = (b.service == 2) & in_window(b, drop), (clean.service == 2) & in_window(clean, drop)
    assert 0.07 < win.sum() / win0.sum() < 0.13
    assert (~win).sum() == (~win0).sum()
    budget = Incident("b", "budget_exhaustion", 1200, 1500, {"service": "doc-summarizer"})
    b, clean, _ = twin(sc, budget)
    win, win0 = (b.service == 2) & in_window(b, budget), (clean.service == 2) & in_window(clean, budget)
    assert 18 < win.sum() / win0.sum() < 22
    assert (~win).sum() == (~win0).sum()
    assert np.all(b.incident[win] == 0)


# --- OTLP requests -----------------------------------------------------------------------------


def test_requests_decode_to_the_calls() -> None:
    sc = scenario(duration_s=300.0, warmup_s=10.0, incidents=(
        Incident("s", "model_swap", 100, 200, {"service": "support-chat", "model": "gpt-4o"}),
        Incident("o", "provider_outage", 150, 250, {"provider": "anthropic"})))
    m = TrafficModel(sc)
    calls = m.calls(90, 210)
    requests = m.requests(90, 210, T0)
    assert set(requests) == set(sc.services)
    ids = m.span_ids(calls)
    index = {ids[24 * i:24 * i + 16].hex(): i for i in range(len(calls))}
    extractor = Extractor(ExtractConfig())
    seen = 0
    for service, request in requests.items():
        result = extractor.extract(request)
        assert result.spans == result.llm_calls == len(result.rows)
        assert result.unknown_cost == 0  # every model of the traffic has a price (failed calls too)
        for row in result.rows:
            i = index[row[COL["trace_id"]]]
            seen += 1
            assert row[COL["service"]] == service == sc.services[calls.service[i]]
            assert row[COL["time_unix_nano"]] == T0 + round(calls.t[i] * 1e9)
            assert row[COL["latency_ms"]] == pytest.approx(calls.latency_ms[i], abs=1e-3)
            assert row[COL["region"]] == sc.regions[calls.region[i]]
            assert row[COL["pod"]].startswith(service)
            assert row[COL["namespace"]] == "llm-apps"
            assert row[COL["request_model"]] == m.profiles[calls.model[i]].request_model
            assert row[COL["provider"]] == m.profiles[calls.model[i]].provider
            assert row[COL["user"]] == m.users[calls.user[i]]
            assert bool(row[COL["is_error"]]) == bool(calls.is_error[i])
            if calls.is_error[i]:
                assert row[COL["error_type"]] == ERROR_TYPES[calls.error_type[i]][0]
                assert row[COL["output_tokens"]] is None and row[COL["cost_usd"]] is None
            else:
                assert row[COL["response_model"]] == m.response_models[calls.response_model[i]]
                assert row[COL["input_tokens"]] == calls.input_tokens[i]
                assert row[COL["output_tokens"]] == calls.output_tokens[i]
                assert row[COL["cost_usd"]] > 0  # priced from the real model names
            if math.isnan(calls.ttft_ms[i]):
                assert row[COL["ttft_ms"]] is None
            else:
                assert row[COL["ttft_ms"]] == pytest.approx(calls.ttft_ms[i])
    assert seen == len(calls)


# --- scenario files ----------------------------------------------------------------------------


SHIPPED = sorted(SCENARIOS.glob("*.yaml"))


def test_the_expected_files_ship() -> None:
    names = {p.stem for p in SHIPPED}
    assert names >= {"quick", "quick-clean", "latency", "outage", "errors", "abuse", "cost", "swap", "throughput",
                     "budget", "clean", "clean-long", "clean-realistic", "incidents-realistic", "forest"}
    covered = {inc.type for p in SHIPPED for inc in load_scenario(p).incidents}
    assert covered == set(DETECT_AS)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_scenario_loads_and_plays(path: Path, tmp_path: Path) -> None:
    sc = load_scenario(path)
    assert sc.name == path.stem
    m = TrafficModel(sc)
    assert len(m.calls(sc.warmup_s, sc.warmup_s + 10)) > 0
    AggregatorConfig(data_dir=str(tmp_path), **sc.aggregator).validate()
    SidecarConfig(**sc.sidecar).validate()
    assert sc.warmup_s >= 600  # ten simulated minutes for the per-minute detectors
    assert sc.clean == (not sc.incidents)
    if sc.name not in ("clean-long", "clean-realistic", "incidents-realistic"):  # the long ones: hours at 60x
        assert sc.wall_seconds <= 101
    for inc in sc.incidents:
        incident_defaults(inc, sc)


def test_quick_and_its_clean_twin() -> None:
    quick, clean = load_scenario(SCENARIOS / "quick.yaml"), load_scenario(SCENARIOS / "quick-clean.yaml")
    assert quick.wall_seconds <= 90 and quick.sidecars == 2 and quick.wall_rate <= 1500
    assert {i.type for i in quick.incidents} == {"latency_spike", "error_burst", "throughput_drop"}
    assert clean.clean and not clean.incidents
    same = ("seed", "duration_s", "speedup", "rate", "sidecars", "services", "models", "regions", "users",
            "error_rate", "daily_amplitude", "aggregator", "sidecar")
    assert {k: getattr(quick, k) for k in same} == {k: getattr(clean, k) for k in same}
    a = TrafficModel(quick).calls(0, quick.warmup_s)
    b = TrafficModel(clean).calls(0, clean.warmup_s)
    assert np.array_equal(a.t, b.t) and np.array_equal(a.latency_ms, b.latency_ms)


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the traffic model's catalogue"):
        TrafficModel(scenario(models=("gpt-4o", "no-such-model")))


def test_realistic_knobs_and_the_new_incidents() -> None:
    clean = load_scenario(SCENARIOS / "clean-realistic.yaml")
    inc = load_scenario(SCENARIOS / "incidents-realistic.yaml")
    calls = TrafficModel(clean).calls(600, 1200)
    assert (calls.error_type == 2).sum() > 0 and (calls.latency_ms[calls.error_type == 2] > 55_000).all()
    logs = np.log(calls.input_tokens[calls.service == 0])
    assert 0.8 < logs.std() < 1.0  # input_sigma 0.9
    users = np.bincount(calls.user, minlength=clean.users)
    assert users[0] > 20 * np.median(users)  # Zipf 1.0: a heavy head user
    m = TrafficModel(inc)
    by_id = {i.id: (k, i) for k, i in enumerate(inc.incidents)}
    base = TrafficModel(clean)
    for name in ("ttft", "collapse", "length", "new-model", "creep"):
        k, i = by_id[name]
        mid = i.start_s + 300
        b, c = m.calls(mid, mid + 60), base.calls(mid, mid + 60)
        hit = b.incident == k
        assert hit.any(), name
        if name == "ttft":  # TTFT x5, latency as it was
            assert np.nanmedian(b.ttft_ms[hit]) > 3 * np.nanmedian(c.ttft_ms[hit])
            assert np.allclose(b.latency_ms, c.latency_ms)
        elif name == "collapse":
            assert np.median(b.output_tokens[hit]) < 10
            assert np.allclose(b.latency_ms, c.latency_ms)
        elif name == "length":
            assert 0.35 < (b.finish_reason[hit] == FINISH_REASONS.index("length")).mean() < 0.5
        elif name == "new-model":
            moved = np.array([m.profiles[x].request_model == "gpt-4.1-mini" for x in b.model[hit]])
            assert 0.2 < moved.mean() < 0.4  # share 0.3 of the service's calls
        else:  # +3 %/min for 5 minutes
            assert 1.1 < np.median(b.input_tokens[hit] / c.input_tokens[hit]) < 1.25


def test_decoupled_latency_keeps_each_distribution_and_loses_the_pairing() -> None:
    sc = scenario()
    inc = Incident("d", "decoupled_latency", 1200, 1800, {"service": "support-chat", "model": "gpt-4o"})
    b, clean, _m = twin(sc, inc)
    assert np.array_equal(b.t, clean.t) and np.array_equal(b.output_tokens, clean.output_tokens)
    hit = (b.service == 0) & (b.model == 0) & ~b.is_error & in_window(b, inc)
    assert hit.sum() > 500
    assert np.allclose(b.latency_ms[~hit], clean.latency_ms[~hit])  # nothing else changes
    # Latency is computed from another call's tokens: its distribution stays, its pairing with the
    # call's own output tokens (so the call's tokens/s) goes.
    q = [0.1, 0.5, 0.9]
    assert np.allclose(np.quantile(b.latency_ms[hit], q), np.quantile(clean.latency_ms[hit], q), rtol=0.1)
    r_clean = np.corrcoef(np.log(clean.output_tokens[hit]), np.log(clean.latency_ms[hit]))[0, 1]
    r_hit = np.corrcoef(np.log(b.output_tokens[hit]), np.log(b.latency_ms[hit]))[0, 1]
    assert r_clean > 0.5 and abs(r_hit) < 0.15
