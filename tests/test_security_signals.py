"""Security signals: coordinated attacks, campaigns, behavioural correlation, the three inputs (API,
real RabbitMQ, sidecar batches) and the action hook with operator approval recorded in the audit log."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aiohttp import web

from aggregator.alerting.store import AlertQuery
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.detectors.coordinated_attack import CoordinatedAttackConfig, CoordinatedAttackDetector
from aggregator.analysis.pipeline import restore, save
from aggregator.analysis.security.consumer import SecurityConfig, SecurityConsumer, parse_security_settings
from sentinel.config import ConfigError
from sentinel.security_event import SecurityEvent, parse_security_event
from tests.conftest import serve, wait_for
from tests.test_api_support import INGEST, start_api

NS = 1_000_000_000
T0 = 1_800_000_000


def ev(t: float, **fields: Any) -> SecurityEvent:
    meta = {k: fields.pop(k) for k in ("ip_address", "api_key", "attack_signature") if k in fields}
    return parse_security_event({"threat_type": "jailbreak", "timestamp": T0 + t, "confidence": 0.7,
                                 "service_name": "chat", **fields, "metadata": meta})


@pytest.mark.parametrize(("n", "spacing_s", "alerts"), [
    (11, 10, True),  # 11 in 110 s: more than 10 within 5 minutes
    (10, 10, False),  # exactly 10: not more than 10
    (30, 40, False),  # many, but never 11 within 5 minutes
])
def test_bursts_from_one_ip(n: int, spacing_s: float, alerts: bool) -> None:
    det = CoordinatedAttackDetector()
    found = det.update([ev(i * spacing_s, ip_address="203.0.113.9", user=f"u{i}") for i in range(n)])
    assert [c.anomaly_type for c in found] == (["coordinated_attack"] if alerts else [])
    if alerts:
        c = found[0]
        assert (c.context["scope"], c.context["scope_value"], c.context["ip"]) == ("ip_address", "203.0.113.9",
                                                                                   "203.0.113.9")
        assert c.context["threat_types"] == {"jailbreak": 11} and c.service == "chat"
        assert c.confidence > 0.7


def test_one_alert_per_burst_and_the_key_and_user_scopes() -> None:
    det = CoordinatedAttackDetector(CoordinatedAttackConfig(max_events=3))
    found = det.update([ev(i, user="mallory", api_key="sk-1") for i in range(20)])
    assert sorted(c.context["scope"] for c in found) == ["api_key_hash", "user"]
    assert all("sk-1" not in json.dumps(c.to_dict()) for c in found)
    # Quiet for two windows, then a new burst alerts again.
    again = det.update([ev(1000 + i, user="mallory") for i in range(5)])
    assert [c.context["scope"] for c in again] == ["user"]


def test_a_lagging_sidecar_does_not_alert_on_the_same_burst_twice() -> None:
    det = CoordinatedAttackDetector()
    burst = [ev(i * 5, ip_address="192.0.2.1", user=f"u{i}") for i in range(40)]
    found = det.update(burst[:20]) + det.update([ev(2000, user="x")])  # the other sidecar is 30 minutes ahead
    found += det.update(burst[20:])  # ... and this one's rest of the burst arrives now: late
    assert [c.context["scope"] for c in found] == ["ip_address"] and det.late_events == 20
    # Out of order within the window is fine.
    det2 = CoordinatedAttackDetector()
    assert len(det2.update(list(reversed(burst[:11])))) == 1


def test_one_signature_across_many_users_is_a_campaign() -> None:
    det = CoordinatedAttackDetector()
    found = det.update([ev(i, user=f"user{i}", attack_signature="dan-v2", ip_address=f"198.51.100.{i}")
                        for i in range(5)])
    assert [(c.anomaly_type, c.context["scope_value"], c.value) for c in found] == [
        ("attack_campaign", "dan-v2", 5.0)]
    state = json.loads(json.dumps(det.to_state()))
    assert CoordinatedAttackDetector.from_state(state).to_state() == det.to_state()


def token_abuse(user: str, t: float, confidence: float = 0.7) -> Candidate:
    return Candidate(anomaly_type="token_abuse", service="chat", model="gpt-4o", detection_method="peer_z",
                     confidence=confidence, metric="tokens", value=5e5, baseline=1e4, threshold=5e4,
                     deviation_sigma=8.0, window_start=int((T0 + t - 60) * NS), window_end=int((T0 + t) * NS),
                     context={"user": user})


@pytest.mark.parametrize("order", ["events_first", "anomaly_first"])
def test_a_users_token_anomaly_and_security_events_correlate(tmp_path: Path, order: str) -> None:
    out: list[Candidate] = []
    svc = SecurityConsumer(SecurityConfig(), tmp_path, on_candidates=out.extend)
    if order == "events_first":
        svc.submit([ev(i, user="eve") for i in range(3)])
        svc.observe_candidates([token_abuse("eve", 100)])
    else:
        svc.observe_candidates([token_abuse("eve", 100)])
        svc.submit([ev(100 + i, user="eve") for i in range(3)])
    corr = [c for c in out if c.anomaly_type == "security_correlation"]
    assert len(corr) == 1
    c = corr[0]
    assert c.confidence == pytest.approx(1 - 0.3 * 0.3) and c.confidence > 0.9
    assert (c.context["user"], c.context["anomaly_type"], c.service) == ("eve", "token_abuse", "chat")
    # Another user's anomaly, and the same user's anomaly long after, do not correlate.
    svc.observe_candidates([token_abuse("bob", 100), token_abuse("eve", 5000)])
    assert len([c for c in out if c.anomaly_type == "security_correlation"]) == 1


@pytest.mark.parametrize(("settings", "message"), [
    ({"nope": 1}, "security.nope"), ({"max_events": 0}, "security.max_events"),
    ({"window_s": -1}, "security.window_s"), ({"amqp_url": "http://x"}, "security.amqp_url"),
    ({"action_webhook_url": "ftp://x"}, "security.action_webhook_url"),
    ({"max_events": "many"}, "security.max_events: "),
])
def test_bad_settings_name_their_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_security_settings(settings)


async def test_security_events_api(tmp_path: Path) -> None:
    async with start_api(tmp_path) as h:
        assert h.security is not None
        events = [{"event_id": f"e{i}", "timestamp": T0 + i, "threat_type": "prompt_injection", "severity": "high",
                   "service_name": "chat", "user_id": "mallory", "confidence": 0.8,
                   "metadata": {"ip_address": "203.0.113.7", "api_key": "sk-live-secret", "prompt": "ignore..."}}
                  for i in range(11)]
        async with h.client(INGEST) as c:
            r = await c.post("/api/v1/security-events", json=events)
            assert r.status_code == 202
            assert r.json()["accepted"] == 11 and "coordinated_attack" in r.json()["detections"]
            r = await c.post("/api/v1/security-events", json={"events": [{"threat_type": "toxic", "timestamp": 1,
                                                                            "confidence": 2}]})
            assert r.status_code == 400 and r.json()["error"].startswith("events[0].confidence")
            r = await c.post("/api/v1/security-events", json={"timestamp": 1})
            assert r.status_code == 400 and "threat_type" in r.json()["error"]
        async with h.client(None) as c:
            assert (await c.post("/api/v1/security-events", json=events)).status_code == 401
        alerts = h.store.query(AlertQuery())[0]
        assert {a.anomaly_type for a in alerts} >= {"coordinated_attack"}
        text = json.dumps([a.to_dict() for a in alerts])
        assert "sk-live-secret" not in text and "ignore..." not in text


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


class Hook:
    """An in-process webhook receiver (a guardrail or gateway that acts on block requests)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/block", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.json_response({"ok": True})


