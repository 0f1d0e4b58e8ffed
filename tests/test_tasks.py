"""Long-running tasks never die silently (issue 15, case 7).

A store-and-forward sidecar whose spool cannot acknowledge (EROFS from ``unlink``, as on a volume
gone read-only) used to lose its forwarder task for good: exports were still answered OK, ``/readyz``
stayed 200 and nothing was forwarded again. The fault is injected into the real spool's ``ack``;
the sidecar, its receivers and the aggregator are real, in-process.
"""

from __future__ import annotations

import asyncio
import errno
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from loadtest.spans import build_trace_request
from sentinel.tasks import TaskSupervisor
from sidecar.spool import SpoolRecord
from tests.conftest import AggregatorFactory, SidecarFactory, wait_for


async def _export(c: httpx.AsyncClient, port: int, seed: int) -> None:
    body = build_trace_request(5, rng=random.Random(seed)).SerializeToString()
    r = await c.post(f"http://127.0.0.1:{port}/v1/traces", content=body,
                     headers={"Content-Type": "application/x-protobuf"})
    assert r.status_code == 200, r.text


async def test_forwarder_survives_a_read_only_spool_and_shows_in_readyz(
        make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory, tmp_path: Path) -> None:
    agg = await make_aggregator()
    sc = await make_sidecar(aggregator_url=agg.url, mode="store-and-forward",
                            spool={"directory": str(tmp_path / "spool")})
    sc.tasks.settle_s = 0.5
    assert sc.spool is not None
    read_only = True
    ack = sc.spool.ack

    def failing_ack(record: SpoolRecord) -> bool:
        if read_only:
            raise OSError(errno.EROFS, "Read-only file system")
        return ack(record)

    sc.spool.ack = failing_ack  # type: ignore[method-assign]
    ports = sc.ports()
    registry = sc.metrics.registry

    def restarts() -> float:
        return registry.get_sample_value("sentinel_sidecar_task_restarts_total", {"task": "forwarder"}) or 0.0

    async with httpx.AsyncClient() as c:
        await _export(c, ports["http"], 1)
        await wait_for(lambda: restarts() >= 1, what="the forwarder to fail and be restarted")
        ready = await c.get(f"http://127.0.0.1:{ports['metrics']}/readyz")
        assert ready.status_code == 503
        # The spool names the problem first (its cursor cannot be written); the forwarder is down and restarted.
        assert "spool cannot be written (OSError: [Errno 30] Read-only file system)" in ready.text
        assert registry.get_sample_value("sentinel_sidecar_task_up", {"task": "forwarder"}) == 0
        read_only = False  # the volume is writable again
        for seed in range(2, 5):
            await _export(c, ports["http"], seed)
        await wait_for(lambda: len(agg.ingest.journal.entries(limit=100)) >= 4, what="every batch forwarded")

        async def ready_again() -> bool:
            return (await c.get(f"http://127.0.0.1:{ports['metrics']}/readyz")).status_code == 200

        deadline = asyncio.get_running_loop().time() + 15
        while not await ready_again():
            assert asyncio.get_running_loop().time() < deadline, "readiness did not recover"
            await asyncio.sleep(0.05)
    assert registry.get_sample_value("sentinel_sidecar_task_up", {"task": "forwarder"}) == 1
    await sc.shutdown()  # no exception from a dead task


async def test_supervisor_restarts_a_failing_task_and_reports_it() -> None:
    tasks = TaskSupervisor(CollectorRegistry(), "t", settle_s=60.0, max_backoff_s=0.01)
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise ValueError(f"bad {len(runs)}")
        await asyncio.Event().wait()

    task = tasks.spawn("flaky", flaky)
    await wait_for(lambda: len(runs) == 3, what="two restarts")
    assert tasks.problem() == "task flaky failed (ValueError: bad 2), restarted 2 times"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_that_finishes_or_is_cancelled_is_not_a_problem() -> None:
    tasks = TaskSupervisor(None, "t")

    async def done() -> None:
        return None

    async def forever(*_: Any) -> None:
        await asyncio.Event().wait()

    await tasks.spawn("done", done)
    t = tasks.spawn("forever", forever)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert tasks.problem() == ""
