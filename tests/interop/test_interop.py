"""Real instrumented apps against the sidecar: every row checked against what the client did.

For each instrumentation family (its own venv, :mod:`tests.interop.venvs`) and each OTLP transport,
:mod:`tests.interop.client_app` runs the real ``openai`` client against :class:`FakeOpenAI` (chat,
a stream with ``include_usage``, a slower stream, ``max_tokens`` cut short, embeddings, 429, 500
and a client timeout), exporting with the real OTLP exporter to an in-process sidecar that
forwards to a recording aggregator. Each call must give exactly one row whose every field matches
the call (except the fields :data:`NOT_EMITTED` says the family does not write), whose ``ttft_ms``
on a stream is within :data:`TTFT_TOLERANCE_MS` of the client's own measurement, and no row holds
prompt text or the API key.

The venvs are built on first use (a few minutes each) and cached in ``.interop-venvs/``; build
them ahead with ``.venv/bin/python -m tests.interop.venvs``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.recorder import RecordingAggregator
from sentinel.pricing import PriceBook
from sidecar.app import Sidecar
from tests.conftest import SidecarFactory
from tests.interop import client_app
from tests.interop.fake_openai import FakeOpenAI
from tests.interop.venvs import FAMILIES, ensure_venv

pytestmark = [pytest.mark.system, pytest.mark.timeout(1800)]

PROTOCOLS = ("grpc", "http/protobuf", "http/json")
TTFT_TOLERANCE_MS = 20.0
CLIENT_APP = Path(client_app.__file__)

#: Row fields a family does not write (the row has null there): field -> on which calls
#: ("all", "stream" or "error"). From the packages' source, confirmed by these runs.
NOT_EMITTED: dict[str, dict[str, str]] = {
    "openllmetry": {},
    "openinference": {},
    # 2.4b0 records neither the user= parameter nor a TTFT, and no finish reason on streams
    "genai-v2": {"user": "all", "ttft_ms": "all", "finish_reason": "stream"},
    # 1.45 sets gen_ai.request.user only when it handles a response
    "openlit": {"user": "error"},
}


#: Families whose stream TTFT is not measured from the call's start. OpenLIT 1.45 starts its clock
#: when the stream object is made, i.e. once the response's headers are in: its TTFT leaves out
#: the time to the headers (and the moment the client saw them), so it is below the client's TTFT
#: and above half the server's wait between headers and first chunk (a check that it is no
#: per-token time or whole-call latency).
TTFT_FROM_HEADERS = frozenset({"openlit"})


def not_emitted(family: str, call: dict[str, Any]) -> set[str]:
    where_now = {"all", "stream" if call["stream"] else "", "error" if call["error"] else ""}
    return {f for f, where in NOT_EMITTED[family].items() if where in where_now}

_ERRORS = {"e429": "RateLimitError", "e500": "InternalServerError", "timeout": "APITimeoutError"}


@pytest.fixture(scope="module")
def prices() -> PriceBook:
    return PriceBook()


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI()
    await server.start()
    yield server
    await server.stop()


async def run_client(family: str, protocol: str, endpoint: str, base_url: str, out: Path,
                     signals: str = "traces") -> dict[str, Any]:
    python = await asyncio.to_thread(ensure_venv, family)
    proc = await asyncio.create_subprocess_exec(
        str(python), str(CLIENT_APP), family, protocol, endpoint, base_url, str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "INTEROP_SIGNALS": signals})
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode(errors="replace")[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def interop_rows(family: str, protocol: str, make_sidecar: SidecarFactory, recorder: RecordingAggregator,
                       fake: FakeOpenAI, tmp_path: Path, signals: str = "traces",
                       ) -> tuple[dict[str, Any], list[dict[str, Any]], Sidecar]:
    sc = await make_sidecar(aggregator_url=recorder.url)
    ports = sc.ports()
    endpoint = f"127.0.0.1:{ports['grpc']}" if protocol == "grpc" else f"http://127.0.0.1:{ports['http']}"
    seen = await run_client(family, protocol, endpoint, fake.base_url, tmp_path / "calls.json", signals)
    n = len(seen["calls"])
    await recorder.wait_rows(n, timeout_s=15.0)
    await recorder.wait_rows(n + 1, timeout_s=0.5)  # any extra row arrives now too
    return seen, [r for b in recorder.batches for r in b.batch.rows()], sc


def expected_row(family: str, call: dict[str, Any], prices: PriceBook) -> dict[str, Any]:
    ok = call["error"] is None
    cost = None
    if ok:
        cost = prices.cost("openai", call["response_model"], call["input_tokens"], call["output_tokens"],
                           alt_model=call["model"])
    row = {
        "service": f"interop-{family}", "operation": call["operation"], "provider": "openai",
        "request_model": call["model"], "response_model": call["response_model"],
        "input_tokens": call["input_tokens"], "output_tokens": call["output_tokens"],
        "finish_reason": call["finish_reason"], "user": call["user"],
        "is_error": int(not ok), "error_type": call["error"], "api_key_hash": None,
        "trace_id": call["trace_id"], "cost_usd": cost,
    }
    for field in not_emitted(family, call):
        if field in row:
            row[field] = None
    return row


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("family", FAMILIES)
async def test_every_row_matches_the_call(family: str, protocol: str, make_sidecar: SidecarFactory,
                                          recorder: RecordingAggregator, fake_openai: FakeOpenAI,
                                          prices: PriceBook, tmp_path: Path) -> None:
    seen, rows, sc = await interop_rows(family, protocol, make_sidecar, recorder, fake_openai, tmp_path)
    calls = seen["calls"]
    # what was compared, for a failure's post-mortem
    (tmp_path / "rows.json").write_text(json.dumps({"calls": calls, "rows": rows}, indent=1))
    by_trace: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_trace.setdefault(row["trace_id"], []).append(row)
    assert len(rows) == len(calls), f"{len(rows)} rows for {len(calls)} calls: {rows}"
    for call in calls:
        assert call["error"] == _ERRORS.get(call["id"]), call
        (row,) = by_trace[call["trace_id"]]
        want = expected_row(family, call, prices)
        got = {k: row[k] for k in want}
        if want["cost_usd"] is not None:
            assert got.pop("cost_usd") == pytest.approx(want.pop("cost_usd"), rel=1e-9), call["id"]
        assert got == want, f"{family} {protocol} call {call['id']}"
        # the span lies within the client's own timing of the call
        assert row["latency_ms"] is not None and 0.0 < row["latency_ms"] <= call["client_ms"] + 1.0, call["id"]
        if call["stream"] and call["error"] is None and "ttft_ms" not in not_emitted(family, call):
            # A miss names how late the instrumentation started its span after the call began (on a
            # loaded machine, tens of ms): that delay is in the client's TTFT, not in the span's.
            late_ms = (row["time_unix_nano"] - call["start_unix_ns"]) / 1e6
            if family in TTFT_FROM_HEADERS:
                assert call["first_chunk_ms"] / 2 <= row["ttft_ms"] <= call["ttft_ms"] + TTFT_TOLERANCE_MS, call["id"]
            else:
                assert row["ttft_ms"] == pytest.approx(call["ttft_ms"], abs=TTFT_TOLERANCE_MS), \
                    f"{call['id']}: span started {late_ms:.1f} ms after the call"
        else:
            assert row["ttft_ms"] is None, call["id"]
        if row["output_tokens"] and row["latency_ms"]:
            assert row["tokens_per_s"] is not None and row["tokens_per_s"] > 0
    text = json.dumps(rows)
    assert client_app.SECRET not in text and client_app.API_KEY not in text
    # every model here is priced: nothing is counted as unknown cost (failed calls included)
    assert sc.metrics.unknown_cost._value.get() == 0


def test_the_client_app_is_plain_python() -> None:
    """It runs in venvs without the project: it may import only the standard library at the top."""
    source = CLIENT_APP.read_text()
    top_imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert all(line.split()[1].split(".")[0] in sys.stdlib_module_names | {"__future__"} for line in top_imports)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_an_app_sending_only_genai_metrics_gets_rows(protocol: str, make_sidecar: SidecarFactory,
                                                          recorder: RecordingAggregator, fake_openai: FakeOpenAI,
                                                          tmp_path: Path) -> None:
    """The v2 instrumentation's own metrics (duration, token usage), no spans: rows per call."""
    seen, rows, sc = await interop_rows("genai-v2", protocol, make_sidecar, recorder, fake_openai, tmp_path,
                                        signals="metrics")
    calls = seen["calls"]
    assert len(rows) == len(calls) and sc.metrics.metric_rows._value.get() == len(calls)
    for model, operation in {(c["model"], c["operation"]) for c in calls}:
        mine = [c for c in calls if (c["model"], c["operation"]) == (model, operation)]
        got = [r for r in rows if (r["request_model"], r["operation"]) == (model, operation)]
        assert len(got) == len(mine), (model, operation)
        assert all(r["service"] == "interop-genai-v2" and r["provider"] == "openai" and r["trace_id"] is None
                   for r in got)
        assert sorted(r["error_type"] for r in got if r["is_error"]) == sorted(c["error"] for c in mine if c["error"])
        for column in ("input_tokens", "output_tokens"):
            # 2.4b0 records no token usage metric for streamed calls
            want = sum(c[column] or 0 for c in mine if not c["stream"])
            assert sum(r[column] or 0 for r in got) == pytest.approx(want), (model, column)
        # A histogram interval's mean is exact, so the rows' latencies add up to the calls' as the
        # instrumentation timed them; 2.4b0 stops a stream's clock when the stream object is returned.
        client_total = sum(c["client_ms"] for c in mine)
        unstreamed = sum(c["client_ms"] for c in mine if not c["stream"])
        row_total = sum(r["latency_ms"] for r in got)
        assert 0.5 * unstreamed <= row_total <= client_total + 1.0, (model, row_total, client_total)