@pytest.mark.skipif(not _broker_up(), reason="needs RabbitMQ on 127.0.0.1:5672")
async def test_rabbitmq_events_raise_an_attack_whose_block_is_sent_only_once_approved(make_aggregator: Any) -> None:
    name = f"test-security-{uuid.uuid4().hex[:8]}"
    hook = Hook()
    async with serve(hook.app) as port:
        agg = await make_aggregator(grpc_listen="", operator_tokens=["op"], admin_tokens=["ad"], tokens=["in"],
                                    security={"amqp_url": "amqp://guest:guest@127.0.0.1:5672/",
                                              "amqp_exchange": f"{name}.events", "amqp_queue": name,
                                              "action_webhook_url": f"http://127.0.0.1:{port}/block"})
        assert agg.security is not None and agg.security_queue is not None
        await wait_for(lambda: agg.security_queue is not None and agg.security_queue.consuming, what="consumer")
        connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(f"{name}.events", aio_pika.ExchangeType.TOPIC, durable=True)
            for i in range(12):
                body = {"event_id": f"r{i}", "timestamp": T0 + i * 5, "threat_type": "jailbreak", "severity": "high",
                        "service_name": "chat", "user_id": f"u{i}", "confidence": 0.75,
                        "metadata": {"ip_address": "192.0.2.66", "api_key": "sk-abc", "prompt": "DAN mode"}}
                await exchange.publish(aio_pika.Message(json.dumps(body).encode()), routing_key="guardrail.jailbreak")
            await exchange.publish(aio_pika.Message(b"not json"), routing_key="guardrail.bad")
            await wait_for(lambda: agg.security.received >= 12 and agg.security_queue.rejected == 1, 20,
                           "events consumed")
            await wait_for(lambda: len(agg.security.actions.list("pending")) == 2, what="pending actions")
            assert hook.received == []  # nothing is sent before an operator approves
            # One burst from one IP with one key: one action for each subject.
            pending = {a.subject_type: a for a in agg.security.actions.list("pending")}
            assert set(pending) == {"ip_address", "api_key_hash"}
            action = pending["ip_address"]
            assert action.subject == "192.0.2.66"
            async with httpx.AsyncClient(base_url=agg.url, timeout=10) as c:
                listed = (await c.get("/api/v1/security/actions?status=pending",
                                      headers={"Authorization": "Bearer op"})).json()
                assert {a["action_id"] for a in listed["actions"]} == {a.action_id for a in pending.values()}
                r = await c.post(f"/api/v1/security/actions/{action.action_id}/approve",
                                 headers={"Authorization": "Bearer in"})
                assert r.status_code == 403  # the ingest token may not approve
                r = await c.post(f"/api/v1/security/actions/{action.action_id}/approve",
                                 headers={"Authorization": "Bearer op"})
                assert r.status_code == 200 and r.json()["status"] == "sent", r.json()
                r = await c.post(f"/api/v1/security/actions/{action.action_id}/reject",
                                 headers={"Authorization": "Bearer op"})
                assert r.status_code == 409
                audit = (await c.get("/api/v1/audit", headers={"Authorization": "Bearer ad"})).json()
            assert len(hook.received) == 1
            sent = hook.received[0]
            # the approver is the principal (a JWT sub or the token's place), not the role
            assert (sent["ip_address"], sent["subject_type"], sent["approved_by"]) == ("192.0.2.66", "ip_address",
                                                                                        "operator_tokens[0]")
            assert sent["suggested_duration_s"] == 3600 and "sk-abc" not in json.dumps(sent)
            entries = [e for e in audit["entries"] if e["action"] == "security_action.approve"]
            assert entries and entries[0]["target"] == action.action_id and entries[0]["role"] == "operator"
            assert not [e for e in audit["entries"] if "security-events" in e["action"]]
        finally:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.exchange_delete(f"{name}.events")
            await connection.close()


