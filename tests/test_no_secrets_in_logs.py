"""No token, password, secret header, prompt text or raw API key ever reaches a log record, a forwarded
row or an alert (SECURITY.md, "Data").

One scenario at DEBUG for every logger (pytest's caplog), through the failure paths: a sidecar with a
wrong ingest token (401, retried), the API called with unknown tokens (401) and the viewer's token on
an admin route (403), a RabbitMQ sink whose broker is down (the URL holds a password), a webhook sink
with a secret header and a secret in its URL that answers 500, a pass-through upstream that is down, a
malformed OTLP request carrying prompt text; and spans that carry prompt and completion text, an
Authorization-looking attribute, an API key (``api_key_attributes``) and a user id (``hash_user``).
A budget on users and API keys turns those spans into alerts, so the alert path is covered too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sentinel import wire
from sentinel.cli import QUIET_LOGGERS
from sentinel.cli import _setup_logging as setup_logging
from tests.conftest import AggregatorFactory, SidecarFactory, free_port, wait_for

SECRETS = {
    "ingest token": "ingest-tok-5ecret-a1",
    "wrong ingest token": "wrong-tok-5ecret-b2",
    "viewer token": "viewer-tok-5ecret-c3",
    "admin token": "admin-tok-5ecret-d4",
    "unknown api token": "unknown-tok-5ecret-e5",
    "amqp password": "amqp-pa55word-f6",
    "webhook header": "hook-hdr-5ecret-g7",
    "webhook url secret": "hook-url-5ecret-h8",
    "prompt": "PROMPT what is the launch code 5ecret-i9",
    "completion": "COMPLETION the launch code is 5ecret-j10",
    "input messages": "INPUT-MESSAGES 5ecret-k11",
    "output messages": "OUTPUT-MESSAGES 5ecret-l12",
    "authorization attribute": "Bearer app-5ecret-m13",
    "raw api key": "sk-live-RAWKEY-5ecret-n14",
    "user id": "alice@example.com-5ecret-o15",
}
API_KEY_ATTRIBUTE = "llm.api_key"
USER_HASH = hashlib.sha256(SECRETS["user id"].encode()).hexdigest()
KEY_HASH = hashlib.sha256(SECRETS["raw api key"].encode()).hexdigest()[:16]


def _llm_request(n: int, *, start_ns: int) -> bytes:
    """``n`` chat spans, each carrying every kind of sensitive attribute next to the ones the extractor reads."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "secret-test"
    spans = rs.scope_spans.add().spans
    for i in range(n):
        span = spans.add(trace_id=(i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"),
                         start_time_unix_nano=start_ns + i * 1_000_000, end_time_unix_nano=start_ns + i * 1_000_000
                         + 800_000_000)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.provider.name": "openai",
            "gen_ai.usage.input_tokens": 100, "gen_ai.usage.output_tokens": 50, "gen_ai.usage.cost": 1.0,
            "user.id": SECRETS["user id"], API_KEY_ATTRIBUTE: SECRETS["raw api key"],
            "gen_ai.prompt": SECRETS["prompt"], "gen_ai.completion": SECRETS["completion"],
            "gen_ai.prompt.0.content": SECRETS["prompt"], "gen_ai.completion.0.content": SECRETS["completion"],
            "llm.input_messages.0.message.content": SECRETS["input messages"],
            "llm.output_messages.0.message.content": SECRETS["output messages"],
            "gen_ai.input.messages": SECRETS["input messages"], "gen_ai.output.messages": SECRETS["output messages"],
            "input.value": SECRETS["prompt"], "output.value": SECRETS["completion"],
            "http.request.header.authorization": SECRETS["authorization attribute"],
        }
        for key, value in attributes.items():
            v = span.attributes.add(key=key).value
            if isinstance(value, str):
                v.string_value = value
            elif isinstance(value, float):
                v.double_value = value
            else:
                v.int_value = value
    return req.SerializeToString()


@pytest.fixture
async def hook() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A webhook receiver that records what it is sent and answers 500."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=500, text="receiver is down")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)  # the receiver is not ours: its own log is not checked
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


