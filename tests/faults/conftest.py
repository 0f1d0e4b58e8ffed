"""Fixtures of the fault suite: real sidecar and aggregator processes, a load generator that counts
acknowledgements, TCP proxies that can be killed, a stalling aggregator stub, the journal reader.

Tests here are plain (synchronous) functions. Everything asynchronous that lives in the test
process — TCP proxies, the recording/stalling aggregator stub, the RabbitMQ consumer — runs on a
background event loop (:class:`BackgroundLoop`), so blocking waits in a test never freeze them.

"Acknowledged" means exactly "the OTLP ``Export`` call returned OK to the client"
(:class:`Exporter` records the span ids of every request and the outcome of its call). Rows are
counted where they are durably stored: the aggregator's SQLite journal (:func:`read_journal`,
opened read-only after the aggregator has stopped), one row per span, identified by span id.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import grpc
import httpx
import psycopg
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from aggregator.ingest.journal import DB_NAME
from loadtest.procs import Child, free_port
from loadtest.recorder import RecordingAggregator
from loadtest.spans import DEFAULT_SERVICES, build_trace_request
from sentinel import wire
from tests.faults.servers import OwnPostgres, OwnRabbitMQ, own_postgres_missing, own_rabbitmq_missing
from tests.tcp_proxy import TcpProxy

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
S = 1_000_000_000
T = TypeVar("T")


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.1) -> float:
    """Poll ``cond`` until it holds; returns the seconds waited, ``AssertionError`` naming ``what`` on timeout."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)
    return time.monotonic() - t0


# -- metrics -------------------------------------------------------------------------------------


class Metrics:
    """One scrape of a Prometheus text page; ``m("name_total", reason="x")`` sums matching samples."""

    def __init__(self, text: str) -> None:
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append((s.name, dict(s.labels), float(s.value)))

    def __call__(self, name: str, **labels: str) -> float:
        return sum(v for n, lab, v in self.samples
                   if n == name and all(lab.get(k) == want for k, want in labels.items()))


# -- processes -----------------------------------------------------------------------------------


