"""Sidecar benchmark: parse rate, in-process pipeline, end to end over gRPC, and a steady 2,000 spans/s.

    python -m loadtest.bench_sidecar [--quick] [--json PATH] [--steady-seconds 30] [--steady-spans-per-request 512]
                                     [--profile]

One run prints these figures side by side and a summary against the design targets
(``docs/targets.md``, constants in ``loadtest/targets.py``; what each figure means: ``loadtest/README.md``):

1. the raw protobuf-parse rate of the prebuilt payloads (``ExportTraceServiceRequest.FromString``),
2. the in-process pipeline on one thread: parse + ``TracePipeline.consume_traces`` (extract, local
   detection, batching, sealing into wire bodies in the forward queue),
3. end to end over real gRPC: the sidecar as its own process pinned to one core, this process (the
   client, pinned to another core) keeping several ``Export`` calls in flight,
4. a steady 2,000 spans/s against a sidecar forwarding to a recording aggregator: export-call
   latency percentiles, the sidecar's RSS, and rows received versus spans sent,
4b. the same steady load, with the same client loop, against a null OTLP/gRPC server (answers at
   once, parses nothing) on the sidecar's core: the Python gRPC transport's own latency, so the
   sidecar's added latency is 4 minus 4b.

4 and 4b run at ``--steady-spans-per-request`` (512), then again at 64 spans per request (the same
spans/s in more, smaller exports, as SDKs with smaller batches send them).

Everything listens on loopback only, every phase is bounded in time, and child processes are
always stopped (SIGTERM, then SIGKILL) before the run ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import io
import json
import logging
import math
import os
import platform
import pstats
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import grpc
import grpc.aio
import httpx
import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from loadtest import targets
from loadtest.procs import ROOT
from loadtest.procs import child_env as _child_env
from loadtest.procs import free_port as _free_port
from loadtest.procs import log_tail as _tail
from loadtest.procs import pinned as _pinned
from loadtest.procs import stop_process as _stop
from loadtest.spans import build_trace_payloads
from loadtest.text import say_figures, say_table
from sidecar.otlp_lite import parse_traces
from sidecar.pipeline import Overloaded

# psutil ships no type stubs (and types-psutil is not a dependency): use it untyped.
psutil: Any = importlib.import_module("psutil")

__all__ = ["BenchSettings", "main", "measure_parse", "measure_pipeline", "run_in_process"]

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PAYLOAD_SEED = 20_250_615
MIB = 1024 * 1024

TARGET_SPANS_PER_S = targets.SIDECAR_SPANS_PER_S
TARGET_RSS_MIB = targets.SIDECAR_RSS_MIB
TARGET_P99_MS = targets.SIDECAR_EXPORT_P99_MS


@dataclass(frozen=True)
class BenchSettings:
    payloads: int = 200
    spans_per_request: int = 512
    parse_seconds: float = 3.0
    pipeline_seconds: float = 5.0
    pipeline_warmup_requests: int = 20
    e2e_seconds: float = 10.0
    e2e_warmup_seconds: float = 2.0
    concurrency: int = 8
    steady_seconds: float = 30.0
    steady_rate: float = 2000.0
    steady_spans_per_request: int = 512
    steady_extra_spans_per_request: int = 64  # a second steady measurement (4 and 4b) in the same run; 0: none
    startup_timeout_s: float = 30.0
    drain_timeout_s: float = 15.0


QUICK = BenchSettings(payloads=20, parse_seconds=1.0, pipeline_seconds=1.5, pipeline_warmup_requests=4,
                      e2e_seconds=3.0, e2e_warmup_seconds=0.5, steady_seconds=5.0)


# ---------------------------------------------------------------------------------------------
# 1. raw parse rate


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def measure_parse(payloads: Sequence[bytes], seconds: float) -> dict[str, Any]:
    """Single-threaded ``FromString`` over ``payloads``, cycled for at least ``seconds``."""
    parse = ExportTraceServiceRequest.FromString
    spans_per_payload = [count_spans(parse(p)) for p in payloads]  # also the warm-up pass
    round_spans = sum(spans_per_payload)
    rounds = 0
    t0 = time.perf_counter()
    while True:
        for p in payloads:
            parse(p)
        rounds += 1
        now = time.perf_counter()
        if now - t0 >= seconds:
            break
    elapsed = now - t0
    total_bytes = sum(len(p) for p in payloads)
    return {
        "spans_per_s": rounds * round_spans / elapsed,
        "requests_per_s": rounds * len(payloads) / elapsed,
        "mb_per_s": rounds * total_bytes / elapsed / 1e6,
        "spans": rounds * round_spans,
        "seconds": elapsed,
        "bytes_per_span": total_bytes / round_spans,
    }


# ---------------------------------------------------------------------------------------------
# 2. in-process pipeline


async def measure_pipeline(payloads: Sequence[bytes], seconds: float, *, warmup_requests: int = 20,
                           profile: bool = False) -> dict[str, Any]:
    """Parse + ``consume_traces`` on one thread, until every row is sealed into a wire body.

    The pipeline is the one :class:`sidecar.app.Sidecar` builds from default settings, with no
    listeners and no ``aggregator_url``: every batch is still sealed (extracted, detected,
    batched, encoded with :func:`sentinel.wire.encode`) and handed to the forward queue, which then
    counts its rows as dropped with reason ``no_aggregator`` instead of keeping them for a
    forwarder. That count is checked against the LLM calls seen, so no row escapes the timing.
    """
    from sidecar.app import Sidecar
    from sidecar.config import SidecarConfig

    config = SidecarConfig(grpc_listen="", http_listen="", metrics_listen="", aggregator_url="",
                           sidecar_id="bench")
    sidecar = Sidecar(config, registry=CollectorRegistry())
    app_log = logging.getLogger("sidecar.app")
    level = app_log.level
    app_log.setLevel(logging.ERROR)  # "no aggregator_url" is the point here, not news
    try:
        await sidecar.start()
    finally:
        app_log.setLevel(level)
    pipeline = sidecar.pipeline
    assert pipeline is not None
    reg = sidecar.metrics.registry

    async def consume(payload: bytes) -> None:
        # What a receiver does: parse the lean view, hand it over; when the receive queue is
        # full (Overloaded), wait for the worker as a retrying client would.
        request = parse_traces(payload)
        while True:
            try:
                await pipeline.consume_traces(request, len(payload))
                return
            except Overloaded:
                await asyncio.sleep(0.0005)

    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return reg.get_sample_value(name, labels) or 0.0

    def sealed_rows() -> float:
        return sample("sentinel_sidecar_dropped_rows_total", {"reason": "no_aggregator"})

    # Warm-up (untimed): first calls, detector windows filling.
    for i in range(warmup_requests):
        await consume(payloads[i % len(payloads)])
    await pipeline.flush()
    spans0 = sample("sentinel_sidecar_spans_received_total")
    calls0 = sample("sentinel_sidecar_llm_calls_total")
    sealed0 = sealed_rows()
    anomalies0 = _sum_samples(reg, "sentinel_sidecar_local_anomalies_total")

    requests = 0
    t0 = time.perf_counter()
    while True:
        for p in payloads:
            await consume(p)
        requests += len(payloads)
        if time.perf_counter() - t0 >= seconds:
            break
    await pipeline.flush()  # the last rows are sealed too, inside the timed part
    elapsed = time.perf_counter() - t0

    spans = sample("sentinel_sidecar_spans_received_total") - spans0
    calls = sample("sentinel_sidecar_llm_calls_total") - calls0
    result: dict[str, Any] = {
        "spans_per_s": spans / elapsed,
        "spans": int(spans),
        "requests": requests,
        "seconds": elapsed,
        "llm_calls": int(calls),
        "rows_sealed": int(sealed_rows() - sealed0),
        "local_anomalies": int(_sum_samples(reg, "sentinel_sidecar_local_anomalies_total") - anomalies0),
    }
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for p in payloads:
            await consume(p)
        await pipeline.flush()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(20)
        result["profile_top20"] = out.getvalue().strip("\n")
    await sidecar.shutdown()
    return result


def _sum_samples(registry: CollectorRegistry, name: str) -> float:
    return sum(s.value for fam in registry.collect() for s in fam.samples if s.name == name)


def run_in_process(payloads: Sequence[bytes], settings: BenchSettings, *, profile: bool = False) -> dict[str, Any]:
    """Figures 1 and 2 (no sockets, no child processes); used by the smoke test too."""
    parse = measure_parse(payloads, settings.parse_seconds)
    pipe = asyncio.run(measure_pipeline(payloads, settings.pipeline_seconds,
                                        warmup_requests=settings.pipeline_warmup_requests, profile=profile))
    pipe["ratio_to_parse"] = pipe["spans_per_s"] / parse["spans_per_s"]
    return {"parse": parse, "pipeline": pipe}


# ---------------------------------------------------------------------------------------------
# child processes


class SidecarProcess:
    """``python -m sentinel.cli sidecar`` on loopback ports, optionally pinned to one CPU."""

    def __init__(self, *, cpu: int | None, log: IO[bytes], aggregator_url: str = "") -> None:
        self.cpu = cpu
        self.grpc_port = _free_port()
        self.metrics_port = _free_port()
        self.aggregator_url = aggregator_url
        self._log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: Any = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "sentinel.cli", "sidecar",
                "--grpc-listen", f"127.0.0.1:{self.grpc_port}", "--http-listen", "",
                "--metrics-listen", f"127.0.0.1:{self.metrics_port}", "--sidecar-id", "bench",
                "--log-level", "warning", "--aggregator-url", self.aggregator_url]
        self.proc = subprocess.Popen(_pinned(argv, self.cpu), cwd=ROOT, env=_child_env(),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)
        self.ps = psutil.Process(self.proc.pid)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def wait_ready(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with status {self.proc.returncode} during start-up\n"
                                   + _tail(self._log))
            with contextlib.suppress(httpx.HTTPError):
                r = await http.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1.0)
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"sidecar not ready within {timeout_s:.0f}s\n" + _tail(self._log))

    async def metrics(self, http: httpx.AsyncClient) -> dict[str, float]:
        r = await http.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5.0)
        r.raise_for_status()
        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                out[s.name] = out.get(s.name, 0.0) + s.value
        return out

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        assert self.ps is not None
        return int(self.ps.memory_info().rss)

    def stop(self) -> int | None:
        return _stop(self.proc)


class RecorderProcess:
    """:class:`loadtest.recorder.RecordingAggregator` in its own process (see :func:`serve_recorder`)."""

    def __init__(self, *, cpu: int | None, log: IO[bytes]) -> None:
        self.cpu = cpu
        self._log = log
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    async def start(self, timeout_s: float) -> None:
        argv = [sys.executable, "-m", "loadtest.bench_sidecar", "--serve-recorder"]
        self.proc = subprocess.Popen(_pinned(argv, self.cpu), cwd=ROOT, env=_child_env(), text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if not line.startswith("PORT "):
            raise RuntimeError("recording aggregator did not start\n" + _tail(self._log))
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    def finish(self) -> dict[str, Any]:
        """Stop it and return what it recorded."""
        assert self.proc is not None and self.proc.stdout is not None
        _stop(self.proc)
        out = self.proc.stdout.read()
        for line in out.splitlines():
            if line.startswith("{"):
                result: dict[str, Any] = json.loads(line)
                return result
        raise RuntimeError("recording aggregator printed no result\n" + _tail(self._log))

    def stop(self) -> None:
        _stop(self.proc)


async def serve_recorder() -> int:
    """Child mode: run a RecordingAggregator, print ``PORT n``, and on SIGTERM print its counts as JSON."""
    from loadtest.recorder import RecordingAggregator

    rec = RecordingAggregator()
    await rec.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"PORT {rec.port}", flush=True)
    await stop.wait()
    await rec.stop()
    print(json.dumps({"rows": rec.rows, "batches": len(rec.batches), "requests": rec.requests,
                      "duplicates": rec.duplicates,
                      "anomalies": sum(len(b.anomalies) for b in rec.batches)}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# 3. end to end over gRPC


def _export_call(channel: grpc.aio.Channel) -> Callable[..., Any]:
    # No serializers: the prebuilt payload bytes go on the wire as they are, as an SDK's would.
    return channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)


async def measure_grpc(sidecar: SidecarProcess, http: httpx.AsyncClient, payloads: Sequence[bytes],
                       spans_per_payload: Sequence[int], settings: BenchSettings) -> dict[str, Any]:
    """Saturate the sidecar with ``concurrency`` in-flight exports; rate over the measured window."""
    acked = [0]
    refused = [0]
    failed: list[str] = []
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(sidecar.target) as channel:
        await asyncio.wait_for(channel.channel_ready(), settings.startup_timeout_s)
        export = _export_call(channel)

        async def worker(k: int) -> None:
            i = k
            while not stop.is_set():
                j = i % len(payloads)
                i += settings.concurrency
                try:
                    raw = await export(payloads[j], timeout=10.0)
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.UNAVAILABLE:
                        refused[0] += 1
                        await asyncio.sleep(0.01)
                        continue
                    failed.append(f"{e.code().name}: {e.details()}")
                    if len(failed) > 20:
                        stop.set()
                    await asyncio.sleep(0.05)
                    continue
                response = ExportTraceServiceResponse.FromString(raw)
                acked[0] += spans_per_payload[j] - response.partial_success.rejected_spans

        async def snapshot() -> tuple[float, int, float, float]:
            m = await sidecar.metrics(http)
            return (time.perf_counter(), acked[0], m.get("sentinel_sidecar_spans_received_total", 0.0),
                    sidecar.cpu_seconds())

        workers = [asyncio.create_task(worker(k)) for k in range(settings.concurrency)]
        try:
            await asyncio.sleep(settings.e2e_warmup_seconds)
            t0, a0, r0, c0 = await snapshot()
            await asyncio.sleep(settings.e2e_seconds)
            t1, a1, r1, c1 = await snapshot()
        finally:
            stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
    if failed and a1 == a0:
        raise RuntimeError(f"every export failed: {failed[0]}")
    elapsed = t1 - t0
    return {
        "spans_per_s": (a1 - a0) / elapsed,
        "sidecar_metric_spans_per_s": (r1 - r0) / elapsed,
        "spans_acked": a1 - a0,
        "seconds": elapsed,
        "concurrency": settings.concurrency,
        "sidecar_cpu_utilisation": (c1 - c0) / elapsed,
        "refused_unavailable": refused[0],
        "failed": len(failed),
        "first_failure": failed[0] if failed else "",
    }


# ---------------------------------------------------------------------------------------------
# 4. steady rate (4: the sidecar; 4b: a null OTLP/gRPC server under the same load)


@dataclass
class OpenLoopRun:
    """What :func:`open_loop_exports` measured: one wall time per timed ``Export`` call."""

    latencies_s: list[float]
    failures: list[str]
    spans_sent: int  # acknowledged, the untimed warm-up request included
    warmup_spans: int
    elapsed_s: float  # from the first slot to the end of the last one (or the last answer, if later)
    steal_pct: float  # CPU time stolen by the hypervisor, % of all CPUs' time during the schedule

    def figures(self, rate: float, spans_per_request: float | int) -> dict[str, Any]:
        ms = np.asarray(self.latencies_s) * 1000.0
        pct = {f"p{q}_ms": float(np.percentile(ms, q)) if ms.size else float("nan") for q in (50, 95, 99)}
        return {
            "target_spans_per_s": rate,
            "spans_per_request": spans_per_request,
            "requests_per_s": rate / spans_per_request,
            "achieved_spans_per_s": (self.spans_sent - self.warmup_spans) / self.elapsed_s
            if self.elapsed_s > 0 else 0.0,
            "seconds": self.elapsed_s,
            "requests_timed": len(self.latencies_s),
            **pct,
            "max_ms": float(ms.max()) if ms.size else float("nan"),
            "mean_ms": float(ms.mean()) if ms.size else float("nan"),
            "failed_requests": len(self.failures),
            "first_failure": self.failures[0] if self.failures else "",
            "cpu_steal_pct": self.steal_pct,
        }


def _cpu_ticks() -> tuple[int, int]:
    """(steal, total) jiffies over all CPUs from ``/proc/stat``; (0, 0) where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def _mean_spans(spans_per_payload: Sequence[int]) -> float | int:
    mean = sum(spans_per_payload) / len(spans_per_payload)
    return int(mean) if mean == int(mean) else mean


