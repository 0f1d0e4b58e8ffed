"""``sentinel alerts``: the pure formatters, and the HTTP path against a small in-test aggregator API."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sentinel.alerts import Alert, AlertDetails
from sentinel.cli.alerts import format_event, format_table, main, parse_sse

T0 = 1_762_432_501_234_000_000  # 2025-11-06T12:35:01.234Z


def alert(alert_id: str, *, severity: str = "critical", service: str | None = "chat", status: str = "open",
          count: int = 1, ts: int = T0, baseline: float | None = 240.0) -> dict[str, Any]:
    return Alert(alert_id=alert_id, timestamp=ts, severity=severity, anomaly_type="latency_spike",
                 service_name=service, model="gpt-4o", detection_method="ewma_zscore", confidence=0.9,
                 details=AlertDetails("latency_ms_p95", 812.5, baseline, None, 6.0), status=status,
                 count=count).to_dict()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the pure formatters ------------------------------------------------------------------------

def test_format_table_aligns_columns() -> None:
    rows = [alert("0123456789abcdef"), alert("fedcba9876543210", severity="low", service="a-much-longer-service",
                                             status="acknowledged", count=12, baseline=None)]
    lines = format_table(rows).splitlines()
    assert len(lines) == 3
    header, first, second = lines
    assert header.split()[:3] == ["TIME", "SEVERITY", "TYPE"]
    # Every value starts where its header does, although one service name is wider than the default.
    assert first.index("critical") == second.index("low") == header.index("SEVERITY")
    for line in (first, second):
        for value, column in (("latency_spike", "TYPE"), ("gpt-4o", "MODEL"), ("latency_ms_p95", "METRIC"),
                              ("812.5", "VALUE")):
            assert line.index(value) == header.index(column)
    assert first.index("open") == second.index("acknowledged") == header.index("STATUS")
    assert first.startswith("2025-11-06T12:35:01Z  critical")
    assert "812.5 vs 240" in first and first.rstrip().endswith("01234567")  # short id
    assert "812.5 vs -" in second  # a null baseline
    assert "acknowledged" in second and " 12  fedcba98" in second


def test_format_table_of_nothing_is_the_header() -> None:
    assert format_table([]).split()[0] == "TIME"


def test_format_event_lines_up_under_the_table() -> None:
    a = alert("0123456789abcdef")
    header = format_table([a]).splitlines()[0]
    line = format_event({"event": "alert", "alert": a})
    assert line.endswith("[new]")
    assert line.index("critical") == header.index("SEVERITY")
    assert line.index("open") == header.index("STATUS")
    assert format_event({"event": "resolved", "alert": alert("x", status="resolved")}).endswith("[resolved]")
    assert format_event({"event": "update", "alert": a}).endswith("[update]")
    assert "3 earlier events dropped" in format_event({"event": "update", "alert": a, "lagged": 3})
    # A partial alert still formats.
    assert format_event({"event": "alert", "alert": {"alert_id": "z"}}).split()[0] == "-"


def test_parse_sse() -> None:
    lines = ["event: hello", 'data: {"subscribers": 1}', "", ": keepalive", "", "id: 7", "event: alert",
             "data: {", "data: }", "", "data: plain", "", "event: update", "data: cut off"]
    assert list(parse_sse(lines)) == [("hello", '{"subscribers": 1}'), ("alert", "{\n}"), ("message", "plain")]


# --- against an in-test API ---------------------------------------------------------------------

class FakeApi:
    """The documented /api/v1/alerts and /api/v1/stream, with one optional token."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.alerts = [alert("new-alert-1", ts=T0 + 2 * 10**9, severity="high"), alert("old-alert-1")]  # newest first
        self.total = 2
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.status = 200

    def _auth(self, request: web.Request) -> None:
        self.requests.append((request.path, dict(request.query)))
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            raise web.HTTPUnauthorized(text=json.dumps({"status": "error", "error": "missing or unknown token"}),
                                       content_type="application/json", headers={"WWW-Authenticate": "Bearer"})
        if self.status == 400:
            raise web.HTTPBadRequest(text=json.dumps({"status": "error", "error": "start: not a time"}),
                                     content_type="application/json")

    async def list(self, request: web.Request) -> web.Response:
        self._auth(request)
        return web.json_response({"alerts": self.alerts, "total": self.total, "limit": 50, "offset": 0})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self._auth(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b'event: hello\ndata: {"subscribers": 1}\n\n: keepalive\n\n')
        for i, (name, a) in enumerate(self.events):
            await resp.write(f"id: {i}\nevent: {name}\ndata: {json.dumps(a)}\n\n".encode())
        await resp.write_eof()  # the aggregator shutting down
        return resp


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, str]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/alerts", fake.list)
    app.router.add_get("/api/v1/stream", fake.stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SENTINEL_API_TOKEN", raising=False)
    monkeypatch.delenv("SENTINEL_URL", raising=False)


async def run(*argv: str) -> int:
    # main() is synchronous (httpx.Client): off the loop, which serves the fake API.
    return await asyncio.to_thread(main, list(argv))


async def test_list_prints_a_table_oldest_first(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.total = 7
    assert await run("--url", url, "--severity", "critical,high", "--severity", "medium", "--type", "latency_spike",
                     "--service", "chat", "--status", "open", "--limit", "2") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("TIME") and len(lines) == 3
    assert "old-aler" in lines[1] and "new-aler" in lines[2]  # the newest just above the prompt
    assert "2 most recent of 7" in err
    assert fake.requests == [("/api/v1/alerts", {"severity": "critical,high,medium", "type": "latency_spike",
                                                 "service": "chat", "status": "open", "limit": "2"})]


async def test_json_prints_the_answer(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    assert await run("--url", url, "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert body["alerts"] == fake.alerts and body["total"] == 2


async def test_url_from_the_environment(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = api
    fake.alerts, fake.total = [], 0
    monkeypatch.setenv("SENTINEL_URL", url + "/")
    assert await run() == 0
    out, err = capsys.readouterr()
    assert out == "" and "no matching alerts" in err


async def test_token_from_env_or_file(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake, url = api
    fake.token = "s3cret"
    assert await run("--url", url) == 1
    err = capsys.readouterr().err
    assert "401" in err and "SENTINEL_API_TOKEN" in err and "needs an API token" in err

    monkeypatch.setenv("SENTINEL_API_TOKEN", "wrong")
    assert await run("--url", url) == 1
    err = capsys.readouterr().err
    assert "not accepted" in err and "SENTINEL_API_TOKEN" in err

    monkeypatch.setenv("SENTINEL_API_TOKEN", "s3cret")
    assert await run("--url", url) == 0
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    monkeypatch.setenv("SENTINEL_API_TOKEN", "wrong")  # the file wins
    assert await run("--url", url, "--token-file", str(token_file)) == 0


async def test_a_rejected_parameter_exits_2(api: tuple[FakeApi, str], capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.status = 400
    assert await run("--url", url) == 2
    assert "start: not a time" in capsys.readouterr().err


async def test_follow_prints_the_list_then_live_events(api: tuple[FakeApi, str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.events = [("alert", alert("live-0001")), ("update", alert("live-0001", count=2)),
                   ("resolved", alert("live-0001", status="resolved", count=2))]
    assert await run("--url", url, "--follow", "--severity", "critical", "--limit", "5") == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("TIME") and len(lines) == 6
    assert [line.split()[-1] for line in lines[3:]] == ["[new]", "[update]", "[resolved]"]
    assert all("live-000" in line for line in lines[3:])
    assert "ended the stream" in err
    # The stream is opened first (nothing raised between list and stream is lost); no limit on it.
    assert fake.requests == [("/api/v1/stream", {"severity": "critical"}),
                             ("/api/v1/alerts", {"severity": "critical", "limit": "5"})]


async def test_follow_json_is_one_object_per_line(api: tuple[FakeApi, str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    fake, url = api
    fake.events = [("alert", alert("live-0001"))]
    assert await run("--url", url, "--follow", "--json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["event"], e["alert"]["alert_id"]) for e in events] == [
        ("recent", "old-alert-1"), ("recent", "new-alert-1"), ("alert", "live-0001")]


@pytest.mark.parametrize("follow", [False, True])
def test_connection_refused(capsys: pytest.CaptureFixture[str], follow: bool) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, *(["--follow"] if follow else [])]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"sentinel alerts: cannot reach the aggregator at {url}: ")
    assert "Traceback" not in err


@pytest.mark.parametrize(("argv", "option"), [
    (["--severity", "urgent"], "--severity"),
    (["--severity", "high,urgent"], "--severity"),
    (["--status", "closed"], "--status"),
    (["--limit", "0"], "--limit"),
    (["--limit", "5000"], "--limit"),
    (["--limit", "many"], "--limit"),
    (["--url", "127.0.0.1:9090"], "--url"),
    (["--token-file", "/nonexistent/token"], "--token-file"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_options_exit_2_naming_the_option(capsys: pytest.CaptureFixture[str], argv: list[str],
                                              option: str) -> None:
    assert main(argv) == 2
    assert option in capsys.readouterr().err


def test_empty_token_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "t").write_text("\n")
    assert main(["--token-file", str(tmp_path / "t")]) == 2
    assert "--token-file" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "SENTINEL_API_TOKEN" in capsys.readouterr().out
