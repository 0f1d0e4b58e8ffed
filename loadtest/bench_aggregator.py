"""Aggregator benchmark: rows/s decoded, analysed, and ingested + analysed end to end, in one run.

    python -m loadtest.bench_aggregator [--quick] [--json PATH] [--rows-per-batch 1024] [--concurrency 8]

Three figures side by side, on the same rows (``loadtest/README.md``, "Aggregator benchmark"):

(a) **wire decode** -- :func:`sentinel.wire.decode` of pre-encoded wire bodies, one thread: the
    reference (nothing can ingest a batch faster than it can decode it);
(b) **analysis** -- the aggregator's consumers exactly as :class:`aggregator.app.Aggregator` builds
    them (``agg.analysis.consumers``: edge alerts, confirmer, baselines, quality, security,
    detectors, Isolation Forest, series, alert manager, with the summaries-mode views), fed
    pre-decoded :class:`~sentinel.wire.WireBatch` es on one thread, in the order ``Analysis`` runs
    them; in wall time and in the thread's CPU time (without the forest's fits on their own thread
    and other work on a shared machine), in all and per consumer;
(c) **end to end** -- ``sentinel aggregator`` as its own process pinned to one core; this process,
    on the other core, POSTs the pre-encoded bodies to ``/v1/ingest`` (several in flight) until the
    aggregator has *analysed* the last row. Nothing in the aggregator counts analysed rows, so the
    end is marked: after the last data batch is acknowledged, one more batch carries a local
    anomaly of method ``threshold`` for the service ``bench-marker-<n>``; the confirmer always
    turns it into a candidate, and since analysis runs batch after batch in commit order on one
    thread, the marker's candidate (polled at ``/api/v1/candidates?service=bench-marker-<n>``)
    appears only once every earlier batch has been through every consumer. The global baselines'
    ``calls`` (``/api/v1/baselines?region=global``) are checked against the rows sent afterwards.

The rows are real sidecar output: ``loadtest.spans`` GenAI requests run through the sidecar's
extraction and local detector, cut into batches of ``--rows-per-batch`` rows from 20 sidecar
ids, with event times rewritten to increase at ``--event-rows-per-s`` (the design's target load).
Each ratio is to (a). Target (the design): >= 100,000 rows/s ingested and scored on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from loadtest import targets
from loadtest.procs import Child, free_port, psutil
from loadtest.spans import build_trace_payloads
from loadtest.text import say_figures, say_table
from sentinel import wire
from sentinel.model import COLUMNS, FeatureBatch, LocalAnomaly
from sidecar.detectors.local import LocalDetectionConfig, LocalDetector
from sidecar.extract import ExtractConfig, Extractor
from sidecar.otlp_lite import parse_traces

__all__ = [
    "QUICK",
    "AggBenchSettings",
    "Corpus",
    "Stream",
    "build_corpus",
    "machine_info",
    "main",
    "measure_analysis",
    "measure_decode",
    "pick_cpus",
    "run_in_process",
]

CORPUS_SEED = 20_251_123
TARGET_ANALYSIS_ROWS_PER_S = targets.AGGREGATOR_ANALYSIS_ROWS_PER_S
TARGET_ROWS_PER_S = targets.AGGREGATOR_E2E_ROWS_PER_S
MARKER_SERVICE = "bench-marker"
MIB = 1024 * 1024
NS = 1_000_000_000


@dataclass(frozen=True)
class AggBenchSettings:
    corpus_payloads: int = 40  # loadtest.spans requests of spans_per_payload spans: the distinct rows
    spans_per_payload: int = 512
    rows_per_batch: int = 1024
    sidecars: int = 20  # sidecar ids the batches are spread over (round robin)
    event_rows_per_s: float = 100_000.0  # event-time density of the stream
    decode_seconds: float = 3.0
    decode_bodies: int = 64
    analysis_warmup_rows: int = 40_000  # untimed: forests trained, baselines and detectors past warm-up
    analysis_rows: int = 300_000
    e2e_warmup_rows: int = 40_000
    e2e_rows: int = 300_000
    concurrency: int = 8  # ingest POSTs in flight in (c)
    startup_timeout_s: float = 30.0
    drain_timeout_s: float = 180.0


QUICK = AggBenchSettings(corpus_payloads=10, decode_seconds=1.0, analysis_warmup_rows=10_000, analysis_rows=60_000,
                         e2e_warmup_rows=10_000, e2e_rows=60_000)


# ---------------------------------------------------------------------------------------------
# the rows


@dataclass
class Corpus:
    """Distinct feature rows as the sidecar makes them, and its local anomalies by row index."""

    batch: FeatureBatch
    anomalies: dict[int, list[LocalAnomaly]]
    spans: int


def build_corpus(payloads: int, spans_per_payload: int, seed: int = CORPUS_SEED) -> Corpus:
    """``loadtest.spans`` requests through the sidecar's extraction and local detector (defaults)."""
    extractor = Extractor(ExtractConfig())
    detector = LocalDetector(LocalDetectionConfig.from_mapping({}))
    parts: list[FeatureBatch] = []
    anomalies: dict[int, list[LocalAnomaly]] = {}
    offset = spans = 0
    for payload in build_trace_payloads(payloads, spans_per_payload, seed):
        result = extractor.extract(parse_traces(payload))
        spans += result.spans
        batch = FeatureBatch.from_rows(result.rows)
        found = detector.process(batch)
        where = {t: i for i, t in enumerate(batch.strings["trace_id"])}
        for a in found:
            anomalies.setdefault(offset + where.get(a.trace_id, 0), []).append(a)
        parts.append(batch)
        offset += batch.n
    return Corpus(FeatureBatch.concat(parts), anomalies, spans)


