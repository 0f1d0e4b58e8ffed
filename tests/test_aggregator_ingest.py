"""The aggregator's ingest: a real in-process aggregator, real sidecars and raw wire bodies over HTTP."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from aggregator.ingest.dedup import Dedup
from aggregator.ingest.service import late_rows
from loadtest.spans import build_trace_request
from sentinel import wire
from sentinel.config import ConfigError
from sentinel.model import COLUMNS, FeatureBatch, Row
from tests.conftest import AggregatorFactory, SidecarFactory

MSGPACK = {"Content-Type": wire.CONTENT_TYPE}
TOKEN = "s3cret-token"
HOUR_NS = 3600 * 10**9

def _row(time_unix_nano: int, i: int = 0) -> Row:
    values: dict[str, Any] = {name: None for name in COLUMNS}
    values.update(time_unix_nano=time_unix_nano, service="checkout", request_model="gpt-4o", operation="chat",
                  latency_ms=100.0 + i, input_tokens=10.0, output_tokens=20.0, is_error=0,
                  trace_id=f"{i:032x}", span_id=f"{i:016x}")
    return tuple(values[name] for name in COLUMNS)


def _body(seq: int, n: int = 5, *, age_ns: int = 0, created_age_ns: int = 0, sidecar: str = "sc-1") -> bytes:
    now = time.time_ns()
    batch = FeatureBatch.from_rows([_row(now - age_ns, i) for i in range(n)])
    return wire.encode(batch, sidecar=sidecar, seq=seq, created_unix_nano=now - created_age_ns)


def _value(agg: Aggregator, name: str, labels: dict[str, str] | None = None) -> float:
    v = agg.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if v is None else v


def _stored(agg: Aggregator) -> int:
    return len(agg.ingest.journal.entries(limit=10_000))


async def _post(agg: Aggregator, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient() as c:
        return await c.post(f"{agg.url}/v1/ingest", content=body, headers=MSGPACK if headers is None else headers)


async def _wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


# -- end to end with the real sidecar ------------------------------------------------------------

async def test_sidecar_forwards_rows_that_are_stored_and_counted(
    make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory
) -> None:
    agg = await make_aggregator(tokens=[TOKEN])
    sc = await make_sidecar(aggregator_url=agg.url, token=TOKEN)
    async with httpx.AsyncClient() as c:
        for i in range(2):
            body = build_trace_request(10, rng=random.Random(i)).SerializeToString()
            r = await c.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/traces", content=body,
                             headers={"Content-Type": "application/x-protobuf"})
            assert r.status_code == 200, r.text
    await _wait_for(lambda: _value(agg, "sentinel_aggregator_rows_ingested_total") >= 20)
    assert _value(agg, "sentinel_aggregator_rows_ingested_total") == 20
    assert _value(agg, "sentinel_aggregator_duplicate_batches_total") == 0
    entries = agg.ingest.journal.entries()
    assert sum(e[3] for e in entries) == 20
    decoded = [wire.decode(e[5]) for e in entries]
    assert {d.sidecar for d in decoded} == {"test-sidecar"}
    assert sum(d.batch.n for d in decoded) == 20
    await _wait_for(lambda: sc.metrics.forwarded_rows._value.get() == 20)


# -- refusals: nothing stored ----------------------------------------------------------------------

@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
async def test_missing_or_wrong_token_is_401_and_nothing_is_stored(
    make_aggregator: AggregatorFactory, authorization: str | None
) -> None:
    agg = await make_aggregator(tokens=["other", TOKEN])
    headers = dict(MSGPACK)
    if authorization is not None:
        headers["Authorization"] = authorization
    r = await _post(agg, _body(1), headers)
    assert r.status_code == 401
    assert _stored(agg) == 0
    assert _value(agg, "sentinel_aggregator_batches_received_total", {"outcome": "unauthorized"}) == 1
    ok = await _post(agg, _body(1), {**MSGPACK, "Authorization": f"Bearer {TOKEN}"})
    assert ok.json() == {"status": "accepted", "rows": 5, "late_rows": 0, "future_rows": 0}


@pytest.mark.parametrize(("body", "message"), [
    (b"\xc1garbage", "not valid msgpack"),
    (msgpack.packb([1, 2, 3]), "expected a map"),
    (msgpack.packb({"v": 1, "sidecar": "a", "n": 0, "cols": {}}), "missing field 'seq'"),
    (msgpack.packb({"v": 9, "sidecar": "a", "seq": 1, "n": 0, "cols": {}}), "unsupported wire version 9"),
])
async def test_malformed_body_is_400_naming_the_problem(
    make_aggregator: AggregatorFactory, body: bytes, message: str
) -> None:
    agg = await make_aggregator()
    r = await _post(agg, body)
    assert r.status_code == 400
    assert message in r.json()["error"]
    assert _stored(agg) == 0
    assert _value(agg, "sentinel_aggregator_batches_received_total", {"outcome": "invalid"}) == 1


async def test_body_over_the_limit_is_413(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(max_body_bytes=2048)
    big = _body(1, n=100)
    assert len(big) > 2048
    r = await _post(agg, big)
    assert r.status_code == 413
    assert "max_body_bytes" in r.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: refused while reading
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    async with httpx.AsyncClient() as c:
        r = await c.post(f"{agg.url}/v1/ingest", content=chunks(), headers=MSGPACK)
    assert r.status_code == 413
    assert _stored(agg) == 0
    assert _value(agg, "sentinel_aggregator_batches_received_total", {"outcome": "too_large"}) == 2


@pytest.mark.parametrize("content_type", ["application/json", "application/x-protobuf", None])
async def test_wrong_content_type_is_415(make_aggregator: AggregatorFactory, content_type: str | None) -> None:
    agg = await make_aggregator()
    headers = {"Content-Type": content_type} if content_type else {}
    r = await _post(agg, _body(1), headers)
    assert r.status_code == 415
    assert wire.CONTENT_TYPE in r.json()["error"]
    assert _stored(agg) == 0


# -- de-duplication, also across a restart ----------------------------------------------------------

async def test_duplicate_batch_is_acknowledged_once_counted_also_after_restart(
    make_aggregator: AggregatorFactory,
) -> None:
    body = _body(42, n=7)
    agg = await make_aggregator()
    first, again = await _post(agg, body), await _post(agg, body)
    assert first.status_code == again.status_code == 200
    assert first.json() == {"status": "accepted", "rows": 7, "late_rows": 0, "future_rows": 0}
    assert again.json() == {"status": "duplicate"}
    assert _value(agg, "sentinel_aggregator_rows_ingested_total") == 7
    assert _value(agg, "sentinel_aggregator_duplicate_batches_total") == 1
    await agg.shutdown()

    restarted = await make_aggregator()
    r = await _post(restarted, body)
    assert r.json() == {"status": "duplicate"}
    assert _value(restarted, "sentinel_aggregator_rows_ingested_total") == 0
    assert _stored(restarted) == 1
    other = await _post(restarted, _body(42, n=3, sidecar="sc-2"))  # same seq, other sidecar
    assert other.json()["status"] == "accepted"


async def test_concurrent_copies_of_one_batch_are_stored_once(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    body = _body(5)
    results = await asyncio.gather(*(_post(agg, body) for _ in range(8)))
    statuses = sorted(r.json()["status"] for r in results)
    assert statuses == ["accepted"] + ["duplicate"] * 7
    assert _stored(agg) == 1


def test_dedup_window_prunes_old_seqs_per_sidecar() -> None:
    import sqlite3

    d = Dedup(sqlite3.connect(":memory:"), window=3)
    for seq in range(10):
        d.record("a", seq, received_at=0)
    d.record("b", 1, received_at=0)
    assert d.count("a") == 3 and d.count("b") == 1
    assert [d.seen("a", s) for s in (6, 7, 8, 9)] == [False, True, True, True]
    assert d.seen("b", 1)


# -- event time ----------------------------------------------------------------------------------

async def test_rows_two_hours_old_are_flagged_late(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator()
    r = await _post(agg, _body(1, n=4, age_ns=2 * HOUR_NS))  # old rows in a fresh batch (clock skew)
    assert r.json() == {"status": "accepted", "rows": 4, "late_rows": 4, "future_rows": 0}
    r = await _post(agg, _body(2, n=3, age_ns=2 * HOUR_NS, created_age_ns=2 * HOUR_NS))  # a spool replay
    assert r.json() == {"status": "accepted", "rows": 3, "late_rows": 3, "future_rows": 0}
    r = await _post(agg, _body(3, n=2))
    assert r.json()["late_rows"] == 0
    assert _value(agg, "sentinel_aggregator_rows_late_total") == 7
    assert _value(agg, "sentinel_aggregator_batches_replayed_total") == 1
    assert [(e[2], e[4]) for e in agg.ingest.journal.entries()] == [(1, 4), (2, 3), (3, 0)]


@pytest.mark.parametrize(("times", "arrival", "late_after", "late"), [
    ([], 100, 10, 0),
    ([95, 90, 89, 0], 100, 10, 2),  # exactly arrival - late_after is not late
    ([200, 300], 100, 10, 0),       # future rows (clock ahead) are not late
])
def test_late_rows(times: list[int], arrival: int, late_after: int, late: int) -> None:
    assert late_rows(np.array(times, dtype=np.int64), arrival_ns=arrival, late_after_ns=late_after) == late


# -- overload --------------------------------------------------------------------------------------

async def test_full_queue_answers_503_with_retry_after(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(ingest_queue_max_batches=1, retry_after_s=3)
    await agg.ingest.pause()
    a = asyncio.create_task(_post(agg, _body(1)))
    await _wait_for(lambda: agg.ingest.held == 1)     # taken by the worker, held before its commit
    b = asyncio.create_task(_post(agg, _body(2)))
    await _wait_for(lambda: agg.ingest.queued == 1)   # the queue (size 1) is full
    assert _value(agg, "sentinel_aggregator_ingest_queue_batches") == 2
    r = await _post(agg, _body(3))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "3"
    assert _value(agg, "sentinel_aggregator_batches_received_total", {"outcome": "overloaded"}) == 1
    agg.ingest.resume()
    assert [(await t).json()["status"] for t in (a, b)] == ["accepted", "accepted"]
    assert (await _post(agg, _body(3))).json()["status"] == "accepted"
    assert _stored(agg) == 3
    assert _value(agg, "sentinel_aggregator_ingest_queue_batches") == 0


# -- lifecycle, settings, command line -------------------------------------------------------------

async def test_ops_endpoints_and_idempotent_shutdown(make_aggregator: AggregatorFactory, tmp_path: Path) -> None:
    agg = await make_aggregator()
    async with httpx.AsyncClient() as c:
        assert (await c.get(f"{agg.url}/healthz")).text == "ok\n"
        assert (await c.get(f"{agg.url}/readyz")).status_code == 200
        metrics = (await c.get(f"{agg.url}/metrics")).text
    for name in ("sentinel_aggregator_batches_received_total", "sentinel_aggregator_rows_ingested_total",
                 "sentinel_aggregator_rows_late_total", "sentinel_aggregator_duplicate_batches_total",
                 "sentinel_aggregator_ingest_queue_batches"):
        assert name in metrics
    assert (tmp_path / "aggregator" / "ingest.sqlite3").exists()
    await agg.shutdown()
    await agg.shutdown()


async def test_journal_retention_prunes_old_batches(make_aggregator: AggregatorFactory) -> None:
    agg = await make_aggregator(journal_retention_s=3600)
    assert (await _post(agg, _body(1))).status_code == 200
    assert await agg.ingest.prune_journal() == 0
    agg.ingest._clock = lambda: time.time_ns() + 2 * HOUR_NS  # two hours later
    assert await agg.ingest.prune_journal() == 1
    assert _stored(agg) == 0
    assert (await _post(agg, _body(1))).json() == {"status": "duplicate"}  # dedup outlives the journal


@pytest.mark.parametrize(("settings", "key"), [
    ({"listen": "9090"}, "listen"),
    ({"max_body_bytes": 0}, "max_body_bytes"),
    ({"ingest_queue_max_batches": 0}, "ingest_queue_max_batches"),
    ({"late_after_s": 0}, "late_after_s"),
    ({"dedup_window": -1}, "dedup_window"),
    ({"tokens": [""]}, "tokens"),
    ({"log_level": "loud"}, "log_level"),
])
def test_invalid_settings_name_the_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}:"):
        AggregatorConfig(**settings).validate()


def test_cli_refuses_invalid_setting_with_exit_2() -> None:
    r = subprocess.run([sys.executable, "-m", "sentinel.cli", "aggregator", "--listen", "nonsense"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "listen" in r.stderr
