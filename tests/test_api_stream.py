"""GET /api/v1/stream: hello, filtered events, keepalive, end on hub close and on shutdown, unsubscribe."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aggregator.api.stream import sse_event
from tests.test_api_support import VIEWER, Harness, auth, make_alert, start_api


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with start_api(tmp_path, keepalive_s=0.2) as harness:
        yield harness


async def read_events(lines: AsyncIterator[str], count: int, *, comments: bool = True) -> list[dict[str, Any]]:
    """The next ``count`` SSE events (and comments, unless not ``comments``): {"id", "event", "data"} or {"comment"}."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async for line in lines:
        if line == "":
            if current and (comments or "comment" not in current):
                out.append(current)
            if current:
                current = {}
                if len(out) == count:
                    return out
            continue
        field, _, value = line.partition(":")
        if field == "":
            current["comment"] = value.strip()
        else:
            current[field] = json.loads(value) if field == "data" else value.strip()
    return out


async def wait_for(predicate: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_sse_event_format() -> None:
    assert sse_event("alert", {"a": 1}, 7) == b'id: 7\nevent: alert\ndata: {"a":1}\n\n'
    assert sse_event("hello", {"subscribers": 1}) == b'event: hello\ndata: {"subscribers":1}\n\n'


async def test_hello_then_only_matching_events(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.url, headers=auth(VIEWER), timeout=5) as c, \
            c.stream("GET", "/api/v1/stream", params={"service": "chat", "severity": "critical,high"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        lines = r.aiter_lines()
        hello = (await asyncio.wait_for(read_events(lines, 1), 3))[0]
        assert hello == {"event": "hello", "data": {"subscribers": 1}}
        other = make_alert(service="search", severity="critical")
        low = make_alert(service="chat", severity="low")
        wanted = make_alert(service="chat", severity="high")
        for a in (other, low, wanted):
            h.hub.publish("alert", a.to_dict())
        h.hub.publish("resolved", {**wanted.to_dict(), "status": "resolved"})
        events = await asyncio.wait_for(read_events(lines, 2, comments=False), 3)
        assert events[0] == {"id": "1", "event": "alert", "data": wanted.to_dict()}
        assert events[1]["id"] == "2" and events[1]["event"] == "resolved"
        assert events[1]["data"]["alert_id"] == wanted.alert_id


async def test_ack_through_the_api_is_streamed_as_an_update(h: Harness) -> None:
    a = make_alert()
    h.store.insert(a, [])
    async with httpx.AsyncClient(base_url=h.url, headers=auth(VIEWER), timeout=5) as c, \
            c.stream("GET", "/api/v1/stream") as r:
        lines = r.aiter_lines()
        await asyncio.wait_for(read_events(lines, 1), 3)
        await asyncio.to_thread(h.manager.acknowledge, a.alert_id, "bob")
        events = await asyncio.wait_for(read_events(lines, 1, comments=False), 3)
        assert events[0]["event"] == "update" and events[0]["data"]["acknowledged_by"] == "bob"


async def test_keepalive_comments(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.url, headers=auth(VIEWER), timeout=5) as c, \
            c.stream("GET", "/api/v1/stream") as r:
        started = time.monotonic()
        events = await asyncio.wait_for(read_events(r.aiter_lines(), 3), 3)
        assert events[1:] == [{"comment": "keepalive"}, {"comment": "keepalive"}]
        assert time.monotonic() - started >= 0.3  # two intervals of 0.2 s


async def test_stream_ends_when_the_hub_closes(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.url, headers=auth(VIEWER), timeout=5) as c, \
            c.stream("GET", "/api/v1/stream") as r:
        lines = r.aiter_lines()
        await asyncio.wait_for(read_events(lines, 1), 3)
        h.hub.close()
        rest = await asyncio.wait_for(read_events(lines, 100), 3)  # returns at the end of the body
        assert all("comment" in e for e in rest)
    assert h.hub.subscribers == 0


async def test_shutdown_does_not_wait_for_open_streams(tmp_path: Path) -> None:
    # The runner would wait up to 120 s for open handlers; a shutdown that relied on that grace
    # instead of ending the stream itself runs into the 30 s deadline below and fails.
    async with start_api(tmp_path, keepalive_s=30, shutdown_timeout_s=120) as h, \
            httpx.AsyncClient(base_url=h.url, headers=auth(VIEWER), timeout=5) as c, \
            c.stream("GET", "/api/v1/stream") as r:
        await asyncio.wait_for(read_events(r.aiter_lines(), 1), 3)
        await asyncio.wait_for(h.runner.cleanup(), 30)  # without closing the hub: on_shutdown ends the stream
        assert h.hub.subscribers == 0


async def test_client_disconnect_unsubscribes(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.url, headers=auth(VIEWER), timeout=5) as c, \
            c.stream("GET", "/api/v1/stream") as r:
        await asyncio.wait_for(read_events(r.aiter_lines(), 1), 3)
        assert h.hub.subscribers == 1
    await wait_for(lambda: h.hub.subscribers == 0)  # noticed by the next keepalive write at the latest


async def test_bad_filter_is_400_and_viewer_needed(h: Harness) -> None:
    async with httpx.AsyncClient(base_url=h.url, timeout=5) as c:
        r = await c.get("/api/v1/stream", params={"status": "gone"}, headers=auth(VIEWER))
        assert r.status_code == 400 and r.json()["error"].startswith("status:")
        assert (await c.get("/api/v1/stream")).status_code == 401