class Proc:
    """A sentinel subcommand run as a child process; restartable on the same ports and directories."""

    def __init__(self, env: FaultEnv, name: str, ready_url: str) -> None:
        self.env = env
        self.name = name
        self.ready_url = ready_url
        self.child: Child | None = None
        self.starts = 0

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, *, wait: bool = True, timeout_s: float = 60.0) -> Proc:
        child = Child(self.name, self.argv(), log_dir=self.env.tmp)
        # Hermetic: no SENTINEL_* setting of the environment the suite runs in reaches the child.
        child.env = {k: v for k, v in child.env.items() if not k.startswith("SENTINEL_")}
        child.start()
        self.child = child
        self.env.children.append(child)
        self.starts += 1
        if wait:
            self.wait_ready(timeout_s)
        return self

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self.child is not None and self.child.proc is not None, f"{self.name} was never started"
        return self.child.proc

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.child is not None and self.child.running()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} during start-up\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.ready_url, timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready within {timeout_s:.0f}s\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL (addressed by this child's pid only) and reap it."""
        if self.running():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(15)

    def term(self, timeout_s: float = 40.0) -> int:
        """SIGTERM and wait for the exit status (the process is SIGKILLed and the test fails past ``timeout_s``)."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not stop within {timeout_s:.0f}s of SIGTERM\n"
                                 + self.tail()) from None

    def tail(self, limit: int = 6000) -> str:
        return self.child.tail(limit) if self.child is not None else ""

    def log(self) -> str:
        return self.child.log_path.read_text(errors="replace") if self.child is not None else ""

    def metrics(self) -> Metrics:
        r = httpx.get(self.metrics_url, timeout=5.0)
        r.raise_for_status()
        return Metrics(r.text)

    @property
    def metrics_url(self) -> str:
        return self.ready_url.rsplit("/", 1)[0] + "/metrics"

    def rss_bytes(self) -> int:
        assert self.child is not None
        return int(self.child.ps.memory_info().rss)


class SidecarProc(Proc):
    """``sentinel sidecar`` on fixed free loopback ports (kept across restarts)."""

    def __init__(self, env: FaultEnv, name: str, *, aggregator_url: str, mode: str = "sidecar",
                 spool: bool = False, extra: Sequence[str] = ()) -> None:
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        super().__init__(env, name, f"http://127.0.0.1:{self.metrics_port}/readyz")
        self.sidecar_id = name
        self.aggregator_url = aggregator_url
        self.mode = mode
        self.spool_dir: Path | None = env.tmp / f"{name}-spool" if spool or mode == "store-and-forward" else None
        self.extra = list(extra)

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "sentinel.cli", "sidecar",
            "--mode", self.mode,
            "--sidecar-id", self.sidecar_id,
            "--aggregator-url", self.aggregator_url,
            "--grpc-listen", f"127.0.0.1:{self.grpc_port}",
            "--http-listen", "127.0.0.1:0",
            "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
            "--batch-timeout-s", "0.1",
            "--retry-max-backoff-s", "0.5",
            "--forward-timeout-s", "5",
            "--shutdown-grace-s", "5",
            "--log-level", "info",
        ]
        if self.spool_dir is not None:
            argv += ["--spool-directory", str(self.spool_dir)]
        return argv + self.extra


class AggregatorProc(Proc):
    """``sentinel aggregator`` on a fixed free loopback port with its own data directory."""

    def __init__(self, env: FaultEnv, name: str = "aggregator", *, extra: Sequence[str] = (),
                 config: dict[str, Any] | None = None) -> None:
        self.port = free_port()
        super().__init__(env, name, f"http://127.0.0.1:{self.port}/readyz")
        self.data_dir = env.tmp / f"{name}-data"
        self.extra = list(extra)
        self.config_path: Path | None = None
        if config:
            self.config_path = env.tmp / f"{name}.yaml"
            self.config_path.write_text(json.dumps({"aggregator": config}))  # JSON is YAML

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "sentinel.cli", "aggregator",
            "--listen", f"127.0.0.1:{self.port}",
            "--grpc-listen", "",
            "--data-dir", str(self.data_dir),
            "--shutdown-grace-s", "3",
            "--log-level", "info",
        ]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return argv + self.extra

    def journal(self) -> list[JournalBatch]:
        assert not self.running(), "read the journal after the aggregator stopped"
        return read_journal(self.data_dir)

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert in the store (API, newest first; open and resolved alike)."""
        r = httpx.get(f"{self.url}/api/v1/alerts", params={"limit": 1000}, timeout=10.0)
        r.raise_for_status()
        body = r.json()
        return list(body["alerts"] if isinstance(body, dict) else body)


# -- the journal -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalBatch:
    id: int
    sidecar: str
    seq: int
    received_at: int
    created_unix_nano: int
    rows: int
    late_rows: int
    span_ids: tuple[str, ...]


def read_journal(data_dir: Path) -> list[JournalBatch]:
    """Every batch in the aggregator's journal, in commit order (opened read-only)."""
    path = data_dir / DB_NAME
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, sidecar, seq, received_at, created_unix_nano, rows, late_rows, body"
                            " FROM ingest ORDER BY id").fetchall()
    finally:
        conn.close()
    out = []
    for id_, sidecar, seq, received, created, n, late, body in rows:
        b = wire.decode(body)
        assert (b.sidecar, b.seq, b.batch.n) == (sidecar, seq, n), "journal columns disagree with the body"
        out.append(JournalBatch(id_, sidecar, seq, received, created, n, late,
                                tuple(str(s) for s in b.batch.strings["span_id"])))
    return out


@dataclass
class Delivery:
    """What reached the aggregator, compared with what was sent and acknowledged."""

    batches: int
    rows: int
    duplicate_batches: int  # (sidecar, seq) stored more than once
    duplicate_rows: int     # span ids stored more than once
    missing_acked: int      # acknowledged span ids not stored
    unknown: int            # stored span ids never sent
    delivered_unacked: int  # sent, not acknowledged (refused or cut off), stored anyway


def delivery(batches: Sequence[JournalBatch], acked: set[str], sent: set[str]) -> Delivery:
    keys = Counter((b.sidecar, b.seq) for b in batches)
    ids = Counter(sid for b in batches for sid in b.span_ids)
    stored = set(ids)
    return Delivery(
        batches=len(batches), rows=sum(ids.values()),
        duplicate_batches=sum(c - 1 for c in keys.values() if c > 1),
        duplicate_rows=sum(c - 1 for c in ids.values() if c > 1),
        missing_acked=len(acked - stored), unknown=len(stored - sent),
        delivered_unacked=len((stored - acked) & sent),
    )


