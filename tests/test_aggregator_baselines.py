"""Global baselines end to end: sidecar -> aggregator ingest -> baselines, served, saved, restored."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest

from loadtest.spans import build_trace_request
from tests.conftest import AggregatorFactory, SidecarFactory
from tests.test_aggregator_ingest import _body, _post

PB = {"Content-Type": "application/x-protobuf"}


async def _get(url: str, **params: str) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.get(f"{url}/api/v1/baselines", params=params)


async def test_baselines_from_sidecar_traffic_are_served(
    make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory
) -> None:
    agg = await make_aggregator()
    sc = await make_sidecar(aggregator_url=agg.url)
    request = build_trace_request(400, rng=random.Random(4), services=("support-chat",))
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/traces", content=request.SerializeToString(),
                         headers=PB)
        assert r.status_code == 200
    assert sc.pipeline is not None
    await sc.pipeline.flush()
    for _ in range(300):
        await agg.analysis.drain()
        if (await _get(agg.url, service="support-chat", region="global")).json()["count"]:
            break
        await asyncio.sleep(0.02)
    body = (await _get(agg.url, service="support-chat", region="global")).json()
    assert body["count"] >= 1
    assert sum(b["calls"] for b in body["baselines"]) == 400
    first = body["baselines"][0]
    assert first["service"] == "support-chat" and first["region"] is None
    lat = first["metrics"]["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    # Per-region baselines sit beside the global ones.
    everything = (await _get(agg.url, service="support-chat")).json()
    assert any(b["region"] is not None for b in everything["baselines"])
    assert (await _get(agg.url, service="nobody")).json()["count"] == 0


async def test_bad_hour_is_400(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    r = await _get(agg.url, hour="200")
    assert r.status_code == 400 and "hour" in r.json()["error"]


async def test_baselines_survive_a_restart(make_aggregator: AggregatorFactory, tmp_path: Path) -> None:
    agg = await make_aggregator()
    for seq in range(3):
        assert (await _post(agg, _body(seq, n=50))).status_code == 200
    await agg.analysis.drain()
    before = (await _get(agg.url)).json()
    assert before["count"] >= 1
    await agg.shutdown()
    assert (tmp_path / "aggregator" / "baselines.json").exists()
    again = await make_aggregator()
    after = (await _get(again.url)).json()
    assert after == before


@pytest.mark.parametrize("key", ["max_keys", "relative_accuracy", "metrics"])
def test_baseline_settings_are_validated(key: str) -> None:
    from aggregator.config import AggregatorConfig
    from sentinel.config import ConfigError, load

    bad = {"max_keys": 0, "relative_accuracy": 2.0, "metrics": ["bogus"]}[key]
    with pytest.raises(ConfigError, match=f"^baselines.{key}"):
        load(AggregatorConfig, data={"baselines": {key: bad}}, env={})