class Stream:
    """Wire batches cut from a corpus (cycled), event times increasing at ``event_rows_per_s``.

    Batch ``k`` comes from sidecar ``<prefix>-<k mod sidecars>`` with that sidecar's next seq; its
    rows are views of the corpus's columns except ``time_unix_nano``; the corpus's local anomalies
    on its rows come along, re-timed.
    """

    def __init__(self, corpus: Corpus, *, rows_per_batch: int, sidecars: int, event_rows_per_s: float,
                 start_unix_nano: int, prefix: str = "bench") -> None:
        if corpus.batch.n < rows_per_batch:
            raise ValueError(f"the corpus has {corpus.batch.n} rows, fewer than one batch ({rows_per_batch})")
        self.corpus = corpus
        self.rows_per_batch = rows_per_batch
        self.sidecars = sidecars
        self.step_ns = NS / event_rows_per_s
        self.start_unix_nano = start_unix_nano
        self.prefix = prefix
        self._pos = 0
        self._rows = 0
        self._k = 0
        self._seq = [0] * sidecars

    def next_batch(self, n: int | None = None) -> wire.WireBatch:
        n = self.rows_per_batch if n is None else n
        c = self.corpus.batch
        if self._pos + n > c.n:
            self._pos = 0
        lo, hi = self._pos, self._pos + n
        times = self.start_unix_nano + ((self._rows + np.arange(n, dtype=np.int64)) * self.step_ns).astype(np.int64)
        numeric = {k: (times if k == "time_unix_nano" else v[lo:hi]) for k, v in c.numeric.items()}
        strings = {k: v[lo:hi] for k, v in c.strings.items()}
        anomalies = [replace(a, time_unix_nano=int(times[i - lo]))
                     for i in range(lo, hi) for a in self.corpus.anomalies.get(i, ())]
        s = self._k % self.sidecars
        out = wire.WireBatch(sidecar=f"{self.prefix}-{s}", seq=self._seq[s],
                             batch=FeatureBatch(n=n, numeric=numeric, strings=strings), anomalies=anomalies,
                             created_unix_nano=int(times[-1]))
        self._seq[s] += 1
        self._k += 1
        self._pos = hi
        self._rows += n
        return out

    def take(self, rows: int) -> list[wire.WireBatch]:
        """Whole batches holding at least ``rows`` rows (at least one batch)."""
        out = [self.next_batch()]
        while sum(b.batch.n for b in out) < rows:
            out.append(self.next_batch())
        return out