async def open_loop_exports(target: str, payloads: Sequence[bytes], spans_per_payload: Sequence[int], *,
                            rate: float, seconds: float, connect_timeout_s: float,
                            on_warm: Callable[[], None] | None = None) -> OpenLoopRun:
    """Open-loop ``Export`` calls to ``target`` at ``rate`` spans/s for ``seconds``, each one timed.

    One fresh channel; one untimed warm-up request (its spans count as sent: the app's exporter
    has a warm channel); then request ``i`` is sent at ``start + i * interval`` (a late request does
    not shift the schedule), one call in flight. ``on_warm`` runs after the warm-up request, just
    before the schedule starts. Phases 4 and 4b both use exactly this loop.
    """
    mean_spans = sum(spans_per_payload) / len(spans_per_payload)
    interval = mean_spans / rate
    n_requests = max(1, math.ceil(seconds / interval))
    latencies: list[float] = []
    failures: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), connect_timeout_s)
        export = _export_call(channel)
        await export(payloads[-1], timeout=10.0)
        warmup_spans = spans_sent = spans_per_payload[-1]
        if on_warm is not None:
            on_warm()
        loop = asyncio.get_running_loop()
        steal0, total0 = _cpu_ticks()
        start = loop.time() + 0.05
        for i in range(n_requests):
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            j = i % len(payloads)
            t = time.perf_counter()
            try:
                await export(payloads[j], timeout=10.0)
            except grpc.aio.AioRpcError as e:
                failures.append(f"{e.code().name}: {e.details()}")
                continue
            latencies.append(time.perf_counter() - t)
            spans_sent += spans_per_payload[j]
        # The run lasts until the end of the last request's slot (or later, if it was late).
        await asyncio.sleep(max(0.0, start + n_requests * interval - loop.time()))
        elapsed = loop.time() - start
    steal1, total1 = _cpu_ticks()
    steal_pct = 100.0 * (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0
    return OpenLoopRun(latencies, failures, spans_sent, warmup_spans, elapsed, steal_pct)


async def measure_steady(sidecar: SidecarProcess, recorder: RecorderProcess, http: httpx.AsyncClient,
                         payloads: Sequence[bytes], spans_per_payload: Sequence[int],
                         settings: BenchSettings) -> dict[str, Any]:
    """Phase 4: :func:`open_loop_exports` against the sidecar, plus its RSS and the rows forwarded."""
    rss: list[int] = []
    rss_before: list[int] = []
    sampling = asyncio.Event()
    sampler: list[asyncio.Task[None]] = []

    async def sample_rss() -> None:
        while not sampling.is_set():
            with contextlib.suppress(psutil.Error):
                rss.append(sidecar.rss())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sampling.wait(), 0.2)

    cpu0: list[float] = []

    def on_warm() -> None:
        cpu0.append(sidecar.cpu_seconds())
        rss_before.append(sidecar.rss())
        sampler.append(asyncio.create_task(sample_rss()))

    try:
        run = await open_loop_exports(sidecar.target, payloads, spans_per_payload, rate=settings.steady_rate,
                                      seconds=settings.steady_seconds,
                                      connect_timeout_s=settings.startup_timeout_s, on_warm=on_warm)
    finally:
        sampling.set()
        if sampler:
            await sampler[0]
    cpu = sidecar.cpu_seconds() - cpu0[0]
    rss_final = sidecar.rss()
    rss.append(rss_final)

    # Wait for the sidecar to forward everything (batch timeout, then one POST per batch).
    deadline = time.monotonic() + settings.drain_timeout_s
    m: dict[str, float] = {}
    while time.monotonic() < deadline:
        m = await sidecar.metrics(http)
        if m.get("sentinel_sidecar_forwarded_rows_total", 0.0) >= m.get("sentinel_sidecar_llm_calls_total", 1.0):
            break
        await asyncio.sleep(0.2)
    exit_status = sidecar.stop()
    recorded = recorder.finish()
    return {
        **run.figures(settings.steady_rate, _mean_spans(spans_per_payload)),
        "rss_before_mib": rss_before[0] / MIB,
        "rss_max_mib": max(rss) / MIB,
        "rss_final_mib": rss_final / MIB,
        "rss_samples": len(rss),
        "spans_sent": run.spans_sent,
        "sidecar_cpu_utilisation": cpu / run.elapsed_s if run.elapsed_s > 0 else 0.0,
        "sidecar_llm_calls": int(m.get("sentinel_sidecar_llm_calls_total", 0.0)),
        "sidecar_forwarded_rows": int(m.get("sentinel_sidecar_forwarded_rows_total", 0.0)),
        "sidecar_dropped_rows": int(m.get("sentinel_sidecar_dropped_rows_total", 0.0)),
        "rows_received": int(recorded["rows"]),
        "batches_received": int(recorded["batches"]),
        "duplicate_batches": int(recorded["duplicates"]),
        "sidecar_exit_status": exit_status,
    }


