"""aggregator.analysis.confirm: forwarded local anomalies confirmed or dismissed against global baselines."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aggregator.analysis.baselines.consumer import BaselineConsumer
from aggregator.analysis.baselines.store import BaselineConfig, BaselineStore
from aggregator.analysis.confirm import UNCHECKED_CONFIDENCE, ConfirmConfig, LocalAnomalyConfirmer
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.metrics import AggregatorMetrics
from loadtest.spans import DEFAULT_MODELS, DEFAULT_START_UNIX_NANO, anomalous_span, build_trace_request
from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch, LocalAnomaly
from sentinel.wire import WireBatch
from tests.conftest import AggregatorFactory, SidecarFactory

T0 = 1_750_000_000 * 10**9
PB = {"Content-Type": "application/x-protobuf"}


def normal_batch(n: int, *, seed: int = 0, service: str = "chat", model: str = "gpt-4o",
                 error_p: float = 0.05) -> FeatureBatch:
    """``n`` ordinary calls of one key: latency ~150 ms, ~20 tokens/s, ~5 % errors, two regions."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row: dict[str, Any] = {
            "time_unix_nano": T0 + i * 10**9, "service": service, "request_model": model, "operation": "chat",
            "region": ("eu", "us")[i % 2], "latency_ms": float(rng.lognormal(5, 0.3)),
            "ttft_ms": float(rng.lognormal(4, 0.3)), "input_tokens": float(rng.integers(100, 1000)),
            "output_tokens": float(rng.integers(50, 300)), "tokens_per_s": float(rng.lognormal(3, 0.2)),
            "cost_usd": float(rng.lognormal(-6, 0.3)), "is_error": int(rng.random() < error_p),
        }
        rows.append(tuple(row.get(c) for c in COLUMNS))
    return FeatureBatch.from_rows(rows)


def anomaly(metric: str, value: float, *, method: str = "zscore", baseline: float = math.nan,
            sigma: float = 8.0, service: str = "chat", model: str = "gpt-4o") -> LocalAnomaly:
    return LocalAnomaly(metric=metric, value=value, baseline=baseline, deviation=0.3, threshold=baseline * 2,
                        sigma=sigma, method=method, service=service, model=model, operation="chat",
                        trace_id="t" * 32, span_id="s" * 16, time_unix_nano=T0 + 5 * 10**12)