def encode(b: wire.WireBatch) -> bytes:
    return wire.encode(b.batch, sidecar=b.sidecar, seq=b.seq, anomalies=b.anomalies,
                       created_unix_nano=b.created_unix_nano)


def marker_body(n: int, *, now_ns: int | None = None) -> bytes:
    """One row of service ``bench-marker-<n>`` with a ``threshold`` local anomaly: always a candidate."""
    now = time.time_ns() if now_ns is None else now_ns
    service = f"{MARKER_SERVICE}-{n}"
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(time_unix_nano=now, is_error=0, latency_ms=99_999.0, service=service, request_model="marker",
               operation="chat", trace_id=f"{n:032x}", span_id=f"{n:016x}")
    batch = FeatureBatch.from_rows([tuple(row[c] for c in COLUMNS)])
    anomaly = LocalAnomaly(metric="latency_ms", value=99_999.0, baseline=1000.0, deviation=float("nan"),
                           threshold=10_000.0, sigma=float("nan"), method="threshold", service=service,
                           model="marker", operation="chat", trace_id=f"{n:032x}", span_id=f"{n:016x}",
                           time_unix_nano=now)
    return wire.encode(batch, sidecar=f"{MARKER_SERVICE}-{n}", seq=0, anomalies=[anomaly], created_unix_nano=now)


# ---------------------------------------------------------------------------------------------
# (a) decode


def measure_decode(bodies: Sequence[bytes], rows_per_body: Sequence[int], seconds: float) -> dict[str, Any]:
    """Single-threaded :func:`sentinel.wire.decode` over ``bodies``, cycled for at least ``seconds``."""
    for b in bodies:  # warm-up, and a check that they decode
        wire.decode(b)
    round_rows = sum(rows_per_body)
    rounds = 0
    t0 = time.perf_counter()
    while True:
        for b in bodies:
            wire.decode(b)
        rounds += 1
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
    elapsed = now - t0
    total_bytes = sum(map(len, bodies))
    return {
        "rows_per_s": rounds * round_rows / elapsed,
        "batches_per_s": rounds * len(bodies) / elapsed,
        "mb_per_s": rounds * total_bytes / elapsed / 1e6,
        "rows": rounds * round_rows,
        "seconds": elapsed,
        "bytes_per_row": total_bytes / round_rows,
        "rows_per_batch": round_rows / len(bodies),
    }


# ---------------------------------------------------------------------------------------------
# (b) analysis


#: The name each consumer of ``Aggregator.analysis`` is reported under, by the attribute holding it.
_CONSUMER_NAMES = ("edge_alerts", "confirmer", "baselines", "quality", "security", "detectors", "forest", "series",
                   "alerts")


def analysis_consumers(agg: Any) -> list[tuple[str, Any]]:
    """The consumers ``agg`` (an :class:`aggregator.app.Aggregator`) runs, named, in the order ``Analysis`` runs them.

    Exactly ``agg.analysis.consumers`` (the summaries-mode views included, as the aggregator wraps
    baselines, detectors, series and alerts in them); each is named for the aggregator attribute
    holding it (or the one it wraps).
    """
    def name(c: Any) -> str:
        for attr in _CONSUMER_NAMES:
            held = getattr(agg, attr, None)
            if held is not None and (c is held or getattr(c, "inner", None) is held):
                return attr
        return type(c).__name__

    return [(name(c), c) for c in agg.analysis.consumers]


