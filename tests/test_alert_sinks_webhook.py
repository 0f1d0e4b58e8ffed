"""The webhook alert sink against an in-process aiohttp receiver scripted to fail, stall or refuse."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from aggregator.alerting.sink import SinkMetrics
from aggregator.alerting.store import SQLiteAlertStore
from aggregator.alerting.webhook_sink import WebhookConfig, WebhookSink, parse_webhooks
from sentinel.alerts import SEVERITIES, Alert, AlertDetails
from sentinel.config import ConfigError
from sentinel.slack import slack_body
from tests.conftest import wait_for

T0 = 1_762_432_501_234_000_000


def make_alert(i: int, severity: str = "high", runbook: str | None = "https://runbooks.example/latency") -> Alert:
    return Alert(
        alert_id=f"alert-{i:04d}-{uuid.uuid4().hex[:6]}",
        timestamp=T0 + i * 1_000_000,
        severity=severity,
        anomaly_type="latency_spike",
        service_name="checkout",
        model="gpt-4o",
        detection_method="zscore",
        confidence=0.93,
        details=AlertDetails("latency_ms", 912.5, 301.0, 600.0, 4.2),
        runbook_url=runbook,
        summary="p95 latency <3x> baseline & rising",
        fingerprint=f"fp{i}",
    )


@dataclass
class Step:
    """One scripted answer: a status (after ``delay`` seconds), with optional headers."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


