"""Fault 11: hostile but well-formed input against real processes (issue 15, cases 4, 5 and 6).

Each request is legal and within its own limit; together they used to exhaust memory: 16
concurrent batches took the aggregator's analysis backlog to 3,750,000 rows (bound 100,000),
batches of 20 rows carrying 140,000 local anomalies each were all confirmed, and 96 concurrent
4 MiB gRPC exports took a sidecar to 700 MiB. aggregator/README.md (503 of analysis_queue_max_rows,
max_anomalies_per_batch), sidecar/README.md (receive_max_bytes_in_flight).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from loadtest.spans import build_trace_request
from sentinel import wire
from sentinel.model import FeatureBatch, LocalAnomaly
from tests.faults.conftest import FaultEnv, observe
from tests.test_aggregator_ingest import _row

pytestmark = pytest.mark.system

MiB = 2**20
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _post_all(url: str, bodies: list[bytes]) -> list[int]:
    def post(body: bytes) -> int:
        with httpx.Client(timeout=60.0) as c:
            return c.post(url, content=body, headers={"Content-Type": wire.CONTENT_TYPE}).status_code
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(post, bodies))


def _sampling(read: Callable[[], float], stop: threading.Event, out: list[float]) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, OSError):
                out.append(read())
            time.sleep(0.05)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_concurrent_batches_and_anomaly_floods_stay_within_the_backlog_bound(faults: FaultEnv) -> None:
    bound, rows_per_batch = 100_000, 30_000
    agg = faults.aggregator().start()
    now = time.time_ns()
    batch = FeatureBatch.from_rows([_row(now, i) for i in range(rows_per_batch)])
    bodies = [wire.encode(batch, sidecar=f"sc-{i}", seq=1) for i in range(16)]
    backlog: list[float] = []
    stop = threading.Event()
    sampler = _sampling(lambda: agg.metrics()("sentinel_aggregator_analysis_backlog_rows"), stop, backlog)
    rss_start = agg.rss_bytes()
    codes = _post_all(f"{agg.url}/v1/ingest", bodies)
    anomaly = LocalAnomaly(metric="latency_ms", value=9e3, baseline=100.0, deviation=10.0, threshold=130.0,
                           sigma=890.0, method="zscore", service="checkout", model="gpt-4o", operation="chat",
                           trace_id="ab" * 16, span_id="cd" * 8, time_unix_nano=now)
    small = FeatureBatch.from_rows([_row(now, i) for i in range(20)])
    floods = [wire.encode(small, sidecar="flood", seq=s, anomalies=[anomaly] * 100_000) for s in range(3)]
    flood_codes = _post_all(f"{agg.url}/v1/ingest", floods)
    time.sleep(1)
    stop.set()
    sampler.join()
    m = agg.metrics()
    rss_peak = agg.rss_bytes()
    checked = sum(m("sentinel_aggregator_local_anomalies_total", outcome=o) for o in ("confirmed", "dismissed", "late"))
    over = m("sentinel_aggregator_local_anomalies_total", outcome="over_limit")
    assert agg.term() == 0
    accepted = codes.count(200)
    assert accepted >= 1 and set(codes) <= {200, 503}
    # Nothing accepted is lost (case 4): every batch answered 200 is in the journal, whole, and no
    # refused one is.
    stored = {(b.sidecar, b.rows) for b in agg.journal() if b.sidecar.startswith("sc-")}
    assert stored == {(f"sc-{i}", rows_per_batch) for i, c in enumerate(codes) if c == 200}
    assert max(backlog) <= bound + rows_per_batch, f"backlog peaked at {max(backlog):.0f} rows"
    assert set(flood_codes) <= {200, 503} and checked <= 3 * 1_000 and over == 99_000 * flood_codes.count(200)
    observe("11a 16 concurrent 30,000-row batches, then 3 batches of 20 rows with 100,000 anomalies each",
            accepted=accepted, refused_503=codes.count(503), accepted_stored=len(stored),
            backlog_peak_rows=int(max(backlog)),
            anomalies_checked=int(checked), anomalies_over_limit=int(over),
            rss_mib=f"{rss_start / MiB:.0f} -> {rss_peak / MiB:.0f}")


def test_concurrent_large_grpc_exports_stay_within_the_bytes_in_flight(faults: FaultEnv) -> None:
    agg = faults.aggregator().start()
    sc = faults.sidecar("big", aggregator_url=agg.url).start()
    request = build_trace_request(6_500, rng=random.Random(7)).SerializeToString()
    assert 3 * MiB < len(request) <= 4 * MiB
    rss: list[float] = []
    stop = threading.Event()
    sampler = _sampling(lambda: float(sc.rss_bytes()), stop, rss)
    rss_start = sc.rss_bytes()
    codes: list[str] = []
    lock = threading.Lock()

    def export(_: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{sc.grpc_port}",
                                   options=[("grpc.max_send_message_length", 8 * MiB)]) as ch:
            try:
                ch.unary_unary(EXPORT)(request, timeout=60)
                code = "OK"
            except grpc.RpcError as e:
                code = e.code().name
        with lock:
            codes.append(code)

    with ThreadPoolExecutor(96) as pool:
        list(pool.map(export, range(96)))
    time.sleep(2)
    stop.set()
    sampler.join()
    rss_after = sc.rss_bytes()
    assert sc.term() == 0
    assert agg.term() == 0
    peak = max(rss)
    # The peak is not bounded (a documented limit: the same exports one at a time still peak near
    # 400 MiB, loadtest/bench_grpc_memory.py; concurrency adds gRPC receiving on every connection at
    # once); what the budget bounds is the decoding and what stays: the memory comes back (it stayed
    # at 700 MiB before).
    assert rss_after - rss_start < 150 * MiB, f"RSS {rss_start / MiB:.0f} -> {rss_after / MiB:.0f} MiB after"
    assert codes.count("OK") <= 64 * MiB // len(request) * 2, "the rest were refused while the budget was full"
    assert set(codes) <= {"OK", "UNAVAILABLE", "RESOURCE_EXHAUSTED"} and "OK" in codes
    observe("11b 96 concurrent 4 MiB gRPC exports to one sidecar", ok=codes.count("OK"),
            unavailable=codes.count("UNAVAILABLE"), resource_exhausted=codes.count("RESOURCE_EXHAUSTED"),
            rss_mib=f"{rss_start / MiB:.0f} -> peak {peak / MiB:.0f} -> after {rss_after / MiB:.0f}")