class Harness:
    def __init__(self, rows: int = 1_000, **config: Any) -> None:
        self.store = BaselineStore(BaselineConfig())
        self.store.update(normal_batch(rows))
        self.metrics = AggregatorMetrics(CollectorRegistry())
        self.confirmer = LocalAnomalyConfirmer(ConfirmConfig(**config), self.store,
                                               outcome=self.metrics.count_local_anomaly)

    def feed(self, *anomalies: LocalAnomaly) -> list[Candidate]:
        return self.confirmer.consume(WireBatch(sidecar="sc-1", seq=1, batch=FeatureBatch.empty(),
                                                anomalies=list(anomalies)), arrival_ns=0)

    def outcome(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value("sentinel_aggregator_local_anomalies_total",
                                                       {"outcome": name})
        assert value is not None
        return value


def test_far_above_global_p99_is_confirmed() -> None:
    h = Harness()
    [c] = h.feed(anomaly("latency_ms", 5_000.0, baseline=150.0, sigma=9.0))
    assert (c.anomaly_type, c.detection_method, c.metric) == ("latency_spike", "local_zscore+global_p99", "latency_ms")
    assert c.value == 5_000.0 and c.service == "chat" and c.model == "gpt-4o"
    p99 = c.context["global_quantile"]
    assert 150.0 < p99 < 500.0
    assert c.threshold == pytest.approx(p99 * p99 / c.baseline)  # p99 · (p99/p50)^margin
    assert 100.0 < c.baseline < 250.0  # the global p50
    assert c.deviation_sigma > 10
    assert 0.9 < c.confidence <= 1.0  # both agree strongly
    assert (c.window_start, c.window_end) == (T0 + 5 * 10**12, T0 + 5 * 10**12 + 1)
    assert c.context["trace_ids"] == ["t" * 32] and c.context["span_id"] == "s" * 16
    assert c.context["sidecar"] == "sc-1" and c.context["global_checked"] is True
    assert c.context["local"] == {"method": "zscore", "baseline": 150.0, "deviation": 0.3, "threshold": 300.0,
                                  "sigma": 9.0}
    assert h.outcome("confirmed") == 1 and h.outcome("dismissed") == 0


@pytest.mark.parametrize(("metric", "value", "kind"), [
    ("ttft_ms", 10_000.0, "latency_spike"),
    ("input_tokens", 50_000.0, "token_spike"),
    ("output_tokens", 5_000.0, "token_spike"),
    ("cost_usd", 1.0, "cost_anomaly"),
])
def test_anomaly_type_follows_the_metric(metric: str, value: float, kind: str) -> None:
    [c] = Harness().feed(anomaly(metric, value))
    assert c.anomaly_type == kind and c.metric == metric


def test_within_global_range_is_dismissed_and_counted() -> None:
    h = Harness()
    # The sidecar saw 250 ms as a spike (its own traffic was fast); the fleet's p99 is higher.
    assert h.feed(anomaly("latency_ms", 250.0, baseline=80.0, sigma=6.0),
                  anomaly("input_tokens", 900.0, baseline=200.0)) == []
    assert h.outcome("dismissed") == 2 and h.outcome("confirmed") == 0
    assert (h.confirmer.confirmed, h.confirmer.dismissed) == (0, 2)


def test_just_past_p99_needs_the_margin() -> None:
    h = Harness()
    [c] = h.feed(anomaly("latency_ms", 1e6))
    p50, p99 = c.baseline, c.context["global_quantile"]
    just_past = anomaly("latency_ms", p99 * 1.2, baseline=100.0)
    assert h.feed(just_past) == []  # a value of the key's own tail
    [plain] = Harness(margin=0).feed(just_past)  # the plain p99 check
    assert plain.threshold == pytest.approx(p99) and plain.confidence >= 0.6
    # Past the limit p99 · (p99/p50): confirmed.
    assert len(h.feed(anomaly("latency_ms", p99 * p99 / p50 * 1.5, baseline=100.0))) == 1
    # Just past the limit, just flagged by the sidecar: the far tail of a clean key, not confirmed.
    assert h.feed(anomaly("latency_ms", p99 * p99 / p50 * 1.05, baseline=100.0, sigma=5.1)) == []
    assert len(Harness(min_confidence=0.6).feed(
        anomaly("latency_ms", p99 * p99 / p50 * 1.05, baseline=100.0, sigma=5.1))) == 1


def test_tokens_per_s_is_judged_on_the_low_side() -> None:
    h = Harness()
    [c] = h.feed(anomaly("tokens_per_s", 2.0, baseline=20.0, sigma=-7.0))
    assert c.anomaly_type == "throughput_drop" and c.threshold < 20.0  # the global p1
    assert c.detection_method == "local_zscore+global_p1" and c.deviation_sigma < -4
    # Slow for this sidecar but within the fleet's range; and, without a local baseline, a high
    # value is checked on the metric's default (low) side: neither is confirmed.
    assert h.feed(anomaly("tokens_per_s", 15.0, baseline=25.0, sigma=-6.0),
                  anomaly("tokens_per_s", 500.0)) == []
    assert h.outcome("dismissed") == 2


def test_thresholds_are_always_confirmed() -> None:
    h = Harness()
    [inside, beyond] = h.feed(anomaly("latency_ms", 200.0, method="threshold", baseline=150.0, sigma=math.nan),
                              anomaly("latency_ms", 9_000.0, method="threshold", baseline=150.0, sigma=math.nan))
    assert inside.detection_method == "local_threshold+global_p99" and inside.confidence == 0.8
    assert inside.context["global_beyond"] is False and beyond.context["global_beyond"] is True
    assert beyond.confidence > inside.confidence


def test_error_rate_confirmed_when_the_global_rate_is_lower() -> None:
    h = Harness()  # ~5 % errors globally
    [c] = h.feed(anomaly("error_rate", 0.6, method="error_rate", sigma=math.nan))
    assert (c.anomaly_type, c.detection_method) == ("error_burst", "local_error_rate+global_rate")
    assert 0.0 < c.baseline < 0.1 and c.threshold == c.baseline and math.isnan(c.deviation_sigma)
    assert h.feed(anomaly("error_rate", 0.01, method="error_rate", sigma=math.nan)) == []


def test_too_little_global_history_trusts_the_sidecar() -> None:
    h = Harness(rows=50)  # below min_global_count=200
    [few, unknown, errors] = h.feed(
        anomaly("latency_ms", 160.0, baseline=100.0),  # would be dismissed with enough history
        anomaly("latency_ms", 160.0, baseline=100.0, service="new-service"),
        anomaly("error_rate", 0.01, method="error_rate", sigma=math.nan))
    for c in (few, unknown, errors):
        assert c.confidence == UNCHECKED_CONFIDENCE and c.context["global_checked"] is False
        assert math.isnan(c.threshold)
    assert few.detection_method == "local_zscore" and few.context["global_count"] == 50
    assert unknown.context["global_count"] == 0 and math.isnan(unknown.baseline)
    assert errors.detection_method == "local_error_rate"
    assert h.outcome("confirmed") == 3
    # Without global history the sidecar is trusted only when it is sure.
    assert h.feed(anomaly("latency_ms", 160.0, baseline=100.0, sigma=5.5)) == []
    assert len(h.feed(anomaly("latency_ms", 160.0, baseline=100.0, sigma=5.5, method="threshold"))) == 1
    # A lower bar checks the same anomaly, and dismisses it.
    assert Harness(rows=50, min_global_count=20).feed(anomaly("latency_ms", 160.0, baseline=100.0)) == []


def test_disabled_and_unknown_metrics_emit_nothing() -> None:
    assert Harness(enabled=False).feed(anomaly("latency_ms", 1e6)) == []
    h = Harness()
    assert h.feed(anomaly("gpu_temperature", 1e6)) == []
    assert h.outcome("dismissed") == 1


@pytest.mark.parametrize(("settings", "key"), [
    ({"min_global_count": 0}, "confirm.min_global_count"),
    ({"min_global_count": 1.5}, "confirm.min_global_count"),
    ({"quantile": 1.0}, "confirm.quantile"),
    ({"quantile": 0.3}, "confirm.quantile"),
    ({"enabled": "yes"}, "confirm.enabled"),
    ({"margin": -1}, "confirm.margin"),
    ({"min_confidence": 1.5}, "confirm.min_confidence"),
    ({"unchecked_min_sigma": math.inf}, "confirm.unchecked_min_sigma"),
])
def test_config_errors_name_the_setting(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ConfirmConfig(**settings).validate()


def test_the_spike_does_not_inflate_its_own_baseline(tmp_path: Any) -> None:
    """In consumer order (confirmer, then baselines) a batch of spikes is judged on the old p99."""
    baselines = BaselineConsumer(BaselineConfig(), tmp_path)
    baselines.store.update(normal_batch(300))
    found: list[Candidate] = []
    confirmer = LocalAnomalyConfirmer(ConfirmConfig(), baselines.store)
    spikes = normal_batch(400, seed=9)
    spikes.numeric["latency_ms"][:] = 2_000.0  # more spikes than history: after the update p99 = 2000
    batch = WireBatch(sidecar="sc", seq=1, batch=spikes, anomalies=[anomaly("latency_ms", 2_000.0, baseline=150.0)])
    for consumer in (confirmer, baselines):
        found += consumer.consume(batch, arrival_ns=0)
    assert len(found) == 1
    # The wrong order would have dismissed it.
    assert confirmer.judge(anomaly("latency_ms", 2_000.0, baseline=150.0)) is None


# --- metrics ---------------------------------------------------------------------------------------


def test_detection_latency_is_observed_on_emit() -> None:
    metrics = AggregatorMetrics(CollectorRegistry())
    got: list[Candidate] = []
    emit = metrics.observing(got.extend)
    c = Harness().feed(anomaly("latency_ms", 5_000.0))[0]
    emit(iter([c]))  # an iterator is consumed once and still reaches the log
    assert got == [c]
    reg = metrics.registry
    assert reg.get_sample_value("sentinel_aggregator_detection_latency_seconds_count") == 1
    total = reg.get_sample_value("sentinel_aggregator_detection_latency_seconds_sum")
    assert total is not None and total > 0  # the event time lies in the past


def test_model_age_from_the_newest_fit() -> None:
    class Model:
        def __init__(self, fitted: float) -> None:
            self.fitted_unix = fitted

    class Forest:
        def __init__(self) -> None:
            self.models: dict[str | None, Model | None] = {}

        def groups(self) -> list[str | None]:
            return list(self.models)

        def model(self, group: str | None) -> Model | None:
            return self.models[group]

    metrics = AggregatorMetrics(CollectorRegistry())
    metrics._clock = lambda: 1_000.0
    forest = Forest()
    metrics.watch_forest(forest)  # type: ignore[arg-type]
    age = metrics.registry.get_sample_value("sentinel_aggregator_model_age_seconds")
    assert age is not None and math.isnan(age)
    forest.models = {"a": Model(900.0), "b": Model(960.0), None: None}
    assert metrics.registry.get_sample_value("sentinel_aggregator_model_age_seconds") == 40.0


# --- end to end ------------------------------------------------------------------------------------


async def test_sidecar_spike_becomes_a_confirmed_candidate(
    make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory
) -> None:
    # The generator's fixed historic event times are not "late" for this test.
    agg = await make_aggregator(late_after_s=10 * 365 * 86400.0)
    sc = await make_sidecar(aggregator_url=agg.url)
    assert sc.pipeline is not None
    url = f"http://127.0.0.1:{sc.ports()['http']}/v1/traces"
    one = {"services": ("support-chat",), "models": DEFAULT_MODELS[:1], "error_rate": 0.0}
    warm = build_trace_request(400, rng=random.Random(3), **one)  # type: ignore[arg-type]
    spike = build_trace_request(1, rng=random.Random(4), start_unix_nano=DEFAULT_START_UNIX_NANO + 60 * 10**9,
                                **one)  # type: ignore[arg-type]
    span = spike.resource_spans[0].scope_spans[0].spans[0]
    anomalous_span(span, latency_factor=200.0)
    trace_id = span.trace_id.hex()

    async with httpx.AsyncClient() as client:
        async def candidates() -> list[dict[str, Any]]:
            r = await client.get(f"{agg.url}/api/v1/candidates", params={"type": "latency_spike"})
            assert r.status_code == 200
            items: list[dict[str, Any]] = r.json()["candidates"]
            return items

        async def settle(until: Any) -> None:
            await sc.pipeline.flush()  # type: ignore[union-attr]
            for _ in range(300):
                await agg.analysis.drain()
                if await until():
                    return
                await asyncio.sleep(0.02)
            raise AssertionError("aggregator did not settle")

        async def warmed() -> bool:
            b = agg.baselines.store.query(service="support-chat", region=None)
            return bool(b) and b[0]["calls"] == 400

        assert (await client.post(url, content=warm.SerializeToString(), headers=PB)).status_code == 200
        await settle(warmed)
        assert (await client.post(url, content=spike.SerializeToString(), headers=PB)).status_code == 200

        async def spiked() -> bool:
            return any(trace_id in c["context"]["trace_ids"] for c in await candidates())

        await settle(spiked)
        [c] = [c for c in await candidates() if trace_id in c["context"]["trace_ids"] and c["metric"] == "latency_ms"]
        assert c["detection_method"].endswith("+global_p99") and c["context"]["global_checked"] is True
        assert c["value"] > c["threshold"] and c["service"] == "support-chat"
        assert c["context"]["sidecar"] == "test-sidecar"
        metrics = (await client.get(f"{agg.url}/metrics")).text
    assert 'sentinel_aggregator_local_anomalies_total{outcome="confirmed"}' in metrics
    assert "sentinel_aggregator_detection_latency_seconds_count" in metrics


def test_late_anomalies_are_counted_not_confirmed() -> None:
    """A replayed spool or a clock hours behind must not page now (aggregator/README.md, 'Event time')."""
    store = BaselineStore(BaselineConfig())
    found: list[Candidate] = []
    outcomes: list[str] = []
    confirmer = LocalAnomalyConfirmer(ConfirmConfig(late_after_s=300.0), store, outcome=outcomes.append)
    now = T0 + 3 * 3600 * 10**9
    old = dataclasses.replace(anomaly("error_rate", 0.9, method="error_rate"), time_unix_nano=T0)
    fresh = dataclasses.replace(old, time_unix_nano=now - 10**9)
    found += confirmer.consume(WireBatch(sidecar="s", seq=1, batch=FeatureBatch.empty(), anomalies=[old, fresh]),
                      arrival_ns=now)
    assert outcomes == ["late", "confirmed"] and len(found) == 1


# --- the sidecar's level shifts ---------------------------------------------------------------


def test_a_local_level_shift_is_judged_against_the_fleets_level_not_its_tail(tmp_path: Any) -> None:
    from aggregator.alerting.store import SQLiteAlertStore
    from tests.test_alert_manager import Clock, all_alerts, make
    h = Harness()
    shift = anomaly("latency_ms", 320.0, method="level_shift", baseline=150.0, sigma=2.5)  # x2, well inside p99
    assert Harness().feed(dataclasses.replace(shift, method="zscore")) == []  # the tail check dismisses it
    [c] = h.feed(shift)
    assert (c.anomaly_type, c.detection_method) == ("latency_spike", "local_level_shift+global_p90")
    assert c.context["sustained"] is True and 150.0 < c.threshold < 320.0 and c.confidence >= 0.8
    [ttft] = h.feed(anomaly("ttft_ms", 150.0, method="level_shift", baseline=55.0, sigma=2.5))
    assert ttft.anomaly_type == "ttft_regression"
    # a shift to a level ordinary for the fleet, a shift down, another metric, no global history: dismissed
    assert h.feed(anomaly("latency_ms", 160.0, method="level_shift", baseline=90.0),
                  anomaly("latency_ms", 60.0, method="level_shift", baseline=150.0),
                  anomaly("output_tokens", 2_000.0, method="level_shift", baseline=150.0)) == []
    assert Harness(rows=10).feed(shift) == []
    assert (h.confirmer.confirmed, h.confirmer.dismissed) == (2, 3)
    # one confirmed shift is an alert at once: it is a run of values, not one slow call
    store = SQLiteAlertStore(str(tmp_path / "alerts.db"))
    store.open()
    m = make(store, Clock())
    m.emit([c])
    assert [a.anomaly_type for a in all_alerts(store)] == ["latency_spike"]
    store.close()
    with pytest.raises(ConfigError, match=r"confirm\.level_shift_quantile"):
        ConfirmConfig(level_shift_quantile=1.0).validate()


def test_a_level_shift_is_judged_by_its_calls_in_the_batch_and_the_provider_is_named() -> None:
    """A TTFT shift whose calls are slower as a whole is a slow provider (latency_spike); a latency shift
    whose calls' tokens/s did not fall is longer outputs taking longer (dismissed); a late first token at
    the usual latency stays a TTFT regression. The batch's calls of the key say which, not the one call
    the shift was reported at (latency.yaml's drift raised ttft_regression, cost.yaml's x6 outputs
    latency_spike)."""
    h = Harness()
    ttft_shift = anomaly("ttft_ms", 150.0, method="level_shift", baseline=55.0, sigma=2.5)
    latency_shift = anomaly("latency_ms", 320.0, method="level_shift", baseline=150.0, sigma=2.5)

    def feed(shift: LocalAnomaly, *, ttft: float = 1.0, latency: float = 1.0, tps: float = 1.0) -> list[Candidate]:
        rows = normal_batch(8, seed=9, error_p=0.0)
        rows.strings["provider"] = ["openai"] * 8
        for name, factor in (("ttft_ms", ttft), ("latency_ms", latency), ("tokens_per_s", tps)):
            rows.numeric[name] = rows.numeric[name] * factor
        return h.confirmer.consume(WireBatch(sidecar="sc-1", seq=1, batch=rows, anomalies=[shift]), arrival_ns=0)

    [late_first_token] = feed(ttft_shift, ttft=3.0)
    assert late_first_token.anomaly_type == "ttft_regression" and late_first_token.context["provider"] == "openai"
    [slow] = feed(ttft_shift, ttft=3.0, latency=3.0, tps=1 / 3)  # a slow provider
    assert slow.anomaly_type == "latency_spike" and slow.context["call_slow_too"] is True
    assert feed(ttft_shift, ttft=3.0, latency=3.0) == []  # slower, but as many more tokens per second
    [spike] = feed(latency_shift, latency=2.2, tps=1 / 2.2)
    assert spike.anomaly_type == "latency_spike" and "call_slow_too" not in spike.context
    assert feed(latency_shift, latency=2.2) == []  # longer outputs taking longer
    # two calls, TTFT x1.6 and latency x1.2: too few to tell a late first token from a slow call
    h.confirmer.dismissed = 0
    rows2 = normal_batch(2, seed=9, error_p=0.0)
    rows2.numeric["ttft_ms"] = rows2.numeric["ttft_ms"] * 1.6
    rows2.numeric["latency_ms"] = rows2.numeric["latency_ms"] * 1.2
    assert h.confirmer.consume(WireBatch(sidecar="sc-1", seq=1, batch=rows2, anomalies=[ttft_shift]),
                               arrival_ns=0) == [] and h.confirmer.dismissed == 1
    # a batch whose calls do not show the shift explains nothing: judged as before
    assert [c.anomaly_type for c in feed(latency_shift)] == ["latency_spike"]


def test_a_long_call_of_a_huge_prompt_is_the_prompts_alert_not_a_latency_spike() -> None:
    """abuse.yaml: the abuser's 20x prompts took seconds to their first token, and those single TTFT values were
    confirmed as latency spikes beside the prompts' own token_spike; a long call with ordinary tokens still is one."""
    h = Harness()
    rows = normal_batch(4, seed=9, error_p=0.0)
    rows.strings["span_id"] = ["s" * 16, "a" * 16, "b" * 16, "c" * 16]

    def feed(metric: str, value: float, **tokens: float) -> list[Candidate]:
        for name, v in {"input_tokens": 500.0, "output_tokens": 150.0, **tokens}.items():
            rows.numeric[name][0] = v
        return h.confirmer.consume(WireBatch(sidecar="sc-1", seq=1, batch=rows, anomalies=[anomaly(metric, value)]),
                                   arrival_ns=0)

    assert [c.anomaly_type for c in feed("ttft_ms", 5_000.0)] == ["latency_spike"]
    assert feed("ttft_ms", 5_000.0, input_tokens=20_000.0) == []  # the prompt's prefill
    assert feed("latency_ms", 5_000.0, output_tokens=8_000.0) == []  # a huge answer
    assert [c.anomaly_type for c in feed("ttft_ms", 5_000.0, output_tokens=8_000.0)] == ["latency_spike"]
