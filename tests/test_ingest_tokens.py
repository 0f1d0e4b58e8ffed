"""Ingest tokens bound to sidecar ids (issue 15, case 10) and compared as digests (case 16).

A token from ``tokens`` may send as any sidecar; one from ``sidecar_tokens`` only as the sidecar ids
its patterns match. Before, a batch claiming another sidecar's id and its next seq was accepted and
the real batch with that seq was then answered ``duplicate`` and dropped.
"""

from __future__ import annotations

import httpx

from aggregator.ingest.auth import IngestTokens
from sentinel import wire
from tests.conftest import AggregatorFactory
from tests.test_aggregator_ingest import _body, _stored, _value


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
