"""Cluster benchmark (issue 17): rows/s ingested and analysed by 1 replica vs 2, and the handoff time.

    python -m loadtest.bench_cluster [--quick] [--json PATH] [--batches 300] [--rows-per-batch 1024] [--detection-only]

Needs the machine's RabbitMQ (127.0.0.1:5672, guest/guest) and PostgreSQL (127.0.0.1:5432, trust):
each phase gets a PostgreSQL database and a queue prefix of its own, both removed at the end.

1. **one replica**: ``sentinel aggregator`` in cluster mode pinned to core 0 (CPU affinity set before
   exec, as taskset does); this process POSTs pre-encoded batches (synthetic calls of 64 services,
   one service per batch as a pod's sidecar sends them) to ``/v1/ingest`` with several in flight,
   each retried on 503, and the phase ends when the partitions' checkpointed row counts
   (``cluster_partitions.rows``) add up to every row acknowledged: rows/s = rows / (that moment - the first POST);
2. **two replicas**, pinned to cores 0 and 1, batches round robin over both: the same measure, and
   the ratio to (1) (target >= 1.8);
3. **handoff**: one of the two is SIGKILLed; the seconds until every partition is owned by the live
   replica again (polled in ``cluster_partitions`` joined to the heartbeats);
4. **detection during a handoff** (two fresh replicas, ``error_burst.window_s`` 1 and ``lateness_s``
   1): normal calls of one service per partition every 0.5 s (they close every partition's
   windows), and an incident every 0.5 s — an error burst (40 calls, 60 % errors) on a service of
   its own; 12 s in, one replica is SIGKILLed and injection goes on for 14 s (normal calls until every
   incident is alerted). Detection latency = from the burst's 200 to its alert in the surviving
   replica's ``GET /api/v1/alerts`` (polled every 100 ms): p50 / p95 / max for the incidents
   injected up to ``STEADY_MARGIN_S`` before the kill (steady), from then until the handoff completed
   (during the handoff; also only those of the dead replica's partitions) and after it, and how many
   were missed.

``--capacity`` runs a phase 0 first: PostgreSQL dedup inserts/s (ingest's statement, one transaction
per group of 1, 16 or 64, on 1 or 4 connections) and RabbitMQ persistent confirms/s (1 KiB and a
1,024-row batch's body, 1 or 32 in flight, 1 or 4 connections; at most ``CONFIRM_MAX_BYTES`` each,
queues deleted) — the figures docs/cluster-capacity.md projects a fleet from. ``--detection-only``
and ``--skip-detection`` run parts.

On a machine whose cores are shared (RabbitMQ, PostgreSQL and this client run on the same cores as
the replicas) the ratio is a lower bound of what two dedicated cores give; the JSON records the load
average.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import numpy as np
import psycopg

from aggregator.cluster.db import SCHEMA
from aggregator.cluster.partition import partition_of
from loadtest.bench_aggregator import machine_info
from loadtest.procs import Child, free_port
from loadtest.report import percentile
from loadtest.text import say_figures
from sentinel import wire
from sentinel.model import COLUMNS, FeatureBatch

PG_ADMIN_URL = os.environ.get("SENTINEL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("SENTINEL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SERVICES = [f"bench-svc-{i:02d}" for i in range(64)]
PARTITIONS = 32
TTL_S = 3.0
TARGET_RATIO = 1.8
#: Normal calls of every partition this often in phase 4: each is one message per partition, and a partition's
#: windows close only when its own rows move its watermark on (lateness_s after the window's end).
NORMAL_INTERVAL_S = 0.5
#: Bytes published per confirm measurement at most (phase 0), on the shared broker.
CONFIRM_MAX_BYTES = 48 << 20
#: Incidents injected within this before the kill count as "during the handoff" (their detection overlaps it).
STEADY_MARGIN_S = 4.0


def bodies(batches: int, rows_per_batch: int, seed: int = 7, sidecar: str = "bench") -> list[tuple[bytes, int]]:
    """Wire bodies of synthetic calls (every column the detectors read), with their row counts.

    As sidecars send them: one sidecar per pod, so each batch holds the calls of one service (of 64).
    """
    rng = np.random.default_rng(seed)
    t0 = time.time_ns()
    out = []
    for b in range(batches):
        rows = []
        for i in range(rows_per_batch):
            v: dict[str, Any] = dict.fromkeys(COLUMNS)
            tokens_in, tokens_out = int(rng.integers(50, 2000)), int(rng.integers(10, 800))
            v.update(time_unix_nano=t0 + (b * rows_per_batch + i) * 1_000_000,
                     service=SERVICES[b % len(SERVICES)], request_model="gpt-4o", operation="chat",
                     provider="openai", latency_ms=float(rng.lognormal(6.0, 0.4)), ttft_ms=float(rng.lognormal(5, 0.3)),
                     input_tokens=tokens_in, output_tokens=tokens_out, total_tokens=tokens_in + tokens_out,
                     cost_usd=tokens_in * 2.5e-6 + tokens_out * 1e-5, is_error=int(rng.random() < 0.01),
                     trace_id=f"{b:016x}{i:016x}", span_id=f"{i:016x}")
            rows.append(tuple(v[c] for c in COLUMNS))
        body = wire.encode(FeatureBatch.from_rows(rows), sidecar=f"{sidecar}-{b % len(SERVICES)}", seq=b)
        out.append((body, rows_per_batch))
    return out


@contextlib.contextmanager
def database() -> Iterator[str]:
    name = f"sentinel_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # polled before the replicas create them
            conn.execute(SCHEMA.encode())
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)".encode())


async def delete_queues(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for p in range(PARTITIONS):
            await channel.queue_delete(f"{prefix}.p{p}")


def analysed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(rows), 0) FROM cluster_partitions").fetchone()
    return int(row[0]) if row else 0


def owners(url: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT c.partition, c.owner FROM cluster_partitions c JOIN cluster_replicas r ON "
                            "r.replica = c.owner WHERE r.seen_at > now() - make_interval(secs => %s)",
                            (TTL_S,)).fetchall()
    return {int(p): str(o) for p, o in rows}


class Replica:
    def __init__(self, tmp: Path, name: str, cpu: int | None, settings: dict[str, Any]) -> None:
        self.port = free_port()
        self.name = name
        config = tmp / f"{name}.yaml"
        own = {**settings, "cluster": {**settings["cluster"], "replica_id": name}}
        config.write_text(json.dumps({"aggregator": own}))
        self.child = Child(name, [sys.executable, "-m", "sentinel.cli", "aggregator", "--listen",
                                  f"127.0.0.1:{self.port}", "--grpc-listen", "", "--data-dir", str(tmp / name),
                                  "--log-level", "warning", "--config", str(config)], log_dir=tmp, cpu=cpu)
        self.child.env = {k: v for k, v in self.child.env.items() if not k.startswith("SENTINEL_")}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def wait(cond: Any, timeout_s: float, what: str) -> float:
    t0 = time.monotonic()
    while not await asyncio.to_thread(cond):
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


async def post_all(urls: list[str], work: list[tuple[bytes, int]], concurrency: int) -> int:
    """POST every body (round robin over ``urls``, retried on 503 or a refused connection); rows acknowledged."""
    queue: asyncio.Queue[tuple[int, bytes, int]] = asyncio.Queue()
    for i, (body, n) in enumerate(work):
        queue.put_nowait((i, body, n))
    acked = 0

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal acked
        while not queue.empty():
            i, body, n = queue.get_nowait()
            for attempt in range(200):
                try:
                    r = await http.post(urls[(i + attempt) % len(urls)] + "/v1/ingest", content=body,
                                        headers={"Content-Type": wire.CONTENT_TYPE})
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
                    continue
                if r.status_code == 200:
                    acked += n if r.json()["status"] == "accepted" else 0  # a retry answered duplicate: counted
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"batch {i} not acknowledged")

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return acked


async def phase(n: int, work: list[tuple[bytes, int]], warmup: list[tuple[bytes, int]], *, concurrency: int,
                kill: bool, tmp: Path) -> dict[str, Any]:
    prefix = f"sentinel.bench.{uuid.uuid4().hex[:8]}"
    with database() as url:
        settings = {"store_url": url,
                    "cluster": {"amqp_url": AMQP_URL, "queue_prefix": prefix, "partitions": PARTITIONS,
                                "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": TTL_S, "prefetch": 512}}
        replicas = [Replica(tmp, f"{prefix}-r{i}", i % (os.cpu_count() or 1), settings) for i in range(n)]
        try:
            for r in replicas:
                r.child.start()
            names = {r.name for r in replicas}
            await wait(lambda: len(owners(url)) == PARTITIONS and set(owners(url).values()) == names, 90,
                       f"{PARTITIONS} partitions over {n} replicas")
            urls = [r.url for r in replicas]
            warm = await post_all(urls, warmup, concurrency)
            await wait(lambda: analysed(url) == warm, 120, "the warm-up analysed")
            t0 = time.monotonic()
            acked = await post_all(urls, work, concurrency)
            ingest_s = time.monotonic() - t0
            await wait(lambda: analysed(url) == warm + acked, 600, "every row analysed")
            seconds = time.monotonic() - t0
            out: dict[str, Any] = {"replicas": n, "rows": acked, "seconds": round(seconds, 3),
                                   "rows_per_s": round(acked / seconds), "ingest_seconds": round(ingest_s, 3)}
            if kill and n > 1:
                victim = replicas[0]
                assert victim.child.proc is not None
                victim.child.proc.kill()  # SIGKILL, this child only
                victim.child.proc.wait(10)
                live = names - {victim.name}
                out["handoff_s"] = round(await wait(
                    lambda: len(owners(url)) == PARTITIONS and set(owners(url).values()) == live, 60,
                    "the killed replica's partitions taken over"), 2)
            return out
        finally:
            for r in replicas:
                r.child.stop(20)
            await delete_queues(prefix)


def calls(service: str, n: int, errors: int, t_ns: int, seq: int) -> list[tuple[Any, ...]]:
    """``n`` calls of ``service`` at ``t_ns`` (1 ns apart: one error-burst window), the first ``errors`` failed."""
    rows = []
    for i in range(n):
        v: dict[str, Any] = dict.fromkeys(COLUMNS)
        v.update(time_unix_nano=t_ns + i, service=service, request_model="gpt-4o", operation="chat", provider="openai",
                 latency_ms=400.0, input_tokens=100, output_tokens=50, total_tokens=150, cost_usd=1e-3,
                 is_error=int(i < errors), trace_id=f"{seq:016x}{i:016x}", span_id=f"{i:016x}")
        rows.append(tuple(v[c] for c in COLUMNS))
    return rows


def one_service_per_partition() -> list[str]:
    """A service name of each partition: normal calls of these advance every partition's watermark."""
    names: dict[int, str] = {}
    i = 0
    while len(names) < PARTITIONS:
        names.setdefault(partition_of(f"bench-bg-{i}", PARTITIONS), f"bench-bg-{i}")
        i += 1
    return [names[p] for p in range(PARTITIONS)]


