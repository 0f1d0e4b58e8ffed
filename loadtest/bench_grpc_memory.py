"""Sidecar RSS under large concurrent OTLP/gRPC exports: all at once versus one at a time.

    .venv/bin/python -m loadtest.bench_grpc_memory [--requests 96] [--spans 6500]

Starts a real aggregator and a real sidecar (``python -m sentinel.cli …`` on free loopback ports),
sends ``--requests`` exports of ``--spans`` spans (6,500 spans ≈ 3.7 MiB, just under the default
``grpc_max_recv_bytes`` of 4 MiB), each on its own channel, first all concurrently and then one at
a time against a fresh pair, and prints the sidecar's RSS before, at its peak (sampled every 20 ms)
and 2 s after, with the answers. The ratio of the two peaks is what concurrency adds over what
handling the accepted requests costs anyway (issue 15, case 5; sidecar/README.md, Metrics).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx

from loadtest.procs import child_env, free_port, psutil
from loadtest.spans import build_trace_request

MiB = 2**20
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _start(argv: list[str], log: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "sentinel.cli", *argv], env=child_env(),
                                stdout=subprocess.DEVNULL, stderr=out)


def _wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready within 60 s")


def run(requests: int, concurrency: int, body: bytes) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="bench-grpc-memory-")
    agg_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    agg = _start(["aggregator", "--listen", f"127.0.0.1:{agg_port}", "--data-dir", tmp], f"{tmp}/aggregator.log")
    sc = _start(["sidecar", "--sidecar-id", "bench", "--aggregator-url", f"http://127.0.0.1:{agg_port}",
                 "--grpc-listen", f"127.0.0.1:{grpc_port}", "--http-listen", "127.0.0.1:0",
                 "--metrics-listen", f"127.0.0.1:{metrics_port}"], f"{tmp}/sidecar.log")
    try:
        _wait_ready(f"http://127.0.0.1:{agg_port}/readyz")
        _wait_ready(f"http://127.0.0.1:{metrics_port}/readyz")
        time.sleep(1)
        ps = psutil.Process(sc.pid)
        rss: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss.append(int(ps.memory_info().rss))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        start = int(ps.memory_info().rss)
        sampler.start()
        codes: list[str] = []

        def export(_: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{grpc_port}",
                                       options=[("grpc.max_send_message_length", 8 * MiB)]) as ch:
                try:
                    ch.unary_unary(EXPORT, None, None)(body, timeout=120)
                    codes.append("OK")
                except grpc.RpcError as e:
                    codes.append(e.code().name)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(export, range(requests)))
        wall = time.perf_counter() - t0
        time.sleep(2)
        stop.set()
        sampler.join()
        return {"concurrency": concurrency, "answers": dict(Counter(codes)), "wall_s": wall,
                "rss_start": start, "rss_peak": max(rss), "rss_after": int(ps.memory_info().rss)}
    finally:
        for p in (sc, agg):
            p.terminate()
        for p in (sc, agg):
            p.wait(30)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--spans", type=int, default=6_500)
    args = ap.parse_args(argv)
    body = build_trace_request(args.spans, rng=random.Random(7)).SerializeToString()
    print(f"{args.requests} exports of {args.spans} spans ({len(body) / MiB:.1f} MiB each), one channel each")
    results = [run(args.requests, args.requests, body), run(args.requests, 1, body)]
    for r in results:
        print(f"concurrency {r['concurrency']:>3}: answers {r['answers']}, {r['wall_s']:.1f} s; sidecar RSS "
              f"{r['rss_start'] / MiB:.0f} -> peak {r['rss_peak'] / MiB:.0f} -> after {r['rss_after'] / MiB:.0f} MiB")
    at_once, one_by_one = results
    print(f"peak all at once / peak one at a time: {at_once['rss_peak'] / one_by_one['rss_peak']:.2f}")


if __name__ == "__main__":
    main()
