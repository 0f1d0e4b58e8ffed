"""Live reconfiguration of detection settings: detectors, forest, sinks and tokens change between batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.consumer import DetectorConsumer
from aggregator.app import Aggregator
from sentinel.config import ConfigError, replace_keys
from sentinel.reload import SettingsReloader
from tests.conftest import serve
from tests.test_alert_sinks_amqp import BROKER_URL, needs_broker
from tests.test_api_support import batch, traffic

S = 10**9
MINUTE = 60 * S


def _spend(service: str, start_ns: int, n: int, cost: float, seq: int) -> Any:
    rows = traffic(service, start_ns, n)
    for r in rows:
        r["cost_usd"] = cost
    return batch(rows, seq=seq)


def test_a_changed_budget_applies_to_the_spend_so_far(tmp_path: Path) -> None:
    found: list[Candidate] = []
    budget = {"budget": {"limits": {"service": {"day": 100.0}}}, "error_burst": {"window_s": 60}}
    svc = DetectorConsumer(budget, tmp_path)
    now = time.time_ns()
    found += svc.consume(_spend("chat", now, 10, 0.5, 1), arrival_ns=now)  # $5 of $100: nothing
    assert not [c for c in found if c.detection_method == "budget"]
    burst, cusum = svc.detectors["error_burst"], svc.detectors["cost_cusum"]

    lower = {"budget": {"limits": {"service": {"day": 6.0}}}, "error_burst": {"window_s": 120}}
    assert svc.reconfigure(lower) == ["error_burst"]  # its window changed: it starts afresh
    assert svc.detectors["cost_cusum"] is cusum  # unchanged settings: the same detector, state and all
    assert svc.detectors["error_burst"] is not burst
    found += svc.consume(_spend("chat", now + 10 * S, 2, 0.5, 2), arrival_ns=now + 10 * S)  # $6 of the new $6
    (exceeded,) = [c for c in found if c.anomaly_type == "budget_exceeded"]
    assert exceeded.value == pytest.approx(6.0) and exceeded.threshold == 6.0  # the $5 before counted

    with pytest.raises(ConfigError, match=r"detectors\.budget\.limits\.service\.day"):
        svc.reconfigure({"budget": {"limits": {"service": {"day": -1}}}})
    assert svc.detectors["error_burst"].config.window_s == 120  # refused whole: the running ones kept
    svc.reconfigure({**lower, "budget": {"enabled": False}})
    assert "budget" not in svc.detectors


async def test_put_config_changes_detectors_forest_and_names_the_key_at_fault(make_aggregator: Any) -> None:
    agg: Aggregator = await make_aggregator(grpc_listen="", forest={"enabled": False})
    assert agg.forest is None
    cusum = agg.detectors.detectors["cost_cusum"]
    version = await agg.put_settings({"detectors": {"budget": {"limits": {"service": {"hour": 2.5}}}},
                                      "forest": {"min_train_rows": 50, "window_rows": 100}},
                                     who="ops", comment="budgets", role="admin")
    assert version is not None and set(version.diff) == {"detectors", "forest"}
    assert agg.detectors.detectors["budget"].config.limit("service", "x", "hour") == 2.5
    assert agg.detectors.detectors["cost_cusum"] is cusum
    assert agg.forest is not None and agg.forest.config.min_train_rows == 50
    assert agg.forest in agg.analysis.consumers  # fed from the next batch on

    for changes, key in (({"detectors": {"budget": {"limits": {"service": {"week": 1}}}}},
                          "detectors.budget.limits.service.week"),
                         ({"forest": {"window_rows": 1}}, "forest.window_rows: must be at least 2"),
                         ({"webhooks": [{"name": "x"}]}, "webhooks[0].url"),
                         ({"listen": "0.0.0.0:1"}, "listen: restart needed for listen")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            await agg.put_settings(changes, who="ops", comment="")
    assert agg.forest.config.window_rows == 100
    running = agg.forest
    await agg.put_settings({"forest": {"min_train_rows": 60, "window_rows": 100}}, who="ops", comment="")
    assert agg.forest is not running and agg.forest.config.min_train_rows == 60
    assert running._closed and running not in agg.analysis.consumers  # saved and stopped, then replaced
    await agg.put_settings({"forest": {"enabled": False}}, who="ops", comment="")
    assert agg.forest is None and all(type(c).__name__ != "ForestConsumer" for c in agg.analysis.consumers)
    entries, _ = agg.audit.query(action="config.version")
    assert (entries[-1].who, entries[-1].role) == ("ops", "admin")


async def test_a_webhook_added_live_receives_the_next_alert(make_aggregator: Any) -> None:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve(app) as port:
        agg: Aggregator = await make_aggregator(grpc_listen="", alerts={"row_persistence": 1, "group_wait_s": 0})
        assert agg.sinks == []
        hooks = [{"name": "ops", "url": f"http://127.0.0.1:{port}/hook"}]
        version = await agg.put_settings({"webhooks": hooks}, who="ops", comment="")
        # A URL may hold a secret: the version shows a digest.
        assert version is not None and str(version.diff["webhooks"]["to"]).startswith("sha256:")
        (sink,) = agg.sinks
        assert agg.alerts.sinks == [sink]
        now = time.time_ns()
        await asyncio.to_thread(agg.alerts.emit, [Candidate(
            anomaly_type="latency_spike", service="chat", model="m", detection_method="zscore", confidence=0.9,
            metric="latency_ms", value=4200.0, baseline=850.0, threshold=2000.0, deviation_sigma=7.3,
            window_start=now - MINUTE, window_end=now, context={})])
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert received, "the webhook added live got nothing"
        # Changed in place (same name): the running sink stops before its successor starts.
        await agg.put_settings({"webhooks": [{**hooks[0], "min_severity": "critical"}]}, who="ops", comment="")
        assert agg.sinks[0] is not sink and sink._stopped


async def test_tokens_change_live_but_auth_cannot_be_switched_off(make_aggregator: Any,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    agg: Aggregator = await make_aggregator(grpc_listen="", admin_tokens=["old-admin"], tokens=["ingest-1"])
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        async def status(token: str) -> int:
            return (await c.get("/api/v1/config", headers={"Authorization": f"Bearer {token}"})).status_code

        assert await status("old-admin") == 200
        version = await agg.put_settings({"admin_tokens": ["new-admin"], "tokens": ["ingest-2"]},
                                         who="admin_tokens[0]", comment="rotate")
        assert version is not None
        assert await status("old-admin") == 401 and await status("new-admin") == 200
        doc = (await c.get("/api/v1/config", headers={"Authorization": "Bearer new-admin"})).json()
        assert "new-admin" not in str(doc) and "ingest-2" not in str(doc)
        ingest = await c.post("/v1/ingest", content=b"x", headers={"Authorization": "Bearer ingest-1"})
        assert ingest.status_code == 401  # the old ingest token is refused from now on

        with pytest.raises(ConfigError, match="tokens: restart needed"):
            await agg.put_settings({"admin_tokens": [], "tokens": []}, who="x", comment="")
        assert await status("new-admin") == 200

        # A digest sent back (a rollback, GET's answer) keeps the secret; another digest is refused.
        assert await agg.put_settings({"admin_tokens": doc["settings"]["admin_tokens"]}, who="x", comment="") is None
        with pytest.raises(ConfigError, match="admin_tokens: the versions hold a digest"):
            await agg.put_settings({"admin_tokens": "sha256:0000000000000000"}, who="x", comment="")

    # SIGHUP's path: a file that turns auth off is refused whole, named, the running tokens kept.
    off = replace_keys(agg.config, {"admin_tokens": [], "tokens": [], "alerts.min_confidence": 0.9})
    reloader = SettingsReloader(agg.config, lambda: off, live_keys=agg.config.live_keys(), apply=agg.apply_settings)
    with caplog.at_level(logging.ERROR):
        assert await reloader.reload() == []
    assert "reload refused: tokens: restart needed" in caplog.text
    assert agg.config.alerts.min_confidence == 0.5 and agg.roles.role_of("new-admin") == "admin"


@needs_broker
async def test_a_broker_sink_added_live_publishes_the_next_alert(make_aggregator: Any) -> None:
    import aio_pika

    suffix = uuid.uuid4().hex[:8]
    exchange, queue = f"live-incidents-{suffix}", f"live-incidents-{suffix}.all"
    agg: Aggregator = await make_aggregator(grpc_listen="", alerts={"row_persistence": 1, "group_wait_s": 0})
    connection = await aio_pika.connect_robust(BROKER_URL)
    try:
        version = await agg.put_settings({"amqp": {"url": BROKER_URL, "exchange": exchange, "queue": queue}},
                                         who="ops", comment="")
        assert version is not None and BROKER_URL not in json.dumps(version.diff)  # the password stays out
        assert [s.name for s in agg.sinks] == ["amqp"]
        now = time.time_ns()
        await asyncio.to_thread(agg.alerts.emit, [Candidate(
            anomaly_type="error_burst", service="live", model="m", detection_method="rate", confidence=0.9,
            metric="error_rate", value=0.5, baseline=0.01, threshold=0.1, deviation_sigma=9.0,
            window_start=now - MINUTE, window_end=now, context={})])
        channel = await connection.channel()
        deadline = time.monotonic() + 30
        message = None
        while message is None and time.monotonic() < deadline:
            with contextlib.suppress(aio_pika.exceptions.ChannelClosed):
                q = await channel.get_queue(queue, ensure=True)
                message = await q.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.1)
                if channel.is_closed:
                    channel = await connection.channel()
        assert message is not None, "nothing published by the sink added live"
        assert json.loads(message.body)["service_name"] == "live"
    finally:
        await agg.shutdown()
        cleanup = await connection.channel()
        with contextlib.suppress(Exception):
            await cleanup.queue_delete(queue)
        with contextlib.suppress(Exception):
            await cleanup.exchange_delete(exchange)
        await connection.close()


async def test_jwt_settings_change_live(make_aggregator: Any, tmp_path: Path) -> None:
    """PUT /api/v1/config with a new JWKS and issuer: JWTs of the new key and issuer are accepted from the
    next request, those of the old ones refused; SIGHUP's path does the same back."""
    from tests.test_api_jwt import AUDIENCE, ISSUER, ROLE_MAP, Keys

    old, new = Keys(), Keys()
    old.add_rsa("k-old")
    new.add_ec("k-new")
    old_file, new_file = tmp_path / "old-jwks.json", tmp_path / "new-jwks.json"
    old_file.write_text(json.dumps(old.jwks()))
    new_file.write_text(json.dumps(new.jwks()))
    new_issuer = "https://idp2.example.test/realms/ops"
    agg: Aggregator = await make_aggregator(grpc_listen="", admin_tokens=["admin"], jwt={
        "jwks_file": str(old_file), "issuer": ISSUER, "audience": AUDIENCE, "role_claim": "groups",
        "role_map": dict(ROLE_MAP)})
    async with httpx.AsyncClient(base_url=agg.url, timeout=5) as c:
        async def status(token: str) -> int:
            return (await c.get("/api/v1/alerts", headers={"Authorization": f"Bearer {token}"})).status_code

        old_token, new_token = old.token("k-old"), new.token("k-new", iss=new_issuer)
        assert (await status(old_token), await status(new_token)) == (200, 401)
        r = await c.put("/api/v1/config", headers={"Authorization": "Bearer admin"},
                        json={"settings": {"jwt": {"jwks_file": str(new_file), "issuer": new_issuer}},
                              "comment": "new identity provider"})
        assert r.status_code == 200, r.text
        assert r.json()["changed"] and set(r.json()["diff"]) == {"jwt.jwks_file", "jwt.issuer"}, r.json()
        assert (await status(old_token), await status(new_token)) == (401, 200)
        # The new key with the old issuer, and the old key with the new issuer: refused.
        assert await status(new.token("k-new")) == 401
        assert await status(old.token("k-old", iss=new_issuer)) == 401
        assert await status(new.token("k-new", iss=new_issuer, groups=["sre-admins"])) == 200

        # SIGHUP's path: the file read again names the old provider; it applies as the PUT did.
        back = replace_keys(agg.config, {"jwt.jwks_file": str(old_file), "jwt.issuer": ISSUER})
        reloader = SettingsReloader(agg.config, lambda: back, live_keys=agg.config.live_keys(),
                                    apply=agg.apply_settings)
        assert sorted(await reloader.reload()) == ["jwt.issuer", "jwt.jwks_file"]
        assert (await status(old_token), await status(new_token)) == (200, 401)
