"""Detectors wired into the aggregator: candidates from ingested batches, served and counted."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from sentinel import wire
from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch
from tests.conftest import AggregatorFactory
from tests.test_aggregator_ingest import _post


def _body(seq: int, n: int, response_model: str) -> bytes:
    now = time.time_ns()
    rows = []
    for i in range(n):
        v: dict[str, Any] = {name: None for name in COLUMNS}
        v.update(time_unix_nano=now + i, service="checkout", request_model="gpt-4o", operation="chat",
                 response_model=response_model, latency_ms=100.0, input_tokens=10.0, output_tokens=20.0,
                 is_error=0, trace_id=f"{seq:08x}{i:024x}", span_id=f"{i:016x}")
        rows.append(tuple(v[name] for name in COLUMNS))
    return wire.encode(FeatureBatch.from_rows(rows), sidecar="sc", seq=seq)


async def test_model_swap_becomes_a_served_candidate(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(detectors={"model_swap": {"min_calls": 20, "min_new_calls": 3}})
    assert (await _post(agg, _body(1, 40, "gpt-4o-2024-08-06"))).status_code == 200
    assert (await _post(agg, _body(2, 5, "gpt-4o-mini-2024-07-18"))).status_code == 200
    await agg.analysis.drain()
    async with httpx.AsyncClient() as c:
        body = (await c.get(f"{agg.url}/api/v1/candidates", params={"type": "model_swap"})).json()
        assert (await c.get(f"{agg.url}/api/v1/candidates", params={"limit": "x"})).status_code == 400
    assert body["count"] == 1
    cand = body["candidates"][0]
    assert cand["service"] == "checkout" and cand["model"] == "gpt-4o"
    assert cand["detection_method"]
    assert agg.metrics.registry.get_sample_value(
        "sentinel_aggregator_candidates_total",
        {"anomaly_type": "model_swap", "detection_method": cand["detection_method"]}) == 1


async def test_detector_state_survives_a_restart(make_aggregator: AggregatorFactory) -> None:
    settings = {"detectors": {"model_swap": {"min_calls": 20}}}
    agg = await make_aggregator(**settings)
    assert (await _post(agg, _body(1, 40, "gpt-4o-2024-08-06"))).status_code == 200
    await agg.analysis.drain()
    await agg.shutdown()
    again = await make_aggregator(**settings)
    # The learned response model is remembered: the new one is still news after the restart.
    assert (await _post(again, _body(2, 5, "gpt-4o-mini-2024-07-18"))).status_code == 200
    await again.analysis.drain()
    assert again.candidates.recent(anomaly_type="model_swap")


@pytest.mark.parametrize(("detectors", "needle"), [
    ({"nope": {}}, "detectors.nope"),
    ({"model_swap": {"min_calls": 0}}, "detectors.model_swap.min_calls"),
    ({"model_swap": {"bogus": 1}}, "detectors.model_swap.bogus"),
])
def test_detector_settings_errors_name_the_key(detectors: dict[str, Any], needle: str) -> None:
    from aggregator.config import AggregatorConfig

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        AggregatorConfig(detectors=detectors).validate()


def _varied_body(seq: int, n: int, *, outliers: int = 0, seed: int = 0) -> bytes:
    import numpy as np

    rng = np.random.default_rng(seed)
    now = time.time_ns()
    rows = []
    for i in range(n):
        bad = i < outliers
        inp = float(rng.lognormal(6, 0.5)) * (30 if bad else 1)
        out = float(rng.lognormal(5, 0.5))
        lat = (300 + 10 * out) * float(rng.lognormal(0, 0.1)) * (50 if bad else 1)
        v: dict[str, Any] = {name: None for name in COLUMNS}
        v.update(time_unix_nano=now + i, service="checkout", request_model="gpt-4o", operation="chat",
                 response_model="gpt-4o-2024-08-06", latency_ms=lat, input_tokens=inp, output_tokens=out,
                 tokens_per_s=out / lat * 1000, cost_usd=inp * 2.5e-6 + out * 1e-5, is_error=0,
                 trace_id=f"{seq:08x}{i:024x}", span_id=f"{i:016x}")
        rows.append(tuple(v[name] for name in COLUMNS))
    return wire.encode(FeatureBatch.from_rows(rows), sidecar="sc", seq=seq)


async def test_isolation_forest_trains_in_the_background_and_flags_outliers(
    make_aggregator: AggregatorFactory,
) -> None:
    agg = await make_aggregator(forest={"min_train_rows": 600, "retrain_every_rows": 100_000, "random_state": 0})
    assert agg.forest is not None
    for seq in range(3):
        assert (await _post(agg, _varied_body(seq, 300, seed=seq))).status_code == 200
    await agg.analysis.drain()
    assert agg.forest.wait_for_fits(30.0)
    assert agg.forest.model("gpt-4o") is not None
    assert (await _post(agg, _varied_body(99, 100, outliers=3, seed=99))).status_code == 200
    await agg.analysis.drain()
    # Only the last batch: earlier ones may or may not have been scored, depending on when the
    # background fit finished.
    found = [c for c in agg.candidates.recent(anomaly_type="multivariate_outlier")
             if c["context"]["trace_ids"][0].startswith(f"{99:08x}")]
    flagged = {c["context"]["trace_ids"][0] for c in found}
    assert {f"{99:08x}{i:024x}" for i in range(3)} <= flagged
    assert len(found) <= 3 + 5  # few false alarms among the 97 ordinary rows


def test_forest_settings_errors_name_the_key() -> None:
    from aggregator.config import AggregatorConfig

    with pytest.raises(ConfigError, match=r"^forest\.bogus"):
        AggregatorConfig(forest={"bogus": 1}).validate()
    assert AggregatorConfig(forest={"enabled": False}).forest_config() is None
