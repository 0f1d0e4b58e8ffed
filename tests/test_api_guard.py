"""Browser-borne writes and DNS rebinding refused (issue 15, case 9), on a real in-process aggregator.

No-token mode binds 127.0.0.1, which a browser on the same machine reaches too: a page on another
site could create a silence matching every alert with a ``text/plain`` POST (no CORS preflight), or
read the alerts after rebinding its own name to 127.0.0.1.
"""

from __future__ import annotations

import json

import httpx

from tests.conftest import AggregatorFactory

EVERYTHING = {"matchers": [{"name": "severity", "value": ".*", "op": "=~"}], "duration": 3600}


async def test_a_cross_site_text_plain_post_creates_no_silence(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    async with httpx.AsyncClient(base_url=agg.url) as c:
        r = await c.post("/api/v1/silences", content=json.dumps(EVERYTHING),
                         headers={"Content-Type": "text/plain", "Origin": "http://attacker.example",
                                  "Host": "attacker.example"})
        assert r.status_code == 403, r.text
        r = await c.post("/api/v1/silences", content=json.dumps(EVERYTHING),
                         headers={"Content-Type": "text/plain", "Origin": "http://attacker.example"})
        assert r.status_code == 403 and "cross-origin" in r.json()["error"]
        r = await c.post("/api/v1/silences", content=json.dumps(EVERYTHING), headers={"Content-Type": "text/plain"})
        assert r.status_code == 415 and "application/json" in r.json()["error"]
        assert (await c.get("/api/v1/silences")).json()["silences"] == []
        # The page itself (same origin, JSON) and the CLI (no Origin) still work.
        same_origin = agg.url
        r = await c.post("/api/v1/silences", json=EVERYTHING, headers={"Origin": same_origin})
        assert r.status_code == 201, r.text


async def test_a_rebound_host_name_reads_nothing(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    async with httpx.AsyncClient(base_url=agg.url) as c:
        r = await c.get("/api/v1/alerts", headers={"Host": f"attacker.example:{agg.port}"})
        assert r.status_code == 403 and "allowed_hosts" in r.json()["error"]
        assert (await c.get("/", headers={"Host": "attacker.example"})).status_code == 403
        for host in (f"localhost:{agg.port}", f"127.0.0.1:{agg.port}", f"[::1]:{agg.port}"):
            assert (await c.get("/api/v1/alerts", headers={"Host": host})).status_code == 200, host
        # Machine endpoints keep working by any name (sidecars use the service's DNS name).
        assert (await c.get("/readyz", headers={"Host": "aggregator.llm-sentinel.svc"})).status_code == 200


async def test_allowed_hosts_and_public_url_name_the_aggregator(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(allowed_hosts=["sentinel.internal"], public_url="https://sentinel.example.com")
    async with httpx.AsyncClient(base_url=agg.url) as c:
        for host in ("sentinel.internal", "sentinel.example.com:443"):
            assert (await c.get("/api/v1/alerts", headers={"Host": host})).status_code == 200, host
        assert (await c.get("/api/v1/alerts", headers={"Host": "other.example.com"})).status_code == 403