def measure_analysis(corpus: Corpus, settings: AggBenchSettings, *, data_dir: str | None = None) -> dict[str, Any]:
    """Feed pre-decoded batches through every analysis consumer on this thread; rows/s of the timed part.

    The aggregator is built from ``AggregatorConfig`` defaults (a fresh data directory, no listeners
    started, no sinks). The Isolation Forest fits on its own ``forest-fit`` thread, as in the
    aggregator; with this process pinned to one CPU it shares that core. ``arrival_ns`` is the wall
    clock at the moment each batch is fed.
    """
    from aggregator.analysis.pipeline import restore
    from aggregator.app import Aggregator
    from aggregator.config import AggregatorConfig

    with contextlib.ExitStack() as stack:
        d = data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_aggregator_"))
        agg = Aggregator(AggregatorConfig(listen="127.0.0.1:0", data_dir=d, grpc_listen=""),
                         registry=CollectorRegistry())
        consumers = analysis_consumers(agg)
        # What Aggregator.start does before its listeners (a fresh directory: nothing to restore, but
        # the alert store opens), so that a confirmed anomaly can become a stored alert.
        for _, c in consumers:
            restore(c)
        hand_on = agg.analysis.on_candidates  # what Analysis does with the candidates a consumer returns
        stream = Stream(corpus, rows_per_batch=settings.rows_per_batch, sidecars=settings.sidecars,
                        event_rows_per_s=settings.event_rows_per_s, start_unix_nano=time.time_ns())
        warm = stream.take(settings.analysis_warmup_rows)
        timed = stream.take(settings.analysis_rows)
        reg = agg.metrics.registry

        def sample(name: str) -> float:
            return reg.get_sample_value(name) or 0.0

        def total(name: str) -> float:
            return sum(s.value for fam in reg.collect() for s in fam.samples if s.name == name)

        try:
            for b in warm:
                now = time.time_ns()
                for _, c in consumers:
                    found = c.consume(b, arrival_ns=now)
                    if found:
                        hand_on(found)
            fits0 = sample("sentinel_aggregator_model_train_seconds_count")
            cands0 = total("sentinel_aggregator_candidates_total")
            alerts0 = total("sentinel_aggregator_alerts_total")
            per = dict.fromkeys((name for name, _ in consumers), 0.0)
            per_cpu = dict.fromkeys(per, 0.0)
            clock, cpu = time.perf_counter, time.thread_time
            t0, c0 = clock(), cpu()
            for b in timed:
                now = time.time_ns()
                for name, c in consumers:
                    s, sc = clock(), cpu()
                    found = c.consume(b, arrival_ns=now)
                    if found:
                        hand_on(found)
                    per[name] += clock() - s
                    per_cpu[name] += cpu() - sc
            elapsed, elapsed_cpu = clock() - t0, cpu() - c0
            rows = sum(b.batch.n for b in timed)
            result: dict[str, Any] = {
                "rows_per_s": rows / elapsed,
                # This thread's CPU time only: what the consumers cost, without the forest's fits
                # (another thread, sharing the core) or other work on a busy machine.
                "cpu_rows_per_s": rows / elapsed_cpu,
                "rows": rows,
                "batches": len(timed),
                "seconds": elapsed,
                "cpu_seconds": elapsed_cpu,
                "warmup_rows": sum(b.batch.n for b in warm),
                "anomalies_forwarded": sum(len(b.anomalies) for b in timed),
                "candidates": int(total("sentinel_aggregator_candidates_total") - cands0),
                "alerts": int(total("sentinel_aggregator_alerts_total") - alerts0),
                "forest_fits": int(sample("sentinel_aggregator_model_train_seconds_count") - fits0),
                "consumers": {name: {"seconds": t, "share": t / elapsed, "rows_per_s": rows / t if t > 0 else None,
                                     "cpu_seconds": per_cpu[name], "cpu_share": per_cpu[name] / elapsed_cpu,
                                     "cpu_rows_per_s": rows / per_cpu[name] if per_cpu[name] > 0 else None}
                              for name, t in per.items()},
            }
        finally:
            for _, c in consumers:
                close = getattr(c, "shutdown", None)
                if callable(close):
                    close()
            agg.alert_store.close()
    return result


def run_in_process(settings: AggBenchSettings, corpus: Corpus | None = None) -> dict[str, Any]:
    """Figures (a) and (b) (no sockets, no child processes); used by the smoke test too."""
    corpus = corpus or build_corpus(settings.corpus_payloads, settings.spans_per_payload)
    stream = Stream(corpus, rows_per_batch=settings.rows_per_batch, sidecars=settings.sidecars,
                    event_rows_per_s=settings.event_rows_per_s, start_unix_nano=time.time_ns())
    batches = [stream.next_batch() for _ in range(settings.decode_bodies)]
    decode = measure_decode([encode(b) for b in batches], [b.batch.n for b in batches], settings.decode_seconds)
    analysis = measure_analysis(corpus, settings)
    analysis["ratio_to_decode"] = analysis["rows_per_s"] / decode["rows_per_s"]
    return {"decode": decode, "analysis": analysis}


