"""Faults 15 and 16: the broker, then the database, of a cluster restarted under ingest (issue 17).

Two ``sentinel aggregator`` replicas in cluster mode and a sender that posts a batch every 50 ms
(rows of 8 services, so every batch is split over several partitions), each retried at the next
replica until it is answered 200, as a sidecar does.

- 15: a RabbitMQ node of the test's own (:class:`tests.faults.servers.OwnRabbitMQ`; skipped when it
  cannot start) is stopped in order (``rabbitmqctl stop``), started again, then SIGKILLed and
  started again; the database is a database of its own on the machine's PostgreSQL.
- 16: a PostgreSQL of the test's own (:class:`tests.faults.servers.OwnPostgres`) gets a fast
  shutdown, is started again, then an immediate shutdown (no checkpoint: crash recovery at the
  restart), started again; the broker is the machine's, under a queue prefix of the test's own.

Meanwhile every ingest answer is a 503 with ``Retry-After`` (never a 200: nothing can be published
or marked seen); afterwards every acknowledged row is analysed exactly once: per partition, the
checkpointed row count equals the rows acknowledged for it, and the (sidecar, seq) pairs its
checkpoint covers are exactly the acknowledged batches with rows in it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from aggregator.cluster.checkpoint import unpack
from aggregator.cluster.partition import partition_of
from sentinel import wire
from sentinel.model import FeatureBatch
from tests.conftest import pg_database
from tests.faults.conftest import Metrics, observe, wait_until
from tests.faults.servers import OwnPostgres, OwnRabbitMQ
from tests.test_alert_sinks_amqp import BROKER_URL, needs_broker
from tests.test_cluster_system import Replica, _owners, delete_queues
from tests.test_event_time import MSGPACK, _rows

pytestmark = pytest.mark.system

PARTITIONS = 8
SERVICES = [f"svc-{i}" for i in range(24)]
SIDECAR = "load"


@dataclass
class Answer:
    at: float
    status: int  # 0: no answer (connection error, timeout)
    retry_after: bool
    seconds: float
    text: str = ""


@dataclass
class Stream:
    """A batch every ``interval_s`` from a thread, each retried (round robin) until a replica answers 200."""

    replicas: list[Replica]
    interval_s: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    #: seq -> rows per partition, for every acknowledged batch.
    acked: dict[int, Counter[int]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cluster-sender", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the batch in flight is acknowledged (so every batch sent is either acked or never sent)."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(90)
        assert not self._thread.is_alive(), "the last batch was not acknowledged within 90 s"

    @property
    def acked_rows(self) -> int:
        return sum(sum(c.values()) for c in self.acked.values())

    def acked_since(self, t: float) -> int:
        return sum(1 for a in self.answers if a.at >= t and a.status == 200)

    def _run(self) -> None:
        seq = 0
        with httpx.Client(timeout=15) as client:
            while not self._stop.is_set():
                seq += 1
                services = SERVICES[seq % 3::3]
                rows = [r for s in services for r in _rows(s, time.time_ns(), 3, 0)]
                body = wire.encode(FeatureBatch.from_rows(rows), sidecar=SIDECAR, seq=seq)
                i = seq
                while True:
                    target = self.replicas[i % len(self.replicas)]
                    i += 1
                    t0 = time.monotonic()
                    try:
                        r = client.post(target.url + "/v1/ingest", content=body, headers=MSGPACK)
                    except httpx.HTTPError as e:
                        self.answers.append(Answer(t0, 0, False, time.monotonic() - t0, repr(e)))
                        time.sleep(0.1)
                        continue
                    self.answers.append(Answer(t0, r.status_code, "Retry-After" in r.headers,
                                               time.monotonic() - t0, r.text[:200]))
                    if r.status_code == 200:
                        self.acked[seq] = Counter(partition_of(s, PARTITIONS) for s in services for _ in range(3))
                        break
                    time.sleep(0.1)
                time.sleep(self.interval_s)


def _partitions(url: str) -> dict[int, tuple[int, set[int]]]:
    """Partition -> (rows its checkpoint counts, seqs of the sender its checkpoint covers)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT partition, rows, state FROM cluster_partitions").fetchall()
    out = {}
    for p, n, state in rows:
        counts, _ = unpack(bytes(state) if state is not None else None)
        out[int(p)] = (int(n), counts.seen.get(SIDECAR, set()))
    return out


def _expected(stream: Stream) -> dict[int, tuple[int, set[int]]]:
    out: dict[int, tuple[int, set[int]]] = {}
    for seq, per in stream.acked.items():
        for p, n in per.items():
            rows, seqs = out.get(p, (0, set()))
            seqs.add(seq)
            out[p] = (rows + n, seqs)
    return out


def _exactly_once(url: str, stream: Stream) -> bool:
    with contextlib.suppress(psycopg.Error):
        got = {p: v for p, v in _partitions(url).items() if v[0] or v[1]}
        return got == _expected(stream)
    return False