def assert_exactly_once(batches: Sequence[JournalBatch], acked: set[str], sent: set[str]) -> Delivery:
    """Every acknowledged span's row is stored exactly once, and nothing is stored twice."""
    d = delivery(batches, acked, sent)
    assert d.duplicate_batches == 0, f"(sidecar, seq) stored twice: {d}"
    assert d.duplicate_rows == 0, f"rows stored twice: {d}"
    assert d.unknown == 0, f"rows that were never sent: {d}"
    assert d.missing_acked == 0, f"acknowledged rows lost: {d}"
    return d


def seqs_by_sidecar(batches: Sequence[JournalBatch]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for b in batches:  # commit order
        out.setdefault(b.sidecar, []).append(b.seq)
    return out


# -- the load generator ----------------------------------------------------------------------------


_SEEDS = itertools.count(1)


@dataclass
class ExportCall:
    span_ids: list[str]
    code: str            # "OK" or the gRPC status code name
    seconds: float
    at: float            # time.monotonic() when the call returned


@dataclass
class Exporter:
    """OTLP/gRPC trace exports to one sidecar, from background threads, at a steady rate.

    Every call is recorded with its span ids and outcome; nothing is retried, so a refused
    request's spans are simply not acknowledged. ``clock_offset_s`` shifts the spans' timestamps
    (an app whose clock is off); ``services``/``error_rate`` shape the traffic.
    """

    port: int
    spans_per_request: int = 50
    rate_rps: float = 6.0
    threads: int = 1
    seed: int = field(default_factory=lambda: next(_SEEDS))
    services: Sequence[str] = DEFAULT_SERVICES
    error_rate: float = 0.01
    clock_offset_s: float = 0.0
    timeout_s: float = 10.0
    calls: list[ExportCall] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _streams: int = 0

    def _channel(self) -> grpc.Channel:
        # Reconnect fast after the sidecar restarts (gRPC's default backoff grows to two minutes).
        return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=[
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 300), ("grpc.enable_retries", 0)])

    def request(self, rng: random.Random, **overrides: Any) -> tuple[bytes, list[str]]:
        n = overrides.pop("n_spans", self.spans_per_request)
        start = time.time_ns() + int(self.clock_offset_s * S) - n * 20_000_000
        kwargs: dict[str, Any] = {"services": self.services, "error_rate": self.error_rate, "start_unix_nano": start}
        kwargs.update(overrides)
        req = build_trace_request(n, rng=rng, **kwargs)
        ids = [s.span_id.hex() for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
        return req.SerializeToString(), ids

    def call(self, stub: Any, body: bytes, ids: list[str]) -> ExportCall:
        t0 = time.perf_counter()
        try:
            stub(body, timeout=self.timeout_s)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
        result = ExportCall(ids, code, time.perf_counter() - t0, time.monotonic())
        with self._lock:
            self.calls.append(result)
        return result

    def _rng(self) -> random.Random:
        """A fresh generator per sender: span ids never repeat across senders and exporters."""
        with self._lock:
            self._streams += 1
            return random.Random((self.seed << 20) + self._streams)

    def send(self, requests: int, **overrides: Any) -> list[ExportCall]:
        """``requests`` exports one after the other, in this thread; returns their calls."""
        rng = self._rng()
        out = []
        with self._channel() as channel:
            stub = channel.unary_unary(EXPORT)
            for _ in range(requests):
                body, ids = self.request(rng, **overrides)
                out.append(self.call(stub, body, ids))
        return out

    def _run(self, index: int) -> None:
        rng = self._rng()
        interval = self.threads / self.rate_rps if self.rate_rps > 0 else 0.0
        next_at = time.monotonic()
        with self._channel() as channel:
            stub = channel.unary_unary(EXPORT)
            while not self._stop.is_set():
                body, ids = self.request(rng)
                self.call(stub, body, ids)
                if interval:
                    next_at += interval
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_at = time.monotonic()

    def start(self) -> Exporter:
        self._stop.clear()
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), name=f"exporter-{self.port}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> Exporter:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 10)
        self._threads.clear()
        return self

    def snapshot(self) -> list[ExportCall]:
        with self._lock:
            return list(self.calls)

    @property
    def acked(self) -> set[str]:
        return {i for c in self.snapshot() if c.code == "OK" for i in c.span_ids}

    @property
    def sent(self) -> set[str]:
        return {i for c in self.snapshot() for i in c.span_ids}

    def codes(self) -> Counter[str]:
        return Counter(c.code for c in self.snapshot())