@pytest.fixture
def product_logging() -> Iterator[None]:
    """Logging set up as ``sentinel <command> --log-level debug`` sets it up (levels restored afterwards)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)] + [logging.root]
    saved = [(lg, lg.level) for lg in loggers]
    setup_logging("debug")
    try:
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there (free_port's socket is closed again)
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def _leaks(text: str, allowed: tuple[str, ...] = ()) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text and name not in allowed]


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += record.exc_text
    if record.stack_info:
        text += record.stack_info
    return text


async def test_no_secret_in_logs_rows_or_alerts(
        product_logging: None, caplog: pytest.LogCaptureFixture, hook: tuple[str, list[tuple[dict[str, str], bytes]]],
        make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: every logger the product does not quieten (QUIET_LOGGERS)
    hook_url, received = hook
    agg = await make_aggregator(
        tokens=[SECRETS["ingest token"]], viewer_tokens=[SECRETS["viewer token"]],
        admin_tokens=[SECRETS["admin token"]],
        amqp={"url": f"amqp://sentinel:{SECRETS['amqp password']}@127.0.0.1:{_closed_port()}/"},
        webhooks=[{"name": "ops", "attempts": 2, "backoff_s": 0.05,
                   "url": f"{hook_url}/services/{SECRETS['webhook url secret']}?token={SECRETS['webhook url secret']}",
                   "headers": {"Authorization": f"Bearer {SECRETS['webhook header']}"}}],
        detectors={"budget": {"limits": {"user": {"day": 2.0}, "api_key_hash": {"day": 2.0}}}})
    common: dict[str, Any] = {"aggregator_url": agg.url, "hash_user": True, "api_key_attributes": [API_KEY_ATTRIBUTE],
                              "upstream": {"url": f"http://127.0.0.1:{_closed_port()}", "protocol": "http/protobuf"}}
    wrong = await make_sidecar(token=SECRETS["wrong ingest token"], sidecar_id="wrong-token", **common)
    right = await make_sidecar(token=SECRETS["ingest token"], sidecar_id="right-token", **common)

    body = _llm_request(20, start_ns=time.time_ns())
    async with httpx.AsyncClient(timeout=10) as c:
        for sc in (wrong, right):
            r = await c.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/traces", content=body,
                             headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200
        # A malformed OTLP/JSON request that carries prompt text (its answer goes to the app that sent it).
        bad = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not-hex", "attributes": [
            {"key": "gen_ai.prompt", "value": {"intValue": SECRETS["prompt"]}}]}]}]}]}
        r = await c.post(f"http://127.0.0.1:{right.ports()['http']}/v1/traces", content=json.dumps(bad),
                         headers={"Content-Type": "application/json"})
        assert r.status_code == 400
        # The API with an unknown token, and with too small a role.
        for token, path in ((SECRETS["unknown api token"], "/api/v1/alerts"),
                            (SECRETS["viewer token"], "/api/v1/silences")):
            method = "POST" if path.endswith("silences") else "GET"
            r = await c.request(method, agg.url + path, json={}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code in (401, 403)
            assert token not in r.text
        r = await c.post(agg.url + "/v1/ingest", content=b"x", headers={
            "Authorization": f"Bearer {SECRETS['unknown api token']}", "Content-Type": wire.CONTENT_TYPE})
        assert r.status_code == 401

    # Wait for every failure path to have run at least once.
    await wait_for(lambda: right.metrics.forwarded_rows._value.get() == 20, what="rows of the right token")
    await wait_for(lambda: wrong.metrics.forward_retries.labels("401")._value.get() >= 2, what="401 retries")
    await wait_for(lambda: len(received) >= 2, what="the webhook's two attempts")
    await wait_for(lambda: any("alert sink amqp" in r.getMessage() for r in caplog.records), what="the broker failure")
    await wait_for(lambda: right.metrics.upstream_requests.labels("traces", "failed")._value.get() >= 1,
                   what="the pass-through failure")
    async with httpx.AsyncClient(base_url=agg.url, timeout=10,
                                 headers={"Authorization": f"Bearer {SECRETS['admin token']}"}) as c:
        alerts = (await c.get("/api/v1/alerts")).json()
        metrics = (await c.get("/metrics")).text + (await c.get(
            f"http://127.0.0.1:{right.ports()['metrics']}/metrics")).text

    # Logs: nothing, from any logger, at any level (the amqp URL only with its password masked).
    assert caplog.records, "nothing was logged: the test would prove nothing"
    leaked = {f"{r.name}:{r.levelname}: {_record_text(r)[:300]}": _leaks(_record_text(r)) for r in caplog.records}
    assert {k: v for k, v in leaked.items() if v} == {}
    assert any("sentinel:***@127.0.0.1" in r.getMessage() for r in caplog.records)
    assert _leaks(caplog.text) == []

    # Forwarded rows: the user and the API key only as hashes, no other sensitive value at all.
    entries = agg.ingest.journal.entries()
    assert entries
    for _id, sidecar, _seq, _rows, _late, raw in entries:
        assert sidecar == "right-token"  # the wrong token's batches were never stored
        batch = wire.decode(raw).batch
        assert _leaks(raw.decode("latin-1")) == []
        assert set(batch.strings["user"]) == {USER_HASH}
        assert set(batch.strings["api_key_hash"]) == {KEY_HASH}

    # Alerts, as the API serves them and as the webhook received them; metrics' labels.
    assert alerts["total"] >= 1, alerts
    assert {a["anomaly_type"] for a in alerts["alerts"]} >= {"budget_exceeded"}
    assert _leaks(json.dumps(alerts)) == []
    # The identity of a budget alert: in its context, or (grouped alerts) in its members' labels.
    users = {a["context"].get("user") for a in alerts["alerts"]} | {a["context"].get("scope_value")
                                                                    for a in alerts["alerts"]}
    users |= {m["labels"].get(k) for a in alerts["alerts"] for m in a.get("members", [])
              for k in ("user", "api_key_hash", "scope_value")}
    assert USER_HASH in users or KEY_HASH in users, users
    for headers, sent in received:
        assert _leaks(sent.decode()) == []
        assert headers["Authorization"] == f"Bearer {SECRETS['webhook header']}"  # sent where configured
    assert _leaks(metrics) == []