async def test_openllmetry_metrics_alone_give_latency_ttft_and_token_rows(
        make_sidecar: SidecarFactory, recorder: RecordingAggregator, fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    """OpenLLMetry's metrics (duration, token usage, gen_ai.server.time_to_first_token), no spans.

    Its metrics name the response's (dated) model, so that is the rows' model."""
    seen, rows, _ = await interop_rows("openllmetry", "grpc", make_sidecar, recorder, fake_openai, tmp_path,
                                       signals="metrics")
    calls = seen["calls"]
    assert len([r for r in rows if r["latency_ms"] is not None]) == len(calls)
    assert sorted(r["error_type"] for r in rows if r["is_error"]) == sorted(c["error"] for c in calls if c["error"])
    streams = [c for c in calls if c["stream"]]
    ttft = [r["ttft_ms"] for r in rows if r["ttft_ms"] is not None]
    assert len(ttft) == len(streams)
    # an interval's mean is exact: the streams' mean TTFT as the client measured it, within 20 ms
    assert sum(ttft) / len(ttft) == pytest.approx(sum(c["ttft_ms"] for c in streams) / len(streams),
                                                  abs=TTFT_TOLERANCE_MS)
    for column in ("input_tokens", "output_tokens"):
        assert sum(r[column] or 0 for r in rows) == pytest.approx(sum(c[column] or 0 for c in calls)), column
