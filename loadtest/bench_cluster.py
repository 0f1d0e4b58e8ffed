"""Cluster benchmark (issue 17): rows/s ingested and analysed by 1 replica vs 2, and the handoff time.

    python -m loadtest.bench_cluster [--quick] [--json PATH] [--batches 300] [--rows-per-batch 1024]

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
   replica again (polled in ``cluster_partitions`` joined to the heartbeats).

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
from loadtest.bench_aggregator import machine_info
from loadtest.procs import Child, free_port
from loadtest.text import say_figures
from sentinel import wire
from sentinel.model import COLUMNS, FeatureBatch

PG_ADMIN_URL = os.environ.get("SENTINEL_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("SENTINEL_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SERVICES = [f"bench-svc-{i:02d}" for i in range(64)]
PARTITIONS = 32
TTL_S = 3.0
TARGET_RATIO = 1.8


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


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = bodies(args.batches, args.rows_per_batch)
    warmup = bodies(max(4, args.batches // 20), args.rows_per_batch, seed=8, sidecar="warmup")
    tmp = Path(tempfile.mkdtemp(prefix="bench_cluster_"))
    one = await phase(1, work, warmup, concurrency=args.concurrency, kill=False, tmp=tmp)
    two = await phase(2, work, warmup, concurrency=args.concurrency, kill=True, tmp=tmp)
    return {"one_replica": one, "two_replicas": two, "ratio": round(two["rows_per_s"] / one["rows_per_s"], 2),
            "target_ratio": TARGET_RATIO, "handoff_s": two.get("handoff_s"), "partitions": PARTITIONS,
            "heartbeat_ttl_s": TTL_S, "rows_per_batch": args.rows_per_batch, "machine": machine_info()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_cluster", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run (40 batches)")
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--rows-per-batch", type=int, default=1024)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args(argv)
    if args.quick:
        args.batches = 40
    result = asyncio.run(run(args))
    for key in ("one_replica", "two_replicas"):
        say_figures(key.replace("_", " "), result[key], print)
    say_figures("", {k: v for k, v in result.items() if not isinstance(v, dict)}, print)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