async def test_without_approval_the_block_is_sent_at_once(tmp_path: Path) -> None:
    hook = Hook()
    async with serve(hook.app) as port:
        svc = SecurityConsumer(parse_security_settings({"require_approval": False, "max_events": 3,
                                                       "action_webhook_url": f"http://127.0.0.1:{port}/block"}),
                               tmp_path)
        await asyncio.to_thread(svc.submit, [ev(i, user="x") for i in range(4)])
        assert [a.status for a in svc.actions.list()] == ["sent"]
        assert hook.received[0]["user"] == "x" and hook.received[0]["approved_by"] == "auto"


def test_security_events_in_sidecar_batches_reach_the_detector(tmp_path: Path) -> None:
    from sentinel import wire
    from sentinel.model import FeatureBatch

    out: list[Candidate] = []
    svc = SecurityConsumer(parse_security_settings({"max_events": 2}), tmp_path)
    body = wire.encode(FeatureBatch.empty(), sidecar="s", seq=1,
                       security=[ev(i, user="trudy", api_key="sk-9") for i in range(3)])
    out += svc.consume(wire.decode(body), arrival_ns=0)
    assert svc.received == 3 and {c.context["scope"] for c in out} == {"user", "api_key_hash"}
    save(svc)
    again = SecurityConsumer(svc.config, tmp_path)
    restore(again)
    assert again.attacks.to_state() == svc.attacks.to_state()


def test_security_settings_follow_the_loaders_rules() -> None:
    c = parse_security_settings({"window_s": "5m", "action_duration_s": "1h", "correlated_types": ["token_abuse"]})
    assert (c.window_s, c.action_duration_s, c.correlated_types) == (300.0, 3600.0, ("token_abuse",))