class NullOtlpProcess:
    """:func:`serve_null_otlp` in its own process: the OTLP/gRPC transport with no sidecar behind it."""

    def __init__(self, *, cpu: int | None, log: IO[bytes]) -> None:
        self.cpu = cpu
        self._log = log
        self.proc: subprocess.Popen[str] | None = None
        self.ps: Any = None
        self.port = 0

    async def start(self, timeout_s: float) -> None:
        argv = [sys.executable, "-m", "loadtest.bench_sidecar", "--serve-null-otlp", "0"]
        self.proc = subprocess.Popen(_pinned(argv, self.cpu), cwd=ROOT, env=_child_env(), text=True,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log)
        self.ps = psutil.Process(self.proc.pid)
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), timeout_s)
        if not line.startswith("PORT "):
            raise RuntimeError("null OTLP/gRPC server did not start\n" + _tail(self._log))
        self.port = int(line.split()[1])

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def stop(self) -> int | None:
        return _stop(self.proc)


async def serve_null_otlp(port: int) -> int:
    """Child mode: a grpc.aio server whose ``TraceService/Export`` answers an empty response at once.

    The same server options as the sidecar's receiver (``sidecar.otlp_grpc``), no serializers: the
    request bytes are neither parsed nor looked at. Prints ``PORT n`` once listening; stops on SIGTERM.
    """
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 * MIB), ("grpc.so_reuseport", 0)])
    empty = ExportTraceServiceResponse().SerializeToString()

    async def export(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return empty

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if bound == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"PORT {bound}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    return 0


async def measure_steady_null(server: NullOtlpProcess, payloads: Sequence[bytes], spans_per_payload: Sequence[int],
                              settings: BenchSettings) -> dict[str, Any]:
    """Phase 4b: :func:`open_loop_exports` against the null server, with the same settings as phase 4."""
    cpu0: list[float] = []
    run = await open_loop_exports(server.target, payloads, spans_per_payload, rate=settings.steady_rate,
                                  seconds=settings.steady_seconds, connect_timeout_s=settings.startup_timeout_s,
                                  on_warm=lambda: cpu0.append(server.cpu_seconds()))
    cpu = server.cpu_seconds() - cpu0[0]
    return {
        **run.figures(settings.steady_rate, _mean_spans(spans_per_payload)),
        "spans_sent": run.spans_sent,
        "server_cpu_utilisation": cpu / run.elapsed_s if run.elapsed_s > 0 else 0.0,
        "server_exit_status": server.stop(),
    }


# ---------------------------------------------------------------------------------------------
# orchestration and report


def steady_sizes(settings: BenchSettings) -> list[int]:
    """Spans per request of each steady measurement, in order: the main one, then the extra one."""
    sizes = [settings.steady_spans_per_request]
    if settings.steady_extra_spans_per_request > 0 and settings.steady_extra_spans_per_request not in sizes:
        sizes.append(settings.steady_extra_spans_per_request)
    return sizes


def _steady_suffix(settings: BenchSettings | dict[str, Any], n: int) -> str:
    """Result keys: ``steady``/``steady_null`` for the main size, ``steady_64``/``steady_null_64`` for another."""
    main = settings["steady_spans_per_request"] if isinstance(settings, dict) else settings.steady_spans_per_request
    return "" if n == main else f"_{n}"


def machine_info(client_cpu: int | None, sidecar_cpu: int | None) -> dict[str, Any]:
    from google.protobuf import __version__ as pb_version
    from google.protobuf.internal import api_implementation

    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "client_cpu": client_cpu,
        "sidecar_cpu": sidecar_cpu,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "protobuf": f"{pb_version} ({api_implementation.Type()})",
        "grpcio": grpc.__version__,
        "load_average_at_start": os.getloadavg()[0],
    }


