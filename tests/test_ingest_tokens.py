"""Ingest tokens bound to sidecar ids (issue 15, case 10) and compared as digests (case 16).

A token from ``tokens`` may send as any sidecar; one from ``sidecar_tokens`` only as the sidecar ids
its patterns match. Before, a batch claiming another sidecar's id and its next seq was accepted and
the real batch with that seq was then answered ``duplicate`` and dropped. What a sidecar id reports
is bound too: a local anomaly only for a service of its own batch's rows, and with
``sidecar_services`` rows only of the services its id is given.
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import pytest

from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from aggregator.ingest.auth import IngestTokens, ServiceBinding
from sentinel import wire
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch, LocalAnomaly
from tests.conftest import AggregatorFactory
from tests.test_aggregator_ingest import _body, _row, _stored, _value


def _auth(token: str) -> dict[str, str]:
    return {"Content-Type": wire.CONTENT_TYPE, "Authorization": f"Bearer {token}"}


async def test_a_token_cannot_send_as_another_sidecar(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(sidecar_tokens={"payments/*": ["tok-payments"], "attacker/*": "tok-attacker"},
                                tokens=["tok-fleet"])
    url = f"{agg.url}/v1/ingest"
    async with httpx.AsyncClient() as c:
        forged = await c.post(url, content=_body(0, sidecar="payments/api-1"), headers=_auth("tok-attacker"))
        assert forged.status_code == 403
        assert forged.json()["error"] == ("this token may not send batches as sidecar 'payments/api-1' "
                                          "(sidecar_tokens binds it to attacker/*)")
        assert _stored(agg) == 0
        real = await c.post(url, content=_body(0, sidecar="payments/api-1"), headers=_auth("tok-payments"))
        assert real.json()["status"] == "accepted", "the real batch with that seq is stored, not a 'duplicate'"
        own = await c.post(url, content=_body(0, sidecar="attacker/x"), headers=_auth("tok-attacker"))
        assert own.status_code == 200
        fleet = await c.post(url, content=_body(0, sidecar="anyone"), headers=_auth("tok-fleet"))
        assert fleet.status_code == 200
        wrong = await c.post(url, content=_body(1, sidecar="payments/api-1"), headers=_auth("tok-payment"))
        assert wrong.status_code == 401
        api = await c.get(f"{agg.url}/api/v1/alerts", headers={"Authorization": "Bearer tok-payments"})
        assert api.status_code == 403, "an ingest token reads nothing"
    assert _stored(agg) == 3
    assert _value(agg, "sentinel_aggregator_batches_received_total", {"outcome": "forbidden"}) == 1


def test_tokens_are_compared_as_digests_of_every_token() -> None:
    tokens = IngestTokens(["fleet"], {"a/*": ["ta"], "b/*": ["ta", "tb"]})
    assert tokens.scope("Bearer ta") == ("a/*", "b/*")
    assert tokens.scope("bearer fleet") == ("*",)
    assert tokens.scope("Bearer t") is None and tokens.scope("Basic ta") is None and tokens.scope("") is None
    assert all(len(d) == 32 for d, _ in tokens._scopes), "only SHA-256 digests are kept, never the tokens"


def _forged(seq: int, *, sidecar: str, service: str) -> bytes:
    """A batch of 5 ``checkout`` rows carrying one error-rate anomaly on ``service``."""
    now = time.time_ns()
    batch = FeatureBatch.from_rows([_row(now, i) for i in range(5)])
    forged = LocalAnomaly(metric="error_rate", value=0.9, baseline=0.01, deviation=0.89, threshold=0.05,
                          sigma=math.nan, method="error_rate", service=service, model="gpt-4o", operation="chat",
                          trace_id=f"{0:032x}", span_id=f"{0:016x}", time_unix_nano=now)
    return wire.encode(batch, sidecar=sidecar, seq=seq, anomalies=[forged])


async def _candidates(agg: Aggregator, service: str) -> list[dict[str, Any]]:
    await agg.analysis.drain()
    async with httpx.AsyncClient() as c:
        r = await c.get(f"{agg.url}/api/v1/candidates", params={"service": service},
                        headers={"Authorization": "Bearer tok-viewer"})
    assert r.status_code == 200
    return [x for x in r.json()["candidates"] if x["service"] == service]


async def test_a_local_anomaly_must_name_a_service_of_its_own_batch(make_aggregator: AggregatorFactory) -> None:
    # Was: a forged local anomaly from an authenticated sidecar "attacker" raised a high error_burst
    # on "payments" (issue 15, case 10), the service being trusted from the anomaly alone.
    agg = await make_aggregator(sidecar_tokens={"attacker/*": "tok-attacker"}, viewer_tokens=["tok-viewer"])
    url = f"{agg.url}/v1/ingest"
    async with httpx.AsyncClient() as c:
        r = await c.post(url, content=_forged(1, sidecar="attacker/x", service="payments"),
                         headers=_auth("tok-attacker"))
        assert r.json()["status"] == "accepted", "the rows themselves are kept"
        own = await c.post(url, content=_forged(2, sidecar="attacker/x", service="checkout"),
                           headers=_auth("tok-attacker"))
        assert own.status_code == 200
    assert await _candidates(agg, "payments") == [], "no alert on a service the batch has no call of"
    assert [x["detection_method"] for x in await _candidates(agg, "checkout")] == ["local_error_rate"]
    assert _value(agg, "sentinel_aggregator_local_anomalies_total", {"outcome": "unbound"}) == 1


async def test_sidecar_services_bind_what_a_sidecar_may_report(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(sidecar_tokens={"attacker/*": "tok-attacker", "shop/*": "tok-shop"},
                                sidecar_services={"shop/*": ["checkout", "cart-*"]})
    url = f"{agg.url}/v1/ingest"
    async with httpx.AsyncClient() as c:
        shop = await c.post(url, content=_body(1, sidecar="shop/api-1"), headers=_auth("tok-shop"))
        assert shop.json()["status"] == "accepted", "checkout rows from a shop sidecar"
        other = await c.post(url, content=_body(1, sidecar="attacker/x"), headers=_auth("tok-attacker"))
        assert other.status_code == 403
        assert other.json()["error"] == "sidecar 'attacker/x' may not report service 'checkout' (sidecar_services)"
    assert _stored(agg) == 1
    assert _value(agg, "sentinel_aggregator_batches_received_total", {"outcome": "forbidden"}) == 1


def test_sidecar_services_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"sidecar_services\.shop/\*: must be a service or a list"):
        AggregatorConfig(sidecar_services={"shop/*": []}).validate()
    assert ServiceBinding({}).forbidden("anyone", ["x"]) is None
    assert ServiceBinding({"*": ["*"]}).forbidden("anyone", ["x", None]) is None