# -- in-process servers on a background loop --------------------------------------------------------


class BackgroundLoop:
    """An asyncio loop on its own thread, for the servers the test process hosts."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_rest(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class StallingAggregator(RecordingAggregator):
    """The recording aggregator stub whose ``/v1/ingest`` waits while its gate is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.stalled = 0

    async def _ingest(self, request: web.Request) -> web.Response:
        if not self.gate.is_set():
            self.stalled += 1
            await self.gate.wait()
        return await super()._ingest(request)


class AmqpQueue:
    """A private exchange and queue on the real RabbitMQ; collects every message published to it."""

    def __init__(self, bg: BackgroundLoop) -> None:
        self.bg = bg
        suffix = uuid.uuid4().hex[:8]
        self.exchange = f"incidents-faults-{suffix}"
        self.sink_queue = f"incidents.all-faults-{suffix}"  # the aggregator's own declared queue
        self.queue_name = f"faults-consumer-{suffix}"
        self.messages: list[aio_pika.abc.AbstractIncomingMessage] = []
        self.bodies: list[dict[str, Any]] = []
        self._connection: Any = None

    async def _start(self) -> None:
        self._connection = await aio_pika.connect(AMQP_URL)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(self.queue_name, auto_delete=True)
        await queue.bind(exchange, "incidents.#")
        await queue.consume(self._on_message)

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.bodies.append(json.loads(message.body))
        await message.ack()

    def start(self) -> AmqpQueue:
        self.bg.run(self._start())
        return self

    async def _close(self) -> None:
        if self._connection is None:
            return
        with contextlib.suppress(Exception):
            ch = await self._connection.channel()
            await ch.exchange_delete(self.exchange)
            await ch.queue_delete(self.sink_queue)
            await ch.queue_delete(self.queue_name)
        with contextlib.suppress(Exception):
            await self._connection.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.bg.run(self._close(), 20)

    def alert_ids(self) -> Counter[str]:
        return Counter(str(b["alert_id"]) for b in list(self.bodies))


