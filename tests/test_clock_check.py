"""A wrong aggregator clock degrades visibly (issue 15, case 2): a metric and a /readyz warning.

Its clock an hour ahead made every row "late" (0 alerts); two hours behind, every row was in the
future. Nothing said so. Sidecars' seal times against arrival now do.
"""

from __future__ import annotations

import re

import httpx

from tests.conftest import AggregatorFactory
from tests.test_aggregator_ingest import _body, _post, _value

HOUR_S = 3600

async def test_an_aggregator_clock_two_hours_behind_is_named_in_readyz(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{agg.url}/readyz")).text == "ready\n"
        # Every sidecar sealed its batch two hours after "now" by this aggregator's clock.
        for i, sidecar in enumerate(("a", "b", "c")):
            assert (await _post(agg, _body(i, created_age_ns=-2 * HOUR_S * 10**9, sidecar=sidecar))).status_code == 200
        ready = await c.get(f"{agg.url}/readyz")
    assert ready.status_code == 200, "refusing traffic would not mend the clock"
    assert re.search(r"warning: this aggregator's clock looks 7[12]\d\d s behind the sidecars'", ready.text), ready.text
    assert abs(_value(agg, "sentinel_aggregator_clock_offset_seconds") + 2 * HOUR_S) < 60

async def test_one_sidecar_off_or_replaying_does_not_trip_it(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    await _post(agg, _body(0, created_age_ns=3 * HOUR_S * 10**9, sidecar="edge-replaying"))
    for i, sidecar in enumerate(("a", "b")):
        await _post(agg, _body(i, sidecar=sidecar))
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{agg.url}/readyz")).text == "ready\n"
    assert 0 <= _value(agg, "sentinel_aggregator_clock_offset_seconds") < 5