def _outage(stream: Stream, down: Callable[[], None], up: Callable[[], float], down_s: float) -> dict[str, Any]:
    """``down()``, ``down_s`` of traffic, ``up()``; the answers while down, and how soon batches were acked."""
    t_down = time.monotonic()
    down()
    stopped = time.monotonic()
    time.sleep(down_s)
    t_up = time.monotonic()
    boot_s = up()
    back = time.monotonic()
    wait_until(lambda: stream.acked_since(back) >= 5, 60, "batches acknowledged again after the restart")
    first = min(a.at for a in stream.answers if a.at >= back and a.status == 200)
    # Every request sent while the server was down, whenever it was answered.
    during = [a for a in stream.answers if stopped <= a.at < t_up]
    assert during, "no answer while the server was down"
    bad = [a for a in during if a.status != 503 or not a.retry_after]
    assert not bad, f"answers other than 503 with Retry-After while down: {bad[:5]}"
    return {"stop_s": round(stopped - t_down, 2), "answers_503": len(during),
            "slowest_503_s": round(max(a.seconds for a in during), 2), "boot_s": round(boot_s, 1),
            "acked_again_after_s": round(first - back, 2),
            "causes": sorted({a.text.split(":", 2)[-1][:60].strip() for a in during})[:3]}


def _replicas(tmp: Path, settings: dict[str, Any], url: str) -> list[Replica]:
    replicas = [Replica(tmp, f"r{i}", settings) for i in range(2)]
    for r in replicas:
        r.child.start()
    wait_until(lambda: all(r.ready() for r in replicas), 60, "two replicas ready")
    wait_until(lambda: sorted(_owners(url, 2.5).values()) == ["r0"] * 4 + ["r1"] * 4, 60, "4 partitions each")
    return replicas


def _settings(store_url: str, amqp_url: str, prefix: str) -> dict[str, Any]:
    return {"store_url": store_url,
            "cluster": {"amqp_url": amqp_url, "queue_prefix": prefix, "partitions": PARTITIONS,
                        "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": 2.5, "checkpoint_interval_s": 0.5},
            "forest": {"enabled": False}, "alerts": {"group_wait_s": 1}}


def _finish(url: str, stream: Stream, replicas: list[Replica]) -> dict[str, Any]:
    """Stop the sender; every acknowledged row analysed exactly once, and still once a while later."""
    stream.stop()
    waited = wait_until(lambda: _exactly_once(url, stream), 60,
                        f"every acknowledged row analysed exactly once ({stream.acked_rows} rows)")
    wait_until(lambda: sorted(_owners(url, 2.5).values()) == ["r0"] * 4 + ["r1"] * 4, 30, "4 partitions each again")
    time.sleep(2)  # four checkpoint intervals: a late redelivery would show as a count moving on
    assert _exactly_once(url, stream), "counts moved after everything was analysed"
    replayed = skipped = 0.0
    for r in replicas:
        m = Metrics(httpx.get(r.url + "/metrics", timeout=5).text)
        replayed += m("sentinel_aggregator_cluster_replayed_rows_total")
        skipped += m("sentinel_aggregator_cluster_skipped_rows_total")
    for r in replicas:
        assert r.child.stop(20) == 0, r.child.tail()
    return {"acked_batches": len(stream.acked), "acked_rows": stream.acked_rows, "analysed_after_s": round(waited, 2),
            "replayed_rows": int(replayed), "skipped_rows": int(skipped),
            "answers": len(stream.answers), "refused": sum(1 for a in stream.answers if a.status != 200)}


def _two_outages(tmp: Path, settings: dict[str, Any], url: str, what: str,
                 outages: list[tuple[str, Callable[[], None], Callable[[], float], float]]) -> None:
    replicas = _replicas(tmp, settings, url)
    try:
        stream = Stream(replicas)
        stream.start()
        wait_until(lambda: len(stream.acked) >= 40, 30, "40 batches acknowledged before the fault")
        figures = []
        for name, down, up, down_s in outages:
            figures.append((name, {"down_s": down_s, **_outage(stream, down, up, down_s)}))
            time.sleep(2)
        totals = _finish(url, stream, replicas)
        for name, f in figures:
            observe(f"cluster {what} restart ({name})", **f)
        observe(f"cluster {what} restarts, totals", **totals)
    finally:
        for r in replicas:
            r.child.stop(10)


def test_broker_restart_under_cluster_ingest_loses_nothing(tmp_path: Path, own_rabbitmq: OwnRabbitMQ) -> None:
    with pg_database() as url:
        _two_outages(tmp_path, _settings(url, own_rabbitmq.url, "sentinel.fault15"), url, "broker",
                     [("rabbitmqctl stop", own_rabbitmq.stop, own_rabbitmq.start, 5),
                      ("SIGKILL", own_rabbitmq.kill, own_rabbitmq.start, 5)])


@needs_broker
def test_postgresql_restart_under_cluster_ingest_loses_nothing(tmp_path: Path, own_postgres: OwnPostgres) -> None:
    url = own_postgres.url("sentinel")
    prefix = f"sentinel.fault16.{uuid.uuid4().hex[:8]}"
    try:
        _two_outages(tmp_path, _settings(url, BROKER_URL, prefix), url, "PostgreSQL",
                     [("fast shutdown", own_postgres.stop, own_postgres.start, 20),
                      # SIGQUIT: no checkpoint, WAL replayed at the next start (a crash, as far as data goes)
                      ("immediate shutdown", lambda: own_postgres.stop(signal.SIGQUIT), own_postgres.start, 5)])
    finally:
        delete_queues(BROKER_URL, prefix, PARTITIONS)
