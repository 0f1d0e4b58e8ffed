"""The scenario player (loadtest/loadgen.py) against in-process sidecars: spans arrive, services stay on
their sidecar, incidents are announced in order, export failures are counted; and its command line.
No timing assertions (the plays are one or two wall seconds long)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from loadtest import loadgen
from loadtest.loadgen import default_start_unix_nano, play, sidecar_for_service
from loadtest.recorder import RecordingAggregator
from loadtest.scenario import Incident, Scenario
from tests.conftest import SidecarFactory, free_port, wait_for

SCENARIOS = Path(__file__).resolve().parents[1] / "loadtest" / "scenarios"

TINY = Scenario(
    name="tiny", duration_s=60.0, speedup=60.0, rate=30.0, seed=5, warmup_s=10.0, sidecars=2,
    incidents=(
        Incident("spike", "latency_spike", 15, 25, {"service": "support-chat"}, {}, ("latency_spike",)),
        Incident("burst", "error_burst", 20, 40, {"service": "search-rag"}, {}, ("error_burst",)),
        Incident("drop", "throughput_drop", 45, 60, {"service": "doc-summarizer"}, {}, ("throughput_drop",)),
    ),
)
T0 = 1_780_000_000 * 10**9


def test_sidecar_for_service_is_round_robin() -> None:
    assert sidecar_for_service(TINY, 2) == {"support-chat": 0, "search-rag": 1, "doc-summarizer": 0,
                                            "code-review-bot": 1}
    assert set(sidecar_for_service(TINY, 1).values()) == {0}
    assert sidecar_for_service(TINY, 5) == {"support-chat": 0, "search-rag": 1, "doc-summarizer": 2,
                                            "code-review-bot": 3}
    with pytest.raises(ValueError):
        sidecar_for_service(TINY, 0)


def test_default_start_puts_the_last_event_at_now() -> None:
    now = 2_000_000_000 * 10**9
    start = default_start_unix_nano(TINY, now)
    assert start == now - int(60 * (1 - 1 / 60) * 1e9)
    # the event time of the last call (sim 60 s) equals the wall time it is sent at (now + 60 / speedup)
    assert start + 60 * 10**9 == now + 10**9


def test_endpoint_forms() -> None:
    assert loadgen._grpc_target("http://127.0.0.1:4317") == "127.0.0.1:4317"
    assert loadgen._grpc_target("127.0.0.1:4317") == "127.0.0.1:4317"
    assert loadgen._http_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert loadgen._http_url("127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert loadgen._http_url("http://h:4318/custom/path") == "http://h:4318/custom/path"


@pytest.mark.parametrize("mode", ["raw", "sdk-grpc"])
async def test_play_into_two_sidecars(mode: Any, recorder: RecordingAggregator, make_sidecar: SidecarFactory) -> None:
    cars = [await make_sidecar(aggregator_url=recorder.url, sidecar_id=f"car-{i}") for i in range(2)]
    endpoints = {f"car-{i}": f"127.0.0.1:{c.ports()['grpc']}" for i, c in enumerate(cars)}
    events: list[tuple[str, str, int]] = []
    stats = await play(TINY, endpoints, mode=mode, start_unix_nano=T0,
                       on_incident=lambda inc, edge, ns: events.append((inc.id, edge, ns)))
    assert stats.calls > 1000
    assert stats.spans_sent == stats.calls and stats.failures == 0 and stats.failed_spans == 0
    assert stats.dropped_spans == 0
    assert sum(stats.spans_per_sidecar.values()) == stats.calls
    assert stats.services == {"support-chat": "car-0", "search-rag": "car-1", "doc-summarizer": "car-0",
                              "code-review-bot": "car-1"}
    assert stats.sim_s == TINY.duration_s and not stats.stopped_early and stats.requests > 0
    # Incidents announced in simulated-time order, with non-decreasing wall times: starts in start
    # order, ends in end order, each start before its end. (A start and an earlier incident's end can
    # fall in one tick when the machine is slow and a tick covers more simulated time: the start is
    # announced before the tick is sent, the end after it.)
    starts = [i for i, e, _ in events if e == "start"]
    ends = [i for i, e, _ in events if e == "end"]
    assert starts == ["spike", "burst", "drop"] and ends == ["spike", "burst", "drop"]
    assert all(events.index((i, "start", t)) < [x[:2] for x in events].index((i, "end"))
               for i, e, t in events if e == "start")
    assert all(a[2] <= b[2] for a, b in itertools.pairwise(events))

    await wait_for(lambda: recorder.rows >= stats.calls, timeout=20, what="every span as a row")
    rows = [r for b in recorder.batches for r in b.batch.rows()]
    assert len(rows) == stats.calls
    by_sidecar: dict[str, set[str]] = {}
    for b in recorder.batches:
        by_sidecar.setdefault(b.sidecar, set()).update(r["service"] for r in b.batch.rows())
    assert by_sidecar == {"car-0": {"support-chat", "doc-summarizer"}, "car-1": {"search-rag", "code-review-bot"}}
    times = sorted(r["time_unix_nano"] for r in rows)
    assert times[0] >= T0 and times[-1] < T0 + int(TINY.duration_s * 1e9)
    assert sum(1 for r in rows if r["is_error"]) > 0


async def test_export_failures_are_counted_not_raised() -> None:
    sc = Scenario(name="nowhere", duration_s=20.0, speedup=40.0, rate=20.0, warmup_s=0.0)
    stats = await play(sc, [f"127.0.0.1:{free_port()}"], mode="raw")
    assert stats.calls > 0 and stats.spans_sent == 0
    assert stats.failures > 0 and stats.failed_spans == stats.calls
    assert stats.errors and "UNAVAILABLE" in stats.errors[0]


async def test_stop_ends_play_and_closes_started_incidents(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    long = Scenario(name="long", duration_s=600.0, speedup=10.0, rate=5.0, warmup_s=1.0,
                    incidents=(Incident("i", "latency_spike", 1.0, 500.0, {}, {}, ("latency_spike",)),))
    stop = asyncio.Event()
    events: list[tuple[str, str]] = []

    def on_incident(inc: Incident, edge: str, ns: int) -> None:
        events.append((inc.id, edge))
        stop.set()  # stop right after the incident starts

    stats = await play(long, [f"127.0.0.1:{sc.ports()['grpc']}"], on_incident=on_incident, stop=stop)
    assert stats.stopped_early and stats.sim_s < long.duration_s
    assert events == [("i", "start"), ("i", "end")]


async def test_bad_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        await play(TINY, ["127.0.0.1:1"], mode="carrier-pigeon")  # type: ignore[arg-type]


def test_cli_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert loadgen.main([str(SCENARIOS / "quick.yaml"), "--dry-run", "--speedup", "60"]) == 0
    out = capsys.readouterr().out
    assert "scenario quick: 2400 simulated s at 60x = 40.0 s wall" in out
    assert "incident spike (latency_spike) on service=support-chat, model=gpt-4o: simulated 900-1020 s" in out
    assert "support-chat" in out and "-> sidecar 0" in out


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert loadgen.main([str(tmp_path / "missing.yaml")]) == 2
    assert loadgen.main([str(SCENARIOS / "quick.yaml")]) == 2  # no --endpoint
    assert loadgen.main([str(SCENARIOS / "quick.yaml"), "--rate", "-1", "--dry-run"]) == 2
    assert "rate" in capsys.readouterr().err


async def test_cli_plays(make_sidecar: SidecarFactory, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    scenario = tmp_path / "s.yaml"
    scenario.write_text("name: s\nduration_s: 30\nspeedup: 30\nrate: 10\nwarmup_s: 5\nincidents:\n"
                        "  - {id: x, type: error_burst, start_s: 10, end_s: 20, target: {service: search-rag}}\n")
    sc = await make_sidecar()
    argv = [str(scenario), "--endpoint", f"127.0.0.1:{sc.ports()['grpc']}"]
    assert await asyncio.to_thread(loadgen.main, argv) == 0  # its own event loop, in a thread
    out = capsys.readouterr().out
    assert "incident x (error_burst) start" in out and "incident x (error_burst) end" in out
    assert "done in" in out and "0 failed" in out
