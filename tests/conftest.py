"""Shared fixtures: a recording aggregator, in-process sidecars and aggregators on free loopback
ports, an alert store; and ``wait_for``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from aggregator.alerting.pg_store import PgAlertStore
from aggregator.alerting.store import SQLiteAlertStore
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from loadtest.recorder import RecordingAggregator
from sentinel.config import load
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig

TESTS = Path(__file__).resolve().parent
#: Folders whose every test is a real-process suite: marked ``system`` (``make test-system``). Single
#: modules elsewhere say so themselves with ``pytestmark = pytest.mark.system``.
SYSTEM_DIRS = ("faults", "interop")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.resolve().relative_to(TESTS).parts
        if len(parts) > 1 and parts[0] in SYSTEM_DIRS:
            item.add_marker(pytest.mark.system)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def recorder() -> AsyncIterator[RecordingAggregator]:
    rec = RecordingAggregator()
    await rec.start()
    yield rec
    await rec.stop()


SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def make_sidecar() -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def make(**overrides: Any) -> Sidecar:
        settings: dict[str, Any] = {
            "grpc_listen": "127.0.0.1:0",
            "http_listen": "127.0.0.1:0",
            "metrics_listen": "127.0.0.1:0",
            "sidecar_id": "test-sidecar",
            "batch_timeout_s": 0.05,
            "retry_max_backoff_s": 0.2,
            "shutdown_grace_s": 1.0,
        }
        settings.update(overrides)
        sc = Sidecar(load(SidecarConfig, data=settings, env={}, validate=False), registry=CollectorRegistry())
        await sc.start()
        started.append(sc)
        return sc

    yield make
    for sc in started:
        await sc.shutdown()


AggregatorFactory = Callable[..., Awaitable[Aggregator]]


@pytest.fixture
async def make_aggregator(tmp_path: Path) -> AsyncIterator[AggregatorFactory]:
    started: list[Aggregator] = []

    async def make(**overrides: Any) -> Aggregator:
        settings: dict[str, Any] = {"listen": "127.0.0.1:0", "grpc_listen": "127.0.0.1:0",
                                    "data_dir": str(tmp_path / "aggregator"),
                                    "shutdown_grace_s": 1.0}
        settings.update(overrides)
        # Through the loader: a section is given as a map (alerts={"group_wait_s": 1}), as in the YAML file.
        agg = Aggregator(load(AggregatorConfig, data=settings, env={}, validate=False), registry=CollectorRegistry())
        await agg.start()
        started.append(agg)
        return agg

    yield make
    for agg in started:
        await agg.shutdown()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteAlertStore]:
    """An open alert store in ``tmp_path``."""
    s = SQLiteAlertStore(str(tmp_path / "alerts.db"))
    s.open()
    yield s
    s.close()


#: The machine's PostgreSQL (trust auth): each test gets its own database on it, dropped after.
PG_ADMIN_URL = os.environ.get("SENTINEL_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@functools.cache
def pg_unreachable() -> str | None:
    """Why PostgreSQL tests cannot run here (``None``: they can)."""
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return f"PostgreSQL at {PG_ADMIN_URL} is unreachable ({str(e).strip()[:200]})"
    return None


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """The URL of a new, empty database (``sentinel_test_<random>``), dropped at the end."""
    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    name = f"sentinel_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (skipped when PostgreSQL is unreachable)."""
    with pg_database() as url:
        yield url


def open_pg_store(url: str, **kwargs: Any) -> PgAlertStore:
    kwargs.setdefault("registry", CollectorRegistry())
    kwargs.setdefault("pool_size", 2)
    s = PgAlertStore(url, **kwargs)
    s.open()
    return s


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLiteAlertStore | PgAlertStore]:
    """An open alert store of each backend: SQLite in ``tmp_path``, PostgreSQL in a database of its own."""
    if request.param == "sqlite":
        s = SQLiteAlertStore(str(tmp_path / "alerts.db"))
        s.open()
        yield s
        s.close()
        return
    with pg_database() as url:
        pg = open_pg_store(url)
        yield pg
        pg.close()


async def wait_for(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``cond`` until it holds; ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[int]:
    """``app`` on an ephemeral loopback port (yielded) until the block ends."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()
