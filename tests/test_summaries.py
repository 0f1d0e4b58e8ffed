"""forward: summaries: the sidecar's summariser, the wire fields, exact baseline merges, rows rebuilt for detectors."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from aggregator.analysis.baselines.store import BaselineConfig, BaselineKey, BaselineStore
from aggregator.analysis.detectors.error_burst import ErrorBurstDetector
from aggregator.analysis.detectors.level_shift import LevelShiftDetector
from aggregator.analysis.summaries import FromSummaries, SummaryBaselines, expand, merge_into
from sentinel import wire
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch, LocalAnomaly
from sentinel.summary import Summary
from sidecar.summaries import Summariser, SummaryConfig
from tests.test_aggregator_detectors import MIN, T0, flush, make_batch, run
from tests.test_regional_detection import REGIONS
from tests.test_regional_detection import traffic as regional_traffic

S = 1_000_000_000


def batch(n: int, seed: int = 0, *, minute: int = 0, error_p: float = 0.02) -> FeatureBatch:
    rng = np.random.default_rng(seed)
    t = np.sort(T0 + minute * MIN + rng.integers(0, MIN, n))
    return make_batch(
        t.tolist(), latency_ms=2000 * rng.lognormal(0, 0.5, n), ttft_ms=300 * rng.lognormal(0, 0.3, n),
        input_tokens=np.round(800 * rng.lognormal(0, 0.8, n)), output_tokens=np.round(200 * rng.lognormal(0, 0.5, n)),
        tokens_per_s=50 * rng.lognormal(0, 0.3, n), cost_usd=0.002 * rng.lognormal(0, 0.6, n),
        is_error=(rng.random(n) < error_p).astype(np.uint8), region=rng.choice(REGIONS, size=n).tolist(),
        operation=["chat"] * n, error_type=np.where(rng.random(n) < error_p, "timeout", None).tolist(),
        finish_reason=rng.choice(["stop", "length"], size=n, p=[0.95, 0.05]).tolist(),
        span_id=[f"{seed}-{i:06d}" for i in range(n)], trace_id=[f"{seed:032x}"] * n)


def over_the_wire(summaries: list[Summary]) -> list[Summary]:
    body = wire.encode(FeatureBatch.empty(), sidecar="edge", seq=1, summaries=summaries)
    return wire.decode(body).summaries


def test_summaries_merge_into_the_baselines_exactly_as_the_rows_would() -> None:
    rows = FeatureBatch.concat([batch(3000, 1), batch(2000, 2, minute=1)])
    s = Summariser(SummaryConfig(forward="summaries"), seed=0)
    s.add(rows, [])
    summaries = over_the_wire(s.take())
    assert s.pending == 0 and sum(x.n for x in summaries) == 5000
    by_rows, by_summaries = BaselineStore(BaselineConfig()), BaselineStore(BaselineConfig())
    by_rows.update(rows)
    merge_into(by_summaries, summaries)
    for region in (None, *REGIONS):
        a = by_rows.baseline(BaselineKey("chat-api", "gpt-4o", "chat", region))
        b = by_summaries.baseline(BaselineKey("chat-api", "gpt-4o", "chat", region))
        assert a is not None and b is not None
        assert (a.calls, a.errors) == (b.calls, b.errors)
        for metric, ma in a.metrics.items():
            mb = b.metrics[metric]
            assert ma.count == mb.count and (ma.min, ma.max) == (mb.min, mb.max)
            assert mb.mean == pytest.approx(ma.mean, rel=1e-9) and mb.m2 == pytest.approx(ma.m2, rel=1e-6)
            for q in (0.01, 0.5, 0.9, 0.99, 0.999):
                assert mb.quantile(q) == ma.quantile(q), (region, metric, q)  # the same sketch bins


def test_rebuilt_rows_keep_counts_errors_and_quantiles() -> None:
    rows = batch(4000, 3, error_p=0.1)
    s = Summariser(SummaryConfig(forward="summaries"), seed=0)
    s.add(rows, [])
    rebuilt = expand(over_the_wire(s.take()))
    assert rebuilt.n == rows.n
    assert int(rebuilt.numeric["is_error"].sum()) == int(rows.numeric["is_error"].sum())
    assert rebuilt.strings["error_type"].count("timeout") == rows.strings["error_type"].count("timeout")
    assert sorted(set(rebuilt.strings["region"])) == sorted(REGIONS)
    assert (rebuilt.numeric["time_unix_nano"] // MIN == T0 // MIN).all()  # within their own minute
    for metric in ("latency_ms", "cost_usd", "input_tokens"):
        got, want = rebuilt.numeric[metric], rows.numeric[metric]
        for q in (0.5, 0.95, 0.99):
            assert np.nanquantile(got, q) == pytest.approx(np.nanquantile(want, q), rel=0.03)
        assert np.nansum(got) == pytest.approx(np.nansum(want), rel=0.01)


def test_the_sidecar_forwards_the_anomalous_rows_and_a_sample() -> None:
    rows = batch(10_000, 4)
    spans = rows.strings["span_id"]
    flagged = [LocalAnomaly(metric="latency_ms", value=1.0, baseline=1.0, deviation=1.0, threshold=1.0, sigma=9.0,
                            method="zscore", service="chat-api", model="gpt-4o", operation="chat", trace_id=None,
                            span_id=spans[i], time_unix_nano=T0) for i in (5, 500)]
    s = Summariser(SummaryConfig(forward="summaries", sample_rate=0.01), seed=1)
    forwarded = s.add(rows, flagged)
    assert {spans[5], spans[500]} <= set(forwarded.strings["span_id"])
    assert 50 < forwarded.n < 160  # 1 % of 10,000, plus the two


@pytest.mark.parametrize("kw, message", [
    ({"forward": "some"}, "forward: 'some' is not one of rows, summaries"),
    ({"sample_rate": 2.0}, "summaries.sample_rate: must be between 0 and 1"),
    ({"flush_s": 0}, "summaries.flush_s: must be greater than 0"),
])
def test_bad_settings_name_the_key(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SummaryConfig(**kw).validate()


@pytest.mark.parametrize("change, message", [
    ({"errors": 10**6}, "errors is more than n"),
    ({"width_s": 0}, "width_s must be an integer of 1 to 3600"),
    ({"key": {"colour": "red"}}, "key must be a map of service"),
    ({"metrics": {"latency_ms": {"count": 1, "mean": -1.0, "m2": 0.0, "min": 0.0, "max": 0.0, "accuracy": 0.01,
                                 "offset": 0, "counts": [1]}}}, "mean, m2, min and max must be finite"),
    ({"metrics": {"latency_ms": {"count": 2, "mean": 1.0, "m2": 0.0, "min": 1.0, "max": 1.0, "accuracy": 0.01,
                                 "offset": 0, "counts": [1]}}}, "do not add up to count"),
])
def test_bad_summaries_are_refused_naming_the_field(change: dict[str, Any], message: str) -> None:
    import msgpack

    s = Summariser(SummaryConfig(forward="summaries"))
    s.add(batch(50, 5), [])
    body = msgpack.unpackb(wire.encode(FeatureBatch.empty(), sidecar="e", seq=1, summaries=s.take()))
    body["summaries"][0].update(change)
    with pytest.raises(wire.WireFormatError, match=message):
        wire.decode(msgpack.packb(body))


def summarised(batches: list[FeatureBatch]) -> list[wire.WireBatch]:
    """What a summaries-mode sidecar sends for ``batches``: one summary batch per input batch."""
    s = Summariser(SummaryConfig(forward="summaries"), seed=0)
    out = []
    for i, b in enumerate(batches):
        s.add(b, [])
        out.append(wire.decode(wire.encode(FeatureBatch.empty(), sidecar="e", seq=i, summaries=s.take())))
    return out


class Collect:
    def __init__(self, det: Any) -> None:
        self.det = det
        self.found: list[Any] = []

    def consume(self, batch: wire.WireBatch, *, arrival_ns: int) -> None:
        self.found += self.det.update(batch.batch)

    def save(self) -> None:
        pass


def test_a_regional_level_shift_is_found_from_summaries_as_from_rows() -> None:
    batches = regional_traffic(60, 1, factor=3.0, regions=["ap-south-1"])
    det = LevelShiftDetector()
    from_rows = run(det, batches) + flush(det, T0 + 70 * MIN)
    c = Collect(LevelShiftDetector())
    consumer = FromSummaries(c)
    for wb in summarised(batches):
        consumer.consume(wb, arrival_ns=0)
    c.found += flush(c.det, T0 + 70 * MIN)
    [cand] = c.found
    assert cand.context["region"] == "ap-south-1" and cand.context["regional"]
    assert [(x.anomaly_type, x.context["region"]) for x in from_rows] == [("latency_spike", "ap-south-1")]
    assert cand.window_start == from_rows[0].window_start


def test_an_error_burst_is_found_from_summaries() -> None:
    batches = [batch(600, 10 + m, minute=m, error_p=0.6 if m == 40 else 0.01) for m in range(50)]
    c = Collect(ErrorBurstDetector())
    consumer = FromSummaries(c)
    for wb in summarised(batches):
        consumer.consume(wb, arrival_ns=0)
    c.found += flush(c.det, T0 + 60 * MIN)
    bursts = [x for x in c.found if x.anomaly_type == "error_burst"]
    assert bursts and all(x.window_start >= T0 + 40 * MIN for x in bursts)


def test_summarised_rows_are_not_counted_twice_in_the_baselines() -> None:
    class Service:
        def __init__(self) -> None:
            self.store = BaselineStore(BaselineConfig())

        def consume(self, batch: wire.WireBatch, *, arrival_ns: int) -> None:
            self.store.update(batch.batch)

        def merge_summaries(self, summaries: list[Summary]) -> None:
            merge_into(self.store, summaries)

        def save(self) -> None:
            pass

    svc = Service()
    consumer = SummaryBaselines(svc)
    rows = batch(1000, 6)
    s = Summariser(SummaryConfig(forward="summaries", sample_rate=0.1), seed=0)
    sample = s.add(rows, [])
    consumer.consume(wire.decode(wire.encode(sample, sidecar="e", seq=1, summarised=True)), arrival_ns=0)
    consumer.consume(wire.decode(wire.encode(FeatureBatch.empty(), sidecar="e", seq=2, summaries=s.take(),
                                             summarised=True)), arrival_ns=0)
    key = svc.store.baseline(BaselineKey("chat-api", "gpt-4o", "chat", None))
    assert key is not None and key.calls == 1000 and not math.isnan(key.error_rate)


# --- end to end: a real sidecar in summaries mode and a real aggregator ---------------------------------


async def test_summaries_mode_end_to_end(make_aggregator: Any, make_sidecar: Any) -> None:
    import asyncio
    import random

    import httpx

    from loadtest.spans import DEFAULT_MODELS, DEFAULT_START_UNIX_NANO, anomalous_span, build_trace_request

    agg = await make_aggregator(late_after_s=10 * 365 * 86400.0)
    sc = await make_sidecar(aggregator_url=agg.url, forward="summaries",
                            summaries={"sample_rate": 0.0, "flush_s": 0.2})
    url = f"http://127.0.0.1:{sc.ports()['http']}/v1/traces"
    one: dict[str, Any] = {"services": ("support-chat",), "models": DEFAULT_MODELS[:1], "error_rate": 0.05}
    warm = build_trace_request(400, rng=random.Random(3), **one)
    spike = build_trace_request(1, rng=random.Random(4), start_unix_nano=DEFAULT_START_UNIX_NANO + 60 * S, **one)
    span = spike.resource_spans[0].scope_spans[0].spans[0]
    anomalous_span(span, latency_factor=200.0)
    pb = {"Content-Type": "application/x-protobuf"}
    async with httpx.AsyncClient() as client:
        assert (await client.post(url, content=warm.SerializeToString(), headers=pb)).status_code == 200
        assert (await client.post(url, content=spike.SerializeToString(), headers=pb)).status_code == 200
        for _ in range(500):
            await agg.analysis.drain()
            b = agg.baselines.store.query(service="support-chat", region=None)
            if b and b[0]["calls"] == 401:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"baselines did not count the 401 calls: {b}")
    # Only the anomalous row travelled as a row (sample rate 0); the rest as summaries.
    assert sc.metrics.forwarded_rows._value.get() <= 5
    assert agg.metrics.rows_ingested._value.get() <= 5