def _pick_cpus() -> tuple[int | None, int | None]:
    """(client, sidecar): two distinct CPUs when there are two, else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[1], cpus[0]


async def run_processes(payloads: Sequence[bytes], spans_per_payload: Sequence[int], settings: BenchSettings,
                        sidecar_cpu: int | None, client_cpu: int | None, log: IO[bytes],
                        say: Callable[[str], None], parse_rate: float, results: dict[str, Any],
                        steady_sets: Sequence[tuple[int, Sequence[bytes], Sequence[int]]] = ()) -> None:
    """Figures 3, 4 and 4b, stored into ``results`` as they complete (so a later failure keeps them).

    ``steady_sets``: (spans per request, payloads, spans per payload) for each steady measurement;
    each runs phase 4 (the sidecar) then phase 4b (the null server), with the same client loop.
    """
    children: list[SidecarProcess | RecorderProcess | NullOtlpProcess] = []
    try:
        async with httpx.AsyncClient() as http:
            sc = SidecarProcess(cpu=sidecar_cpu, log=log)
            children.append(sc)
            sc.start()
            await sc.wait_ready(http, settings.startup_timeout_s)
            say(f"  sidecar pid {sc.proc.pid if sc.proc else '?'} on CPU {sidecar_cpu}, no aggregator "
                f"(rows sealed, then counted dropped: no_aggregator)")
            results["grpc"] = g = await measure_grpc(sc, http, payloads, spans_per_payload, settings)
            g["ratio_to_parse"] = g["spans_per_s"] / parse_rate
            g["sidecar_exit_status"] = sc.stop()
            _print_section("", g, say)

            for n, steady_payloads, steady_spans in steady_sets:
                sfx = _steady_suffix(settings, n)
                rate = f"{settings.steady_rate:,.0f} spans/s"
                say(f"4. steady {rate} for {settings.steady_seconds:g}s, {n} spans per request "
                    f"({settings.steady_rate / n:.1f} requests/s, 1 export in flight, open loop; the sidecar "
                    f"forwards to a recording aggregator)")
                rec = RecorderProcess(cpu=client_cpu, log=log)
                children.append(rec)
                await rec.start(settings.startup_timeout_s)
                sc = SidecarProcess(cpu=sidecar_cpu, log=log, aggregator_url=rec.url)
                children.append(sc)
                sc.start()
                await sc.wait_ready(http, settings.startup_timeout_s)
                say(f"  sidecar pid {sc.proc.pid if sc.proc else '?'} on CPU {sidecar_cpu} -> recording aggregator "
                    f"{rec.url} (own process, CPU {client_cpu})")
                results["steady" + sfx] = s = await measure_steady(sc, rec, http, steady_payloads, steady_spans,
                                                                    settings)
                _print_section("", s, say)

                say(f"4b. null OTLP/gRPC server, same steady load ({rate}, {n} spans per request; it answers "
                    f"every Export with an empty response without parsing it: the transport floor)")
                null = NullOtlpProcess(cpu=sidecar_cpu, log=log)
                children.append(null)
                await null.start(settings.startup_timeout_s)
                say(f"  null server pid {null.proc.pid if null.proc else '?'} on CPU {sidecar_cpu}, "
                    f"same client code and schedule as 4")
                results["steady_null" + sfx] = z = await measure_steady_null(null, steady_payloads, steady_spans,
                                                                             settings)
                _print_section("", z, say)
                say("  sidecar's added latency (4 - 4b): " + ", ".join(
                    f"{q} {s[f'{q}_ms'] - z[f'{q}_ms']:+.2f} ms" for q in ("p50", "p95", "p99")))
    finally:
        for child in children:
            child.stop()


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f} spans/s"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(r: dict[str, Any], say: Callable[[str], None]) -> None:
    parse = r["parse"]["spans_per_s"]
    rows: list[tuple[str, str, str, str]] = [
        ("raw protobuf parse (1 thread, reference)", _fmt_rate(parse), "-", ""),
    ]
    pipe = r["pipeline"]
    rows.append(("in-process pipeline, 1 thread", f"{_fmt_rate(pipe['spans_per_s'])} "
                 f"({pipe['ratio_to_parse']:.3f} x parse)", f">= {TARGET_SPANS_PER_S:,}",
                 _verdict(pipe["spans_per_s"] >= TARGET_SPANS_PER_S)))
    if "grpc" in r:
        g = r["grpc"]
        rows.append(("end to end over gRPC, sidecar on 1 core", f"{_fmt_rate(g['spans_per_s'])} "
                     f"({g['ratio_to_parse']:.3f} x parse)", f">= {TARGET_SPANS_PER_S:,}",
                     _verdict(g["spans_per_s"] >= TARGET_SPANS_PER_S)))
    for n in r.get("steady_sizes", []):
        sfx = _steady_suffix(r["settings"], n)
        s, z = r.get("steady" + sfx), r.get("steady_null" + sfx)
        at = f"at {r['settings']['steady_rate']:,.0f} spans/s, {n} spans/req"
        if s is not None:
            rows.append((f"sidecar RSS {at} (max)", f"{s['rss_max_mib']:.1f} MiB (final {s['rss_final_mib']:.1f})",
                         f"< {TARGET_RSS_MIB:.0f} MiB", _verdict(s["rss_max_mib"] < TARGET_RSS_MIB)))
            rows.append((f"export call p99 {at}", f"{s['p99_ms']:.2f} ms (p50 {s['p50_ms']:.2f}, "
                         f"n={s['requests_timed']})", f"< {TARGET_P99_MS:.0f} ms",
                         _verdict(s["p99_ms"] < TARGET_P99_MS)))
        if z is not None:
            rows.append((f"export call p99, null gRPC server (transport floor), {n} spans/req",
                         f"{z['p99_ms']:.2f} ms (p50 {z['p50_ms']:.2f}, n={z['requests_timed']})", "-", ""))
        if s is not None and z is not None:
            rows.append((f"sidecar's added p99 (sidecar \u2212 null), {n} spans/req",
                         f"{s['p99_ms'] - z['p99_ms']:+.2f} ms (p50 {s['p50_ms'] - z['p50_ms']:+.2f})", "-", ""))
        if s is not None:
            rows.append((f"rows at aggregator / spans sent, {n} spans/req",
                         f"{s['rows_received']:,} / {s['spans_sent']:,}", "equal",
                         _verdict(s["rows_received"] == s["spans_sent"] and not s["failed_requests"])))
    say_table("Summary (targets: docs/targets.md)", ("figure", "measured", "target", ""), rows, say)


def _print_section(title: str, figures: dict[str, Any], say: Callable[[str], None]) -> None:
    say_figures(title, figures, say, skip=("profile_top20",))


@contextlib.contextmanager
def _log_file() -> Iterator[IO[bytes]]:
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="bench_sidecar_", suffix=".log", delete=False) as f:
        try:
            yield f
        finally:
            f.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_sidecar", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="short durations and fewer payloads (smoke run)")
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    p.add_argument("--steady-seconds", type=float, help="length of the steady phase [30; 5 with --quick]")
    p.add_argument("--steady-rate", type=float, help="spans/s of the steady phase [2000]")
    p.add_argument("--e2e-seconds", type=float, help="measured window of the gRPC phase [10; 3 with --quick]")
    p.add_argument("--concurrency", type=int, help="in-flight exports in the gRPC phase [8]")
    p.add_argument("--payloads", type=int, help="distinct prebuilt requests [200; 20 with --quick]")
    p.add_argument("--spans-per-request", type=int, help="spans per request of figures 1-3 [512]")
    p.add_argument("--steady-spans-per-request", type=int, metavar="N",
                   help="spans per request of the main steady measurement (4 and 4b) [512]; a second one at "
                        "64 spans per request, same spans/s, follows in the same run")
    p.add_argument("--in-process-only", action="store_true", help="figures 1 and 2 only (no child processes)")
    p.add_argument("--profile", action="store_true", help="print a cProfile top-20 of the in-process pipeline")
    p.add_argument("--serve-recorder", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--serve-null-otlp", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_recorder:
        return asyncio.run(serve_recorder())
    if args.serve_null_otlp is not None:
        return asyncio.run(serve_null_otlp(args.serve_null_otlp))

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children

    signal.signal(signal.SIGTERM, on_sigterm)
    settings = QUICK if args.quick else BenchSettings()
    overrides = {k: v for k, v in (("steady_seconds", args.steady_seconds), ("steady_rate", args.steady_rate),
                                   ("e2e_seconds", args.e2e_seconds), ("concurrency", args.concurrency),
                                   ("payloads", args.payloads), ("spans_per_request", args.spans_per_request),
                                   ("steady_spans_per_request", args.steady_spans_per_request))
                 if v is not None}
    settings = replace(settings, **overrides)

    def say(text: str) -> None:
        print(text, flush=True)

    client_cpu, sidecar_cpu = _pick_cpus()
    info = machine_info(client_cpu, sidecar_cpu)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})  # before any thread exists, so all of ours stay there
    say("LLM-Sentinel sidecar benchmark" + (" (--quick)" if args.quick else ""))
    say(f"  machine: {info['cpu_model']}, {info['cpus']} CPUs ({info['cpus_usable']} usable); "
        f"Python {info['python']} ({info['implementation']}); protobuf {info['protobuf']}; grpcio {info['grpcio']}")
    say(f"  1-minute load average at start: {info['load_average_at_start']:.2f} (other work on these CPUs "
        f"lowers every figure)")
    if client_cpu is None:
        say("  WARNING: fewer than 2 usable CPUs: client and sidecar share the CPU, nothing is pinned")
    else:
        say(f"  this process (parse, pipeline, gRPC client) on CPU {client_cpu}; sidecar process on CPU {sidecar_cpu}")
    t = time.perf_counter()
    payloads = build_trace_payloads(settings.payloads, settings.spans_per_request, PAYLOAD_SEED)
    spans_per_payload = [count_spans(ExportTraceServiceRequest.FromString(b)) for b in payloads]
    total_spans = sum(spans_per_payload)
    say(f"  payloads: {len(payloads)} distinct requests x {settings.spans_per_request} spans (GenAI chat spans), "
        f"{sum(map(len, payloads)) / total_spans:.0f} bytes/span, built in {time.perf_counter() - t:.1f}s")
    say("")

    results: dict[str, Any] = {"machine": info, "settings": asdict(settings)}
    results.update(run_in_process(payloads, settings, profile=args.profile))
    _print_section("1. raw protobuf parse (ExportTraceServiceRequest.FromString, 1 thread)", results["parse"], say)
    _print_section("2. in-process pipeline (parse + consume_traces -> sealed batches in the forward queue, "
                   "1 thread)", results["pipeline"], say)
    if args.profile:
        say("  cProfile of one pass over the payloads, top 20 by own time:")
        say(results["pipeline"]["profile_top20"])
    parse_rate = results["parse"]["spans_per_s"]

    if not args.in_process_only:
        results["steady_sizes"] = sizes = steady_sizes(settings)
        steady_sets: list[tuple[int, Sequence[bytes], Sequence[int]]] = []
        for n in sizes:
            if n == settings.spans_per_request:
                steady_sets.append((n, payloads, spans_per_payload))
                continue
            t = time.perf_counter()
            extra = build_trace_payloads(settings.payloads, n, PAYLOAD_SEED)
            steady_sets.append((n, extra, [count_spans(ExportTraceServiceRequest.FromString(b)) for b in extra]))
            say(f"  steady payloads: {len(extra)} distinct requests x {n} spans, built in "
                f"{time.perf_counter() - t:.1f}s")
        with _log_file() as log:
            say(f"3. end to end over gRPC ({settings.concurrency} exports in flight, "
                f"{settings.e2e_seconds:g}s measured after {settings.e2e_warmup_seconds:g}s warm-up; "
                f"sidecar log: {log.name})")
            try:
                asyncio.run(run_processes(payloads, spans_per_payload, settings, sidecar_cpu, client_cpu, log,
                                          say, parse_rate, results, steady_sets))
            except Exception as e:  # report what was measured so far, then fail
                say(f"  FAILED: {type(e).__name__}: {e}")
                results["error"] = f"{type(e).__name__}: {e}"
        if "error" not in results:
            with contextlib.suppress(OSError):
                os.unlink(log.name)
    results["machine"]["load_average_at_end"] = os.getloadavg()[0]
    report(results, say)
    say(f"1-minute load average: {info['load_average_at_start']:.2f} at start, "
        f"{results['machine']['load_average_at_end']:.2f} at end (the benchmark itself adds up to ~2)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"\nfigures written to {args.json}")
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