class Receiver:
    """Answers POST /hook from a script (then 200), recording each request."""

    def __init__(self) -> None:
        self.script: list[Step] = []
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.release = asyncio.Event()  # ends stalled handlers at teardown
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((time.monotonic(), dict(request.headers), body))
        step = self.script.pop(0) if self.script else Step()
        if step.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), timeout=step.delay)
        return web.Response(status=step.status, headers=step.headers, text="scripted")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self) -> list[Any]:
        return [json.loads(b) for _, _, b in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def dead_rows(store: SQLiteAlertStore, sink: str) -> list[tuple[str, int, str]]:
    return [(r[0], int(r[1]), str(r[2])) for r in store.db.execute(
        "SELECT alert_id, attempts, last_error FROM outbox WHERE sink=? AND dead=1 ORDER BY seq", (sink,))]


class Harness:
    def __init__(self, store: SQLiteAlertStore, receiver: Receiver) -> None:
        self.store = store
        self.receiver = receiver
        self.metrics = SinkMetrics(CollectorRegistry())
        self.sinks: list[WebhookSink] = []

    async def sink(self, **kw: Any) -> WebhookSink:
        settings: dict[str, Any] = {"name": "ops", "url": self.receiver.url, "backoff_s": 0.05, "timeout_s": 2.0}
        settings.update(kw)
        sink = WebhookSink(WebhookConfig(**settings), self.store, metrics=self.metrics)
        await sink.start()
        self.sinks.append(sink)
        return sink

    def send(self, sink: WebhookSink, *alerts: Alert) -> None:
        for a in alerts:
            self.store.insert(a, [sink.name])
        sink.wake()

    def value(self, name: str, sink: str = "webhook:ops", **labels: str) -> float:
        v = self.metrics.registry.get_sample_value(name, {"sink": sink, **labels})
        return 0.0 if v is None else float(v)


@pytest.fixture
async def h(store: SQLiteAlertStore, receiver: Receiver) -> AsyncIterator[Harness]:
    harness = Harness(store, receiver)
    try:
        yield harness
    finally:
        for s in harness.sinks:
            await s.shutdown()


# --- config -----------------------------------------------------------------------------------


def test_parse_webhooks() -> None:
    got = parse_webhooks([
        {"name": "ops", "url": "https://hooks.example/a"},
        {"name": "slack", "url": "http://hooks.example/b", "format": "slack", "min_severity": "high",
         "attempts": "5", "timeout_s": "250ms", "backoff_s": 2, "headers": {"Authorization": "Bearer x"}},
    ])
    assert got[0] == WebhookConfig(name="ops", url="https://hooks.example/a")
    assert (got[1].format, got[1].min_severity, got[1].attempts, got[1].timeout_s, got[1].backoff_s) == (
        "slack", "high", 5, 0.25, 2.0)
    assert got[1].headers == {"Authorization": "Bearer x"}
    assert got[1].sink_name == "webhook:slack"
    assert parse_webhooks(None) == [] and parse_webhooks([]) == []


@pytest.mark.parametrize(("items", "message"), [
    ([{"name": "a", "url": "ftp://x/"}], r"^webhooks\[0\]\.url:"),
    ([{"name": "a", "url": "https:///nohost"}], r"^webhooks\[0\]\.url:"),
    ([{"name": "a"}], r"^webhooks\[0\]\.url: required"),
    ([{"url": "https://x/"}], r"^webhooks\[0\]\.name: required"),
    ([{"name": "a", "url": "https://x/"}, {"name": "a", "url": "https://y/"}], r"^webhooks\[1\]\.name:.*earlier"),
    ([{"name": "a b", "url": "https://x/"}], r"^webhooks\[0\]\.name:"),
    ([{"name": "a", "url": "https://x/", "format": "xml"}], r"^webhooks\[0\]\.format:"),
    ([{"name": "a", "url": "https://x/", "min_severity": "urgent"}], r"^webhooks\[0\]\.min_severity:"),
    ([{"name": "a", "url": "https://x/", "attempts": 0}], r"^webhooks\[0\]\.attempts:"),
    ([{"name": "a", "url": "https://x/", "attempts": "many"}], r"^webhooks\[0\]\.attempts:"),
    ([{"name": "a", "url": "https://x/", "timeout_s": "soon"}], r"^webhooks\[0\]\.timeout_s:"),
    ([{"name": "a", "url": "https://x/", "timeout_s": 0}], r"^webhooks\[0\]\.timeout_s:"),
    ([{"name": "a", "url": "https://x/", "headers": ["x"]}], r"^webhooks\[0\]\.headers:"),
    ([{"name": "a", "url": "https://x/", "retries": 3}], r"^webhooks\[0\]\.retries: unknown"),
    (["https://x/"], r"^webhooks\[0\]:"),
    ({"name": "a"}, r"^webhooks:"),
])
def test_parse_webhooks_errors_name_the_key(items: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_webhooks(items)


def test_wants_filters_by_severity(store: SQLiteAlertStore) -> None:
    sink = WebhookSink(WebhookConfig(name="pager", url="https://x/", min_severity="medium"), store)
    assert sink.name == "webhook:pager"
    assert [sink.wants(make_alert(0, s)) for s in SEVERITIES] == [True, True, True, False]


def test_slack_body_shape() -> None:
    alert = make_alert(1, "critical")
    body = slack_body(alert.to_dict())
    assert set(body) == {"text", "blocks"}
    text = body["text"]
    for part in ("CRITICAL", "latency_spike", "checkout", "gpt-4o", "https://runbooks.example/latency"):
        assert part in text
    types = [b["type"] for b in body["blocks"]]
    assert types[0] == "header" and types[-1] == "context"
    assert len(body["blocks"][0]["text"]["text"]) <= 150
    fields = next(b["fields"] for b in body["blocks"] if "fields" in b)
    assert len(fields) <= 10
    joined = "\n".join(f["text"] for f in fields)
    assert "*Severity*\ncritical" in joined and "*Model*\ngpt-4o" in joined
    assert "latency_ms 912.5 vs baseline 301 (+4.2σ)" in joined
    assert any(b.get("text", {}).get("text") == "<https://runbooks.example/latency|Runbook>" for b in body["blocks"])
    # Summaries are escaped for mrkdwn.
    assert any("&lt;3x&gt; baseline &amp; rising" in b.get("text", {}).get("text", "") for b in body["blocks"])
    no_runbook = slack_body({**make_alert(2, runbook=None).to_dict(), "model": None})
    assert "Runbook" not in json.dumps(no_runbook) and "n/a" in json.dumps(no_runbook)


# --- delivery ---------------------------------------------------------------------------------


async def test_posts_the_alert_json_in_order(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    sink = await h.sink(headers={"Authorization": "Bearer s3cret"})
    alerts = [make_alert(i) for i in range(10)]
    h.send(sink, *alerts)
    await wait_for(lambda: len(receiver.requests) == 10, what="10 posts")
    await wait_for(lambda: h.value("sentinel_aggregator_sink_sent_total") == 10, what="10 deliveries")
    assert store.outbox_depth(sink.name) == 0
    assert receiver.bodies() == [a.to_dict() for a in alerts]
    headers = receiver.requests[0][1]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Sentinel-Alert-Id"] == alerts[0].alert_id
    assert h.value("sentinel_aggregator_sink_sent_total") == 10
    assert h.value("sentinel_aggregator_sink_connected") == 1


async def test_slack_format_is_posted(h: Harness, receiver: Receiver) -> None:
    sink = await h.sink(format="slack")
    alert = make_alert(0, "medium")
    h.send(sink, alert)
    await wait_for(lambda: len(receiver.requests) == 1, what="a post")
    assert receiver.bodies()[0] == slack_body(alert.to_dict())


async def test_retries_with_backoff_then_succeeds(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    receiver.script = [Step(500), Step(502)]
    sink = await h.sink(attempts=3, backoff_s=0.1)
    alert = make_alert(0)
    h.send(sink, alert)
    await wait_for(lambda: h.value("sentinel_aggregator_sink_sent_total") == 1, what="delivery")
    assert store.outbox_depth(sink.name) == 0
    times = [t for t, _, _ in receiver.requests]
    assert len(times) == 3
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.08 <= gaps[0] < 1.0 and 0.16 <= gaps[1] < 1.5  # 0.1 s, then 0.2 s (±20 %); slack for load
    assert receiver.bodies() == [alert.to_dict()] * 3
    assert h.value("sentinel_aggregator_sink_failures_total", reason="http_500") == 1
    assert h.value("sentinel_aggregator_sink_failures_total", reason="http_502") == 1
    assert h.value("sentinel_aggregator_sink_sent_total") == 1
    assert dead_rows(store, sink.name) == []


async def test_gives_up_after_attempts_and_moves_on(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    receiver.script = [Step(503)] * 3
    sink = await h.sink(attempts=3, backoff_s=0.01)
    doomed, next_one = make_alert(0), make_alert(1)
    h.send(sink, doomed, next_one)
    await wait_for(lambda: h.value("sentinel_aggregator_sink_sent_total") == 1, what="the next alert")
    assert store.outbox_depth(sink.name) == 0
    assert [json.loads(b)["alert_id"] for _, _, b in receiver.requests] == [doomed.alert_id] * 3 + [
        next_one.alert_id]
    dead = dead_rows(store, sink.name)
    assert [(d[0], d[1]) for d in dead] == [(doomed.alert_id, 3)]
    assert "HTTP 503" in dead[0][2]
    assert h.value("sentinel_aggregator_sink_dead_total") == 1
    assert h.value("sentinel_aggregator_sink_failures_total", reason="http_503") == 3
    assert h.value("sentinel_aggregator_sink_sent_total") == 1


async def test_permanent_4xx_is_dead_at_once(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    receiver.script = [Step(400), Step(404)]
    sink = await h.sink(attempts=5, backoff_s=0.01)
    h.send(sink, make_alert(0), make_alert(1), make_alert(2))
    await wait_for(lambda: h.value("sentinel_aggregator_sink_sent_total") == 1, what="the third alert")
    assert store.outbox_depth(sink.name) == 0
    assert len(receiver.requests) == 3  # no retry of a refused alert
    assert len(dead_rows(store, sink.name)) == 2
    assert h.value("sentinel_aggregator_sink_dead_total") == 2
    assert h.value("sentinel_aggregator_sink_failures_total", reason="http_400") == 1
    assert h.value("sentinel_aggregator_sink_sent_total") == 1


async def test_honours_retry_after_on_429(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    receiver.script = [Step(429, headers={"Retry-After": "0.4"}), Step(408)]
    sink = await h.sink(attempts=3, backoff_s=0.01)
    h.send(sink, make_alert(0))
    await wait_for(lambda: h.value("sentinel_aggregator_sink_sent_total") == 1, what="delivery")
    times = [t for t, _, _ in receiver.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.38  # Retry-After, not the 10 ms backoff
    # 408 is retried too (with the ordinary backoff).
    assert h.value("sentinel_aggregator_sink_sent_total") == 1


async def test_timeout_is_respected(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    # The receiver stalls 60 s per request: a sink that did not apply its 0.2 s timeout could not
    # give up within wait_for's 15 s deadline.
    receiver.script = [Step(200, delay=60.0), Step(200, delay=60.0)]
    sink = await h.sink(attempts=2, timeout_s=0.2, backoff_s=0.01)
    h.send(sink, make_alert(0))
    await wait_for(lambda: h.value("sentinel_aggregator_sink_dead_total") == 1, what="the sink to give up")
    assert store.outbox_depth(sink.name) == 0
    assert len(receiver.requests) == 2
    assert h.value("sentinel_aggregator_sink_failures_total", reason="timeout") == 2
    assert h.value("sentinel_aggregator_sink_dead_total") == 1
    assert h.value("sentinel_aggregator_sink_connected") == 0
    assert "timed out" in sink.last_error


async def test_connection_refused_is_retried(h: Harness, store: SQLiteAlertStore) -> None:
    closed = Receiver()
    await closed.start()
    url = closed.url
    await closed.stop()  # nothing listens there any more
    sink = await h.sink(url=url, attempts=2, backoff_s=0.01)
    h.send(sink, make_alert(0))
    await wait_for(lambda: h.value("sentinel_aggregator_sink_dead_total") == 1, what="the sink to give up")
    assert store.outbox_depth(sink.name) == 0
    assert h.value("sentinel_aggregator_sink_failures_total", reason="transport") == 2
    assert h.value("sentinel_aggregator_sink_dead_total") == 1


async def test_undelivered_rows_survive_a_restart_with_their_attempts(
        receiver: Receiver, tmp_path: Path) -> None:
    path = str(tmp_path / "alerts.db")
    store = SQLiteAlertStore(path)
    store.open()
    receiver.script = [Step(500), Step(500, delay=5.0)]
    metrics = SinkMetrics(CollectorRegistry())
    config = WebhookConfig(name="ops", url=receiver.url, attempts=3, backoff_s=0.01, timeout_s=3.0)
    sink = WebhookSink(config, store, metrics=metrics)
    await sink.start()
    alert = make_alert(0)
    store.insert(alert, [sink.name])
    sink.wake()
    await wait_for(lambda: len(receiver.requests) == 2, what="the second attempt (stalled)")
    await sink.shutdown()  # abandons the attempt in flight; the row stays
    await sink.shutdown()
    store.close()

    store = SQLiteAlertStore(path)
    store.open()
    try:
        assert store.outbox_pending("webhook:ops", 10)[0].attempts == 1
        sink = WebhookSink(config, store, metrics=metrics)
        await sink.start()  # drains what is left without a wake
        try:
            await wait_for(lambda: metrics.registry.get_sample_value(
                "sentinel_aggregator_sink_sent_total", {"sink": "webhook:ops"}) == 1, what="delivery after restart")
            assert store.outbox_depth("webhook:ops") == 0
        finally:
            await sink.shutdown()
        assert len(receiver.requests) == 3
        assert metrics.registry.get_sample_value("sentinel_aggregator_sink_sent_total", {"sink": "webhook:ops"}) == 1
    finally:
        store.close()


async def test_wake_from_another_thread(h: Harness, receiver: Receiver, store: SQLiteAlertStore) -> None:
    sink = await h.sink()
    store.insert(make_alert(0), [sink.name])
    await asyncio.to_thread(sink.wake)
    await wait_for(lambda: len(receiver.requests) == 1, what="a post")