def summary(latencies: list[float], injected: int) -> dict[str, Any]:
    def q(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {"incidents": injected, "detected": len(latencies), "p50_s": q(percentile(latencies, 50)),
            "p95_s": q(percentile(latencies, 95)), "max_s": q(max(latencies) if latencies else None)}


async def detection(tmp: Path, *, warm_s: float = 12.0, after_s: float = 14.0) -> dict[str, Any]:
    """Phase 4: incidents injected continuously while one of two replicas is SIGKILLed; their detection latency."""
    prefix = f"sentinel.bench.{uuid.uuid4().hex[:8]}"
    with database() as url:
        settings = {"store_url": url,
                    "cluster": {"amqp_url": AMQP_URL, "queue_prefix": prefix, "partitions": PARTITIONS,
                                "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": TTL_S},
                    "detectors": {"error_burst": {"window_s": 1.0, "lateness_s": 1.0}},
                    # One alert per incident service (a shared provider would group them into one).
                    "alerts": {"group_wait_s": 0, "group_across": {}}}
        replicas = [Replica(tmp, f"{prefix}-d{i}", i % (os.cpu_count() or 1), settings) for i in range(2)]
        background = one_service_per_partition()
        acked: dict[str, float] = {}  # incident service -> when its burst was acknowledged (monotonic)
        seen: dict[str, float] = {}
        stop, stop_incidents = asyncio.Event(), asyncio.Event()
        try:
            for r in replicas:
                r.child.start()
            names = {r.name for r in replicas}
            await wait(lambda: len(owners(url)) == PARTITIONS and set(owners(url).values()) == names, 90,
                       f"{PARTITIONS} partitions over 2 replicas")
            victim, survivor = replicas
            urls = [r.url for r in replicas]
            seqs = iter(range(1, 1 << 62))

            async def post(http: httpx.AsyncClient, rows: list[tuple[Any, ...]], sidecar: str) -> None:
                seq = next(seqs)
                body = wire.encode(FeatureBatch.from_rows(rows), sidecar=sidecar, seq=seq)
                for attempt in range(400):  # round robin, the dead replica included, as sidecars keep it
                    try:
                        r = await http.post(urls[(seq + attempt) % len(urls)] + "/v1/ingest", content=body,
                                            headers={"Content-Type": wire.CONTENT_TYPE})
                        if r.status_code == 200:
                            return
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)
                raise RuntimeError(f"{sidecar} batch {seq} not acknowledged")

            async def normal(http: httpx.AsyncClient) -> None:
                while not stop.is_set():
                    now = time.time_ns()
                    await post(http, [r for s in background for r in calls(s, 2, 0, now, 0)], "bench-bg")
                    await asyncio.sleep(NORMAL_INTERVAL_S)

            async def incidents(http: httpx.AsyncClient) -> None:
                k = 0
                while not stop_incidents.is_set():
                    service = f"bench-incident-{k}"
                    k += 1
                    await post(http, calls(service, 40, 24, time.time_ns(), k), "bench-incidents")
                    acked[service] = time.monotonic()
                    await asyncio.sleep(0.5)

            async def poll(http: httpx.AsyncClient) -> None:
                while True:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        r = await http.get(survivor.url + "/api/v1/alerts", params={"limit": 1000})
                        body = r.json()
                        now = time.monotonic()
                        for a in body["alerts"] if isinstance(body, dict) else body:
                            if a.get("anomaly_type") == "error_burst":
                                seen.setdefault(str(a.get("service_name")), now)
                    await asyncio.sleep(0.1)

            async with httpx.AsyncClient(timeout=30) as http:
                tasks = [asyncio.create_task(f(http)) for f in (normal, incidents)]
                poller = asyncio.create_task(poll(http))
                await asyncio.sleep(warm_s)
                assert victim.child.proc is not None
                before = await asyncio.to_thread(owners, url)
                victim.child.proc.kill()  # SIGKILL, this child only
                killed = time.monotonic()
                handoff = await wait(lambda: len(owners(url)) == PARTITIONS and set(owners(url).values()) == {
                    survivor.name}, 60, "the killed replica's partitions taken over")
                await asyncio.sleep(max(0.0, after_s - (time.monotonic() - killed)))
                stop_incidents.set()
                await tasks[1]
                # Normal calls go on: they close the last incidents' windows.
                with contextlib.suppress(RuntimeError):
                    await wait(lambda: set(acked) <= set(seen), 30, "every incident alerted")
                stop.set()
                await tasks[0]
                poller.cancel()
            # Incidents injected up to one steady detection time before the kill are detected during it too.
            steady_until, handoff_end = killed - STEADY_MARGIN_S, killed + handoff

            def phase_of(t: float) -> str:
                return "steady" if t < steady_until else "during_handoff" if t < handoff_end else "after_handoff"

            groups: dict[str, list[float]] = {"steady": [], "during_handoff": [], "after_handoff": []}
            injected = dict.fromkeys(groups, 0)
            for s, t in acked.items():
                injected[phase_of(t)] += 1
                if s in seen:
                    groups[phase_of(t)].append(seen[s] - t)
            victims = [seen[s] - t for s, t in acked.items()
                       if s in seen and phase_of(t) == "during_handoff" and before.get(partition_of(s, PARTITIONS))
                       == victim.name]
            trace = sorted((round(t - killed, 2), round(seen[s] - t, 2) if s in seen else None,
                            before.get(partition_of(s, PARTITIONS), "")[-2:]) for s, t in acked.items())
            return {"handoff_s": round(handoff, 2), "trace": trace,
                    **{k: summary(v, injected[k]) for k, v in groups.items()},
                    "during_handoff_killed_partitions": summary(victims, len(victims)),
                    "missed": len(set(acked) - set(seen)),
                    "missed_at_s": sorted(round(t - killed, 2) for s, t in acked.items() if s not in seen),
                    "missed_partitions": sorted(partition_of(s, PARTITIONS) for s in acked if s not in seen),
                    "settings": "error_burst window 1 s, lateness 1 s; incident every 0.5 s"}
        finally:
            for r in replicas:
                r.child.stop(20)
            await delete_queues(prefix)