# ---------------------------------------------------------------------------------------------
# (c) end to end


class AggregatorProcess:
    """``python -m sentinel.cli aggregator`` on a loopback port, optionally pinned to one CPU."""

    def __init__(self, *, data_dir: str, log_dir: str, cpu: int | None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None, name: str = "aggregator") -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "sentinel.cli", "aggregator", "--listen", f"127.0.0.1:{self.port}",
                "--data-dir", data_dir, "--grpc-listen", "", "--log-level", "warning", *extra_args]
        self.child = Child(name, argv, log_dir=log_dir, env=env, cpu=cpu)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        self.child.start()
        await self.child.wait_http_ready(http, f"{self.url}/readyz", timeout_s)

    def cpu_seconds(self) -> float:
        t = self.child.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        return int(self.child.ps.memory_info().rss)

    async def metrics(self, http: httpx.AsyncClient) -> dict[str, float]:
        return await scrape(http, f"{self.url}/metrics")

    def stop(self) -> int | None:
        return self.child.stop()


async def scrape(http: httpx.AsyncClient, url: str) -> dict[str, float]:
    """A Prometheus endpoint as {sample name: value summed over labels}."""
    from prometheus_client.parser import text_string_to_metric_families

    r = await http.get(url, timeout=10.0)
    r.raise_for_status()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


@dataclass
class PostStats:
    batches: int = 0
    rows: int = 0
    overloaded: int = 0  # 503 answers (ingest queue full), retried
    failures: list[str] = dataclasses.field(default_factory=list)