class LossyProxy:
    """A loopback TCP proxy that, while ``drop_answers`` is set, passes requests on but throws the
    answers away and resets both connections: the server acted, the client never hears of it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.drop_answers = False
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return

        async def requests() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await reader.read(65536):
                    up_writer.write(data)
                    await up_writer.drain()
            up_writer.close()

        async def answers() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await up_reader.read(65536):
                    if self.drop_answers:
                        self.dropped += 1
                        writer.transport.abort()
                        up_writer.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()
            writer.close()

        for coro in (requests(), answers()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class FaultEnv:
    """Per-test owner of every child process, proxy and stub; tears all of them down (kill in finally)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.children: list[Child] = []
        self.bg = BackgroundLoop()
        self._proxies: list[TcpProxy] = []
        self._recorders: list[RecordingAggregator] = []
        self._queues: list[AmqpQueue] = []
        self._exporters: list[Exporter] = []
        self._lossy: list[LossyProxy] = []

    def aggregator(self, name: str = "aggregator", **kw: Any) -> AggregatorProc:
        return AggregatorProc(self, name, **kw)

    def sidecar(self, name: str, **kw: Any) -> SidecarProc:
        return SidecarProc(self, name, **kw)

    def exporter(self, sidecar: SidecarProc, **kw: Any) -> Exporter:
        e = Exporter(sidecar.grpc_port, **kw)
        self._exporters.append(e)
        return e

    def proxy(self, upstream_port: int, *, start: bool = True) -> TcpProxy:
        """A killable TCP proxy on a free loopback port to ``upstream_port``."""
        p = TcpProxy(free_port(), upstream_port=upstream_port)
        self._proxies.append(p)
        if start:
            self.bg.run(p.start())
        return p

    def proxy_up(self, p: TcpProxy) -> None:
        self.bg.run(p.start())

    def proxy_down(self, p: TcpProxy) -> None:
        self.bg.run(p.kill())

    def lossy_proxy(self, upstream_port: int) -> LossyProxy:
        p = LossyProxy(upstream_port)
        self._lossy.append(p)
        self.bg.run(p.start())
        return p

    def stalling_aggregator(self) -> StallingAggregator:
        async def make() -> StallingAggregator:
            rec = StallingAggregator()
            await rec.start()
            return rec

        rec = self.bg.run(make())
        self._recorders.append(rec)
        return rec

    def amqp_queue(self) -> AmqpQueue:
        q = AmqpQueue(self.bg).start()
        self._queues.append(q)
        return q

    def close(self) -> None:
        for e in self._exporters:
            with contextlib.suppress(Exception):
                e.stop()
        for c in self.children:  # only our own children, by their own pids
            if c.proc is not None and c.proc.poll() is None:
                c.proc.kill()
            if c.proc is not None:
                with contextlib.suppress(Exception):
                    c.proc.wait(15)
        for p in self._proxies:
            with contextlib.suppress(Exception):
                self.bg.run(p.kill(), 10)
        for lp in self._lossy:
            with contextlib.suppress(Exception):
                self.bg.run(lp.stop(), 10)
        for r in self._recorders:
            if isinstance(r, StallingAggregator):
                self.bg.call(r.gate.set)
            with contextlib.suppress(Exception):
                self.bg.run(r.stop(), 10)
        for q in self._queues:
            q.close()
        self.bg.close()


@pytest.fixture
def faults(tmp_path: Path) -> Iterator[FaultEnv]:
    env = FaultEnv(tmp_path)
    try:
        yield env
    finally:
        env.close()


# -- observed figures, for tests/faults/README.md -----------------------------------------------------

OBSERVED: list[tuple[str, dict[str, Any]]] = []


# -- servers of a test's own (tests/faults/servers.py) -------------------------------------------


@pytest.fixture
def own_rabbitmq() -> Iterator[OwnRabbitMQ]:
    missing = own_rabbitmq_missing()
    if missing:
        pytest.skip(missing)
    broker = OwnRabbitMQ()
    try:
        try:
            broker.start()
        except (AssertionError, RuntimeError, OSError) as e:
            pytest.skip(f"rabbitmq-server could not start a node of the test's own: {e}\n{broker.tail()}")
        yield broker
    finally:
        broker.close()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    missing = own_postgres_missing()
    if missing:
        pytest.skip(missing)
    pg = OwnPostgres()
    try:
        pg.start()
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE sentinel")
        yield pg
    finally:
        pg.close()


def observe(fault: str, **figures: Any) -> None:
    """Record a test's measured figures; printed at the end of the run (``-s`` or the summary)."""
    OBSERVED.append((fault, figures))
    print(f"\n[fault] {fault}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if OBSERVED:
        terminalreporter.section("fault suite: observed")
        for fault, figures in OBSERVED:
            terminalreporter.write_line(f"{fault}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def drained(sc: SidecarProc) -> bool:
    """The sidecar holds nothing: every row it made was forwarded or dropped (counted), none queued."""
    m = sc.metrics()
    if m("sentinel_sidecar_queue_batches") or m("sentinel_sidecar_spool_records"):
        return False
    if sc.mode == "store-and-forward":  # one batch per request, spooled before the answer: no open batch
        return True
    # sidecar mode: the open batch is sealed too (its rows are counted as LLM calls when extracted).
    return (m("sentinel_sidecar_forwarded_rows_total") + m("sentinel_sidecar_dropped_rows_total")
            >= m("sentinel_sidecar_llm_calls_total"))


def spool_report(sc: SidecarProc) -> tuple[int, int]:
    """(batches, rows) the sidecar found waiting in its spool at its latest start (from its log)."""
    found = re.findall(r"spool \S+: (\d+) batches \((\d+) rows\) waiting to be forwarded", sc.log())
    assert found, "the sidecar logs what its spool holds at start-up"
    return int(found[-1][0]), int(found[-1][1])