async def dedup_rate(url: str, group: int, connections: int, seconds: float) -> float:
    """(sidecar, seq) pairs/s inserted as ingest does: per group one transaction, one INSERT per batch, commit."""
    done = 0
    deadline = time.monotonic() + seconds

    async def one(c: int) -> None:
        nonlocal done
        seq = 0
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                async with conn.transaction():
                    for _ in range(group):
                        seq += 1
                        await conn.execute("INSERT INTO cluster_dedup (sidecar, seq, received_at) VALUES (%s, %s, %s)"
                                           " ON CONFLICT DO NOTHING RETURNING 1", (f"cap-{c}", seq, time.time_ns()))
                done += group

    t0 = time.monotonic()
    await asyncio.gather(*(one(c) for c in range(connections)))
    return done / (time.monotonic() - t0)


async def confirm_rate(prefix: str, body: bytes, in_flight: int, connections: int, seconds: float) -> float:
    """Persistent messages/s confirmed by the broker, ``in_flight`` awaited together per channel (as ingest
    publishes a group's parts), to a durable queue of this benchmark's own. At most ``CONFIRM_MAX_BYTES``
    are published (the broker is shared: its memory and disk alarms must not go off); the queues are
    deleted after."""
    done = 0
    deadline = time.monotonic() + seconds
    limit = CONFIRM_MAX_BYTES // len(body) // connections

    async def one(c: int) -> None:
        nonlocal done
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = f"{prefix}.p{c}"
            await channel.declare_queue(queue, durable=True)
            sent = 0
            while time.monotonic() < deadline and sent < limit:
                sent += in_flight
                await asyncio.gather(*(channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue)
                    for _ in range(in_flight)))
                done += in_flight

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(one(c) for c in range(connections)))
        return done / (time.monotonic() - t0)
    finally:
        await delete_queues(prefix)