async def post_bodies(session: aiohttp.ClientSession, url: str, bodies: Sequence[bytes], rows: Sequence[int],
                      concurrency: int, stats: PostStats) -> None:
    """POST every body (``concurrency`` in flight), retrying 503s; raise on any other answer."""
    items = iter(range(len(bodies)))
    headers = {"Content-Type": wire.CONTENT_TYPE}

    async def worker() -> None:
        for i in items:
            while True:
                async with session.post(url, data=bodies[i], headers=headers) as r:
                    text = await r.text()
                if r.status == 200:
                    stats.batches += 1
                    stats.rows += rows[i]
                    break
                if r.status == 503:
                    stats.overloaded += 1
                    await asyncio.sleep(0.01)
                    continue
                stats.failures.append(f"{r.status}: {text[:200]}")
                raise RuntimeError(f"ingest answered {r.status}: {text[:200]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def wait_marker(http: httpx.AsyncClient, base: str, n: int, timeout_s: float, *, poll_s: float = 0.02) -> float:
    """Poll ``/api/v1/candidates`` until marker ``n``'s candidate is there; its ``perf_counter`` time."""
    deadline = time.monotonic() + timeout_s
    url = f"{base}/api/v1/candidates"
    while time.monotonic() < deadline:
        r = await http.get(url, params={"service": f"{MARKER_SERVICE}-{n}", "limit": "1"}, timeout=10.0)
        if r.status_code == 200 and r.json().get("count"):
            return time.perf_counter()
        await asyncio.sleep(poll_s)
    raise RuntimeError(f"marker {n} was not analysed within {timeout_s:.0f}s")


async def measure_e2e(corpus: Corpus, settings: AggBenchSettings, *, agg_cpu: int | None,
                      say: Callable[[str], None]) -> dict[str, Any]:
    """Figure (c): a pinned aggregator process, this process POSTing pre-encoded bodies."""
    stream = Stream(corpus, rows_per_batch=settings.rows_per_batch, sidecars=settings.sidecars,
                    event_rows_per_s=settings.event_rows_per_s, start_unix_nano=time.time_ns())
    t = time.perf_counter()
    warm = stream.take(settings.e2e_warmup_rows)
    timed = stream.take(settings.e2e_rows)
    warm_bodies, timed_bodies = [encode(b) for b in warm], [encode(b) for b in timed]
    warm_rows, timed_rows = [b.batch.n for b in warm], [b.batch.n for b in timed]
    say(f"  {len(warm_bodies) + len(timed_bodies)} bodies pre-encoded in {time.perf_counter() - t:.1f}s "
        f"({sum(map(len, timed_bodies)) / sum(timed_rows):.0f} bytes/row)")
    with tempfile.TemporaryDirectory(prefix="bench_aggregator_e2e_") as tmp:
        data_dir = os.path.join(tmp, "data")
        proc = AggregatorProcess(data_dir=data_dir, log_dir=tmp, cpu=agg_cpu)
        try:
            async with httpx.AsyncClient() as http:
                await proc.start(http, settings.startup_timeout_s)
                say(f"  aggregator pid {proc.child.pid} on CPU {agg_cpu if agg_cpu is not None else 'any'} "
                    f"({proc.url}, journal in {data_dir})")
                connector = aiohttp.TCPConnector(limit=settings.concurrency)
                async with aiohttp.ClientSession(connector=connector) as session:
                    ingest = f"{proc.url}/v1/ingest"
                    warm_stats = PostStats()
                    await post_bodies(session, ingest, warm_bodies, warm_rows, settings.concurrency, warm_stats)
                    await post_bodies(session, ingest, [marker_body(0)], [1], 1, warm_stats)
                    await wait_marker(http, proc.url, 0, settings.drain_timeout_s)
                    rss = [proc.rss()]
                    sampling = asyncio.Event()

                    async def sample_rss() -> None:
                        while not sampling.is_set():
                            with contextlib.suppress(psutil.Error):
                                rss.append(proc.rss())
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(sampling.wait(), 0.25)

                    sampler = asyncio.create_task(sample_rss())
                    stats = PostStats()
                    me = psutil.Process()
                    cpu0, mine0 = proc.cpu_seconds(), sum(me.cpu_times()[:2])
                    t0 = time.perf_counter()
                    await post_bodies(session, ingest, timed_bodies, timed_rows, settings.concurrency, stats)
                    t_acked = time.perf_counter()
                    cpu_acked = proc.cpu_seconds()
                    await post_bodies(session, ingest, [marker_body(1)], [1], 1, stats)
                    t_end = await wait_marker(http, proc.url, 1, settings.drain_timeout_s)
                    cpu1, mine1 = proc.cpu_seconds(), sum(me.cpu_times()[:2])
                    sampling.set()
                    await sampler
                m = await proc.metrics(http)
                r = await http.get(f"{proc.url}/api/v1/baselines", params={"region": "global"}, timeout=30.0)
                analysed = sum(int(b["calls"]) for b in r.json()["baselines"]
                               if not str(b.get("service") or "").startswith(MARKER_SERVICE))
        finally:
            status = proc.stop()
    elapsed = t_end - t0
    rows = stats.rows - 1  # the marker's row
    sent_total = sum(warm_rows) + rows
    return {
        "rows_per_s": rows / elapsed,
        "ingest_rows_per_s": rows / (t_acked - t0),
        "rows": rows,
        "batches": len(timed_bodies),
        "seconds": elapsed,
        "seconds_to_last_ack": t_acked - t0,
        "analysis_lag_after_last_ack_s": t_end - t_acked,
        "concurrency": settings.concurrency,
        "overloaded_503": stats.overloaded,
        "aggregator_cpu_utilisation": (cpu1 - cpu0) / elapsed,
        "aggregator_cpu_utilisation_until_last_ack": (cpu_acked - cpu0) / (t_acked - t0),
        "client_cpu_utilisation": (mine1 - mine0) / elapsed,
        "aggregator_rss_max_mib": max(rss) / MIB,
        "rows_ingested_metric": int(m.get("sentinel_aggregator_rows_ingested_total", 0.0)),
        "rows_sent_incl_warmup_and_markers": sent_total + 2,
        "rows_analysed_by_baselines": analysed,
        "rows_sent_incl_warmup": sent_total,
        "duplicate_batches": int(m.get("sentinel_aggregator_duplicate_batches_total", 0.0)),
        "aggregator_exit_status": status,
    }


# ---------------------------------------------------------------------------------------------
# report


def pick_cpus() -> tuple[int | None, int | None]:
    """(this process, the server process): two distinct CPUs when there are two, else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[1], cpus[0]


def machine_info() -> dict[str, Any]:
    """CPU model and count, Python, the main packages' versions, the load average."""
    from importlib import metadata

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for pkg in ("numpy", "protobuf", "grpcio", "aiohttp", "msgpack", "scikit-learn", "ddsketch", "aio-pika"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "-"
    with contextlib.suppress(ImportError):
        from google.protobuf.internal import api_implementation

        versions["protobuf"] += f" ({api_implementation.Type()})"
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": versions,
        "load_average": list(os.getloadavg()),
    }


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, rows/s, ratio to decode, target) rows of the summary table."""
    dec = r["decode"]["rows_per_s"]
    rows = [("(a) wire decode (sentinel.wire.decode), 1 thread", _fmt(dec), "1", "-")]
    target = f">= {TARGET_ROWS_PER_S:,} rows/s"
    a = r["analysis"]
    met = "met" if a["rows_per_s"] >= TARGET_ANALYSIS_ROWS_PER_S else "NOT met"
    rows.append(("(b) analysis (every consumer), 1 thread", _fmt(a["rows_per_s"]), f"{a['rows_per_s'] / dec:.4f}",
                 f">= {TARGET_ANALYSIS_ROWS_PER_S:,} rows/s: {met}"))
    rows.append(("    (b) in the analysis thread's CPU time (forest fits and other work excluded)",
                 _fmt(a["cpu_rows_per_s"]), f"{a['cpu_rows_per_s'] / dec:.4f}", "-"))
    if "e2e" in r:
        e = r["e2e"]
        rows.append(("(c) end to end: POST /v1/ingest -> journal -> analysed, aggregator on 1 core",
                     _fmt(e["rows_per_s"]), f"{e['rows_per_s'] / dec:.4f}",
                     f"{target}: {'met' if e['rows_per_s'] >= TARGET_ROWS_PER_S else 'NOT met'}"))
        rows.append(("    (c) ingest only: rows acknowledged (durably stored) per second",
                     _fmt(e["ingest_rows_per_s"]), f"{e['ingest_rows_per_s'] / dec:.4f}", "-"))
    return rows


def report(r: dict[str, Any], say: Callable[[str], None]) -> None:
    rows = summary_rows(r)
    say_table("Summary", ("figure", "rows/s", "ratio to (a)", "design target"), rows, say)
    a = r["analysis"]
    say("  (b) thread CPU time per consumer: " + ", ".join(
        f"{name} {v['cpu_share'] * 100:.0f}%" + (f" ({v['cpu_rows_per_s']:,.0f} rows/s)" if v["cpu_share"] >= 0.05
                                                 else "")
        for name, v in a["consumers"].items()))
    if "e2e" in r:
        e = r["e2e"]
        ok = e["rows_analysed_by_baselines"] == e["rows_sent_incl_warmup"]
        say(f"  (c) rows sent {e['rows_sent_incl_warmup']:,} (warm-up included), ingested "
            f"{e['rows_ingested_metric'] - 2:,} (+2 marker rows), analysed by the baselines "
            f"{e['rows_analysed_by_baselines']:,}: {'all analysed' if ok else 'MISMATCH'}; aggregator CPU "
            f"{e['aggregator_cpu_utilisation']:.2f} cores, RSS max {e['aggregator_rss_max_mib']:.0f} MiB; "
            f"analysis finished {e['analysis_lag_after_last_ack_s']:.2f}s after the last ack")


def _print_section(title: str, figures: dict[str, Any], say: Callable[[str], None]) -> None:
    say_figures(title, figures, say, key_width=36)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_aggregator", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rows (smoke run, ~15 s)")
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    p.add_argument("--rows-per-batch", type=int, help="rows per wire batch [1024]")
    p.add_argument("--analysis-rows", type=int, help="timed rows of (b) [300,000; 60,000 with --quick]")
    p.add_argument("--e2e-rows", type=int, help="timed rows of (c) [300,000; 60,000 with --quick]")
    p.add_argument("--concurrency", type=int, help="ingest POSTs in flight in (c) [8]")
    p.add_argument("--event-rows-per-s", type=float, help="event-time density of the rows [100,000]")
    p.add_argument("--in-process-only", action="store_true", help="figures (a) and (b) only")
    args = p.parse_args(argv)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children

    signal.signal(signal.SIGTERM, on_sigterm)
    settings = QUICK if args.quick else AggBenchSettings()
    overrides = {k: v for k, v in (("rows_per_batch", args.rows_per_batch), ("analysis_rows", args.analysis_rows),
                                   ("e2e_rows", args.e2e_rows), ("concurrency", args.concurrency),
                                   ("event_rows_per_s", args.event_rows_per_s)) if v is not None}
    settings = replace(settings, **overrides)

    def say(text: str) -> None:
        print(text, flush=True)

    me_cpu, agg_cpu = pick_cpus()
    info = machine_info()
    info.update(client_cpu=me_cpu, aggregator_cpu=agg_cpu)
    if me_cpu is not None:
        os.sched_setaffinity(0, {me_cpu})  # before any thread exists, so all of ours stay there
    say("LLM-Sentinel aggregator benchmark" + (" (--quick)" if args.quick else ""))
    say(f"  machine: {info['cpu_model']}, {info['cpus']} CPUs ({info['cpus_usable']} usable); Python "
        f"{info['python']}; numpy {info['packages']['numpy']}; msgpack {info['packages']['msgpack']}")
    say(f"  load average at start: {' '.join(f'{x:.2f}' for x in info['load_average'])} (other work on these "
        f"CPUs lowers every figure)")
    if me_cpu is None:
        say("  WARNING: fewer than 2 usable CPUs: nothing is pinned, (c) shares the CPU with its client")
    else:
        say(f"  this process ((a), (b), the client of (c)) on CPU {me_cpu}; the aggregator process of (c) on "
            f"CPU {agg_cpu}")
    t = time.perf_counter()
    corpus = build_corpus(settings.corpus_payloads, settings.spans_per_payload)
    say(f"  corpus: {corpus.batch.n:,} distinct rows from {settings.corpus_payloads} loadtest.spans requests "
        f"(sidecar extraction + local detector: {sum(map(len, corpus.anomalies.values()))} local anomalies), "
        f"built in {time.perf_counter() - t:.1f}s; batches of {settings.rows_per_batch} rows from "
        f"{settings.sidecars} sidecar ids; event time at {settings.event_rows_per_s:,.0f} rows/s")
    say("")
    results: dict[str, Any] = {"machine": info, "settings": asdict(settings)}
    results.update(run_in_process(settings, corpus))
    _print_section("(a) wire decode (sentinel.wire.decode of pre-encoded bodies, 1 thread)", results["decode"], say)
    _print_section("(b) analysis (every consumer of the aggregator's pipeline, in its order; pre-decoded "
                   "batches, 1 thread)", results["analysis"], say)
    status = 0
    if not args.in_process_only:
        say(f"(c) end to end ({settings.concurrency} POSTs in flight; timed from the first POST of "
            f"{settings.e2e_rows:,} rows to the moment the last one was analysed, after "
            f"{settings.e2e_warmup_rows:,} warm-up rows)")
        try:
            results["e2e"] = e = asyncio.run(measure_e2e(corpus, settings, agg_cpu=agg_cpu, say=say))
            e["ratio_to_decode"] = e["rows_per_s"] / results["decode"]["rows_per_s"]
            _print_section("", e, say)
        except Exception as ex:  # report what was measured, then fail
            say(f"  FAILED: {type(ex).__name__}: {ex}")
            results["error"] = f"{type(ex).__name__}: {ex}"
            status = 1
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    report(results, say)
    say(f"load average: {' '.join(f'{x:.2f}' for x in info['load_average'])} at start, "
        f"{' '.join(f'{x:.2f}' for x in results['machine']['load_average_at_end'])} at end "
        f"(1, 5, 15 min; the benchmark itself adds up to ~2)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"\nfigures written to {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