async def capacity(rows_per_batch: int, seconds: float = 5.0) -> dict[str, Any]:
    """Phase 0: the two shared services' rates on this machine, for the fleet projection
    (aggregator/cluster/CAPACITY.md): dedup inserts per group size, confirms per message size."""
    out: dict[str, Any] = {}
    with database() as url:
        for group, conns in ((1, 1), (16, 1), (64, 1), (16, 4)):
            out[f"dedup_pairs_per_s_group{group}_conn{conns}"] = round(await dedup_rate(url, group, conns, seconds))
    prefix = f"sentinel.bench.{uuid.uuid4().hex[:8]}"
    batch = bodies(1, rows_per_batch)[0][0]
    for name, body in (("1KiB", b"x" * 1024), (f"{len(batch) // 1024}KiB", batch)):
        for in_flight, conns in ((1, 1), (32, 1), (32, 4)):
            rate = await confirm_rate(prefix, body, in_flight, conns, seconds)
            out[f"confirms_per_s_{name}_inflight{in_flight}_conn{conns}"] = round(rate)
    out["batch_body_bytes"] = len(batch)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = bodies(args.batches, args.rows_per_batch)
    warmup = bodies(max(4, args.batches // 20), args.rows_per_batch, seed=8, sidecar="warmup")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    out: dict[str, Any] = {}
    if args.capacity:
        out["capacity"] = await capacity(args.rows_per_batch)
    if not args.detection_only:
        one = await phase(1, work, warmup, concurrency=args.concurrency, kill=False, tmp=tmp)
        two = await phase(2, work, warmup, concurrency=args.concurrency, kill=True, tmp=tmp)
        out |= {"one_replica": one, "two_replicas": two, "ratio": round(two["rows_per_s"] / one["rows_per_s"], 2),
               "target_ratio": TARGET_RATIO, "handoff_s": two.get("handoff_s")}
    if not args.skip_detection:
        det = await detection(tmp)
        out.update({"detection": det, "detection_p95_steady_s": det["steady"]["p95_s"],
                    "detection_p95_during_handoff_s": det["during_handoff"]["p95_s"],
                    "detection_missed": det["missed"]})
    out.update({"partitions": PARTITIONS, "heartbeat_ttl_s": TTL_S, "rows_per_batch": args.rows_per_batch,
                "machine": machine_info()})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_cluster", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run (40 batches)")
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--rows-per-batch", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--detection-only", action="store_true", help="only phase 4 (detection during a handoff)")
    p.add_argument("--skip-detection", action="store_true", help="leave phase 4 out")
    p.add_argument("--capacity", action="store_true", help="first phase 0: PostgreSQL dedup insert and RabbitMQ "
                   "confirm rates on this machine")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = 40
    result = asyncio.run(run(args))
    for key in ("one_replica", "two_replicas"):
        if key in result:
            say_figures(key.replace("_", " "), result[key], print)
    if "capacity" in result:
        say_figures("capacity of the shared services (phase 0)", result["capacity"], print, key_width=44)
    for key in ("steady", "during_handoff", "during_handoff_killed_partitions", "after_handoff"):
        if "detection" in result:
            say_figures(f"detection latency, {key.replace('_', ' ')}", result["detection"][key], print)
    say_figures("", {k: v for k, v in result.items() if not isinstance(v, dict)}, print)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
