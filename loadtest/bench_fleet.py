"""Fleet benchmark: N sidecars against one aggregator at a combined rate; nothing dropped, detection latency.

    python -m loadtest.bench_fleet [--sidecars 20] [--rate 20000] [--seconds 60] [--quick] [--json PATH]

Processes, all on loopback (``loadtest/README.md``, "Fleet benchmark"):

* one aggregator (``sentinel aggregator``) publishing alerts to the RabbitMQ broker on 127.0.0.1:5672
  (an exchange and a queue of this run's own, deleted at the end), alert de-duplication window
  ``--alert-dedup-window-s``, no storm limit in the way;
* ``--sidecars`` sidecars (``sentinel sidecar``, ids ``fleet-<i>``), forwarding to it;
* one sender: pre-built OTLP ``ExportTraceServiceRequest`` s from :mod:`loadtest.spans`, cycled,
  whose span start and end times are rewritten in the serialized bytes just before each export
  (fixed64 fields, so no re-serialization), so event time follows wall time; ``--rate`` spans/s
  spread evenly over the sidecars, open loop, one export in flight per sidecar, exports refused
  with UNAVAILABLE retried with backoff (as an SDK does);
* this process: the RabbitMQ consumer (and the SSE stream, ``GET /api/v1/stream``), CPU/RSS
  sampling (psutil), the sidecars' and the aggregator's metrics.

Nothing is pinned: with two CPUs every process shares them (the sidecars' figures are not per core).

**Detection latency.** After ``--warmup-s`` of clean traffic, every ``--inject-every-s`` seconds
the sender sends one sidecar (in turn) an extra export of ``--burst-spans`` failed calls (HTTP
500/429/504, status ERROR) of one (service, model) key -- a short error burst, the (service, model)
rotating over the 16 keys of the traffic -- and records the wall time just before the export.
The sidecars run with an error-rate window of ``--sidecar-error-window`` (5 s, as ``sentinel
demo``; the default 60 s window needs ~1,000 failed calls of one key to pass 20 %); the sidecar's
``error_rate`` anomaly is confirmed by the aggregator against the key's global error rate and
raises an ``error_burst`` alert at once. The latency of an injection is the arrival of its alert
on RabbitMQ minus the injection's wall time (one clock: one host). An alert belongs to an
injection when one of its example trace ids is one of the burst's (else: same service and model,
type ``error_burst``, the first to arrive after the injection). De-duplication: the fingerprint is
(type, service, model, metric, scope), and a detection within ``alerts.dedup_window_s`` of an open
alert with that fingerprint only updates it (not published again). The key rotation gives each of
16 consecutive injections its own fingerprint, and the window (30 s here; the default is 300 s)
is shorter than the rotation's period (16 x ``--inject-every-s`` = 80 s), so a repeated key raises
a new alert too, while the burst's own follow-up detections still fold into its alert. Grouping is
off (``alerts.group_by: ["..."]``, ``alerts.group_wait_s: 0``): one alert per series, sent as raised.

**Nothing dropped**: every sidecar's ``sentinel_sidecar_dropped_rows_total`` is 0, the rows the
aggregator ingested equal the spans the sidecars acknowledged to the sender (every span is an LLM
call), and no export failed for good.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any

import aiohttp
import httpx
import numpy as np
import numpy.typing as npt

from loadtest import targets
from loadtest.bench_aggregator import machine_info, marker_body, wait_marker
from loadtest.procs import ROOT, Child, child_env, free_port, log_tail, psutil, stop_process
from loadtest.spans import DEFAULT_MODELS, DEFAULT_SERVICES, build_trace_payloads, build_trace_request
from loadtest.text import say_table

__all__ = ["QUICK", "FleetSettings", "Retimer", "carried", "highest_carried", "main", "percentile", "run_fleet"]

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
PAYLOAD_SEED = 20_251_124
TARGET_LATENCY_P95_S = targets.DETECTION_LATENCY_P95_S
MIB = 1024 * 1024
NS = 1_000_000_000
_START_TAG, _END_TAG = 0x39, 0x41  # Span fields 7 and 8 (fixed64): start_time_unix_nano, end_time_unix_nano


@dataclass(frozen=True)
class FleetSettings:
    sidecars: int = 20
    rate: float = 20_000.0  # spans/s, all sidecars together
    seconds: float = 60.0  # of traffic
    spans_per_request: int = 200
    payloads: int = 40  # distinct pre-built requests, cycled
    warmup_s: float = 6.0  # clean traffic before the first injection
    inject_every_s: float = 5.0
    burst_spans: int = 100
    sidecar_error_window: str = "5s"
    alert_dedup_window_s: float = 30.0
    broker_url: str = BROKER_URL
    startup_timeout_s: float = 120.0
    drain_timeout_s: float = 60.0
    alert_wait_s: float = 10.0  # after the aggregator has analysed everything, for the last alerts


QUICK = FleetSettings(sidecars=5, rate=5_000.0, seconds=15.0, payloads=10, warmup_s=4.0, inject_every_s=3.0)


# ---------------------------------------------------------------------------------------------
# span times rewritten in serialized requests


class Retimer:
    """A serialized ``ExportTraceServiceRequest`` whose spans' start and end times are rewritten in place.

    Both are fixed64 fields of ``Span`` (7 and 8), so new values take exactly the old bytes. Their
    offsets are found once (tag byte, then the 8 bytes equal to a time the parsed request holds),
    checked against the parsed spans, and the first rewrite is parsed back and compared.
    """

    def __init__(self, payload: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest.FromString(payload)
        spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        starts = np.array([s.start_time_unix_nano for s in spans], dtype=np.uint64)
        ends = np.array([s.end_time_unix_nano for s in spans], dtype=np.uint64)
        b = np.frombuffer(payload, dtype=np.uint8)
        at = np.flatnonzero((b[:-8] == _START_TAG) | (b[:-8] == _END_TAG))
        values = b[at[:, None] + np.arange(1, 9)].copy().view("<u8").ravel()
        known = np.concatenate([starts, ends])
        hit = np.isin(values, known)
        start_at = at[hit & (b[at] == _START_TAG)]
        end_at = at[hit & (b[at] == _END_TAG)]
        if (len(start_at) != len(spans) or len(end_at) != len(spans)
                or not np.array_equal(values[np.searchsorted(at, start_at)], starts)
                or not np.array_equal(values[np.searchsorted(at, end_at)], ends)):
            raise ValueError("span times not found where expected in the serialized request")
        self.payload = payload
        self.spans = len(spans)
        self.durations = (ends - starts).astype(np.int64)
        self._index = (np.concatenate([start_at, end_at])[:, None] + np.arange(1, 9)).ravel()
        probe = self.at(2_000_000_000 * NS, NS)
        again = ExportTraceServiceRequest.FromString(probe)
        got = [(s.start_time_unix_nano, s.end_time_unix_nano)
               for rs in again.resource_spans for ss in rs.scope_spans for s in ss.spans]
        want_ends = self._ends(2_000_000_000 * NS, NS)
        if got != list(zip((want_ends - self.durations).tolist(), want_ends.tolist(), strict=True)):
            raise ValueError("rewriting span times changed more than the span times")

    def _ends(self, end_ns: int, spread_ns: int) -> npt.NDArray[np.int64]:
        n = self.spans
        return end_ns - spread_ns + (np.arange(1, n + 1, dtype=np.int64) * spread_ns) // n

    def at(self, end_ns: int, spread_ns: int) -> bytes:
        """The request with its calls ending evenly over ``(end_ns - spread_ns, end_ns]``, durations kept."""
        ends = self._ends(end_ns, spread_ns)
        values = np.concatenate([ends - self.durations, ends]).astype("<u8").view(np.uint8)
        buf = bytearray(self.payload)
        np.frombuffer(buf, dtype=np.uint8)[self._index] = values
        return bytes(buf)


# ---------------------------------------------------------------------------------------------
# the sender (child process)


def _keys() -> list[tuple[str, str]]:
    """The (service, request model) keys of the traffic, in injection order."""
    return [(s, m.request_model) for m in DEFAULT_MODELS for s in DEFAULT_SERVICES]


async def run_sender(cfg: dict[str, Any], say: Callable[[str], None], go: Callable[[], Any]) -> dict[str, Any]:
    """Open-loop exports to every target at ``rate / targets`` spans/s each, plus the injections."""
    import grpc
    import grpc.aio
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    targets: list[str] = cfg["targets"]
    n = len(targets)
    per_rate = cfg["rate"] / n
    pool = [Retimer(p) for p in build_trace_payloads(cfg["payloads"], cfg["spans_per_request"], cfg["seed"])]
    interval = cfg["spans_per_request"] / per_rate
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        for ch in channels:
            await asyncio.wait_for(ch.channel_ready(), 30.0)
        exports = [ch.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
                   for ch in channels]
        acked = [0] * n
        requests = [0] * n
        refused = [0] * n
        rejected = [0]
        failures: list[str] = []
        latencies: list[float] = []
        lateness: list[float] = []
        injections: list[dict[str, Any]] = []

        async def send(j: int, body: bytes, spans: int) -> bool:
            for attempt in range(30):
                t = time.perf_counter()
                try:
                    raw = await exports[j](body, timeout=10.0)
                except grpc.aio.AioRpcError as e:
                    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
                        refused[j] += 1
                        await asyncio.sleep(min(0.05 * 2 ** attempt, 1.0))
                        continue
                    failures.append(f"{e.code().name}: {e.details()}")
                    return False
                latencies.append(time.perf_counter() - t)
                lost = ExportTraceServiceResponse.FromString(raw).partial_success.rejected_spans
                rejected[0] += lost
                acked[j] += spans - lost
                requests[j] += 1
                return True
            failures.append("UNAVAILABLE 30 times: given up")
            return False

        say("READY")
        await go()
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.1
        t_end = t0 + cfg["seconds"]
        start_wall = time.time() + 0.1

        async def drive(j: int) -> None:
            k = 0
            while True:
                slot = t0 + (j / n) * interval + k * interval
                if slot >= t_end:
                    return
                delay = slot - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    lateness.append(-delay)
                r = pool[(k + j * len(pool) // n) % len(pool)]  # every sidecar cycles the whole pool
                await send(j, r.at(time.time_ns(), int(interval * NS)), r.spans)
                k += 1

        async def inject() -> None:
            g = np.random.default_rng(cfg["seed"] + 1)
            keys = _keys()
            models = {m.request_model: m for m in DEFAULT_MODELS}
            i = 0
            while True:
                slot = t0 + cfg["warmup_s"] + i * cfg["inject_every_s"]
                if slot >= t_end - 1.0:
                    return
                await asyncio.sleep(max(0.0, slot - loop.time()))
                j = i % n
                service, model = keys[i % len(keys)]
                burst = cfg["burst_spans"]
                request = build_trace_request(burst, rng=g, services=(service,), models=(models[model],),
                                              start_unix_nano=time.time_ns() - burst * 20_000_000, error_rate=1.0)
                trace_ids = [s.trace_id.hex() for rs in request.resource_spans for ss in rs.scope_spans
                             for s in ss.spans]
                body = request.SerializeToString()
                wall = time.time()
                ok = await send(j, body, burst)
                injections.append({"i": i, "wall": wall, "acked_after_s": time.time() - wall, "ok": ok,
                                   "sidecar": j, "service": service, "model": model, "spans": burst,
                                   "trace_ids": trace_ids})
                i += 1

        await asyncio.gather(*(drive(j) for j in range(n)), inject())
        elapsed = loop.time() - t0
    finally:
        for ch in channels:
            await ch.close(None)
    ms = np.asarray(latencies) * 1000.0
    late = np.asarray(lateness) * 1000.0
    injected = sum(x["spans"] for x in injections if x["ok"])
    return {
        "start_wall": start_wall,
        "seconds": elapsed,
        "spans_acked": sum(acked),
        "spans_acked_per_sidecar": acked,
        "injected_spans": injected,
        "requests": sum(requests),
        "spans_per_request": cfg["spans_per_request"],
        "refused_retried": sum(refused),
        "rejected_spans": rejected[0],
        "failed_requests": len(failures),
        "first_failure": failures[0] if failures else "",
        "achieved_spans_per_s": (sum(acked) - injected) / elapsed if elapsed > 0 else 0.0,
        "export_p50_ms": percentile(ms, 50),
        "export_p99_ms": percentile(ms, 99),
        "export_max_ms": float(ms.max()) if ms.size else math.nan,
        "late_slots": int(late.size),
        "late_slot_p99_ms": percentile(late, 99),
        "injections": injections,
    }


def serve_sender(config_path: str) -> int:
    """Child mode: print ``READY`` once connected, start on a line on stdin, print ``RESULT <json>``."""
    cfg = json.loads(Path(config_path).read_text())

    def say(text: str) -> None:
        print(text, flush=True)

    async def go() -> None:
        await asyncio.to_thread(sys.stdin.readline)

    result = asyncio.run(run_sender(cfg, say, go))
    say("RESULT " + json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# the orchestration


def percentile(values: Sequence[float] | npt.NDArray[Any], q: float) -> float:
    a = np.asarray(values, dtype=np.float64)
    return float(np.percentile(a, q)) if a.size else math.nan


def _broker_up(url: str) -> bool:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 5672), timeout=1.0):
            return True
    except OSError:
        return False


async def _scrape_labeled(http: httpx.AsyncClient, url: str) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    r = await http.get(url, timeout=10.0)
    r.raise_for_status()
    return [(s.name, dict(s.labels), float(s.value)) for fam in text_string_to_metric_families(r.text)
            for s in fam.samples]


def _sum(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def _by_label(samples: list[tuple[str, dict[str, str], float]], name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, lab, v in samples:
        if n == name:
            out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
    return out


class _Proc:
    """psutil bookkeeping of one child: CPU seconds at marks, RSS samples."""

    def __init__(self, name: str, ps: Any) -> None:
        self.name = name
        self.ps = ps
        self.rss: list[int] = []
        self.cpu0 = 0.0

    def cpu(self) -> float:
        try:
            t = self.ps.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return math.nan

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.rss.append(int(self.ps.memory_info().rss))


def _cpu_ticks() -> tuple[int, int, int]:
    """(steal, idle + iowait, total) jiffies over all CPUs from ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0, 0
    return (v[7] if len(v) > 7 else 0), v[3] + v[4], sum(v[:8])


class AlertFeed:
    """Alerts as they arrive: RabbitMQ (the run's own queue) and the SSE stream, with arrival wall times."""

    def __init__(self) -> None:
        self.amqp: list[tuple[float, dict[str, Any]]] = []
        self.sse: list[tuple[float, dict[str, Any]]] = []
        self._conn: Any = None
        self._channel: Any = None
        self._sse_task: asyncio.Task[None] | None = None

    async def start_amqp(self, url: str, queue: str) -> None:
        import aio_pika

        self._conn = await aio_pika.connect(url)
        self._channel = channel = await self._conn.channel()
        q = await channel.declare_queue(queue, passive=True)

        async def on_message(message: Any) -> None:
            self.amqp.append((time.time(), json.loads(message.body)))

        await q.consume(on_message, no_ack=True)

    async def cleanup_amqp(self, exchange: str, queue: str) -> None:
        if self._conn is None:
            return
        with contextlib.suppress(Exception):
            await self._channel.close()  # the consumer first: deleting its queue under it is logged as an error
        with contextlib.suppress(Exception):
            channel = await self._conn.channel()
            await channel.queue_delete(queue)
            await channel.exchange_delete(exchange)
        with contextlib.suppress(Exception):
            await self._conn.close()

    def start_sse(self, url: str) -> None:
        async def read() -> None:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
            async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as r:
                event = ""
                async for raw in r.content:
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:") and event == "alert":
                        self.sse.append((time.time(), json.loads(line[5:])))

        self._sse_task = asyncio.create_task(read())

    async def stop_sse(self) -> None:
        if self._sse_task is not None:
            self._sse_task.cancel()
            with contextlib.suppress(BaseException):
                await self._sse_task


def match_injections(injections: Sequence[dict[str, Any]], alerts: Sequence[tuple[float, dict[str, Any]]]
                     ) -> list[dict[str, Any]]:
    """For each injection, its first alert (see the module docstring) and the latencies."""
    from sentinel.alerts import parse_time

    out = []
    used: set[str] = set()
    for inj in injections:
        ids = set(inj["trace_ids"])
        best: tuple[float, dict[str, Any], str] | None = None
        for arrived, a in alerts:
            if a.get("alert_id") in used or arrived < inj["wall"]:
                continue
            by_trace = bool(ids & set((a.get("context") or {}).get("trace_ids") or []))
            by_key = (a.get("anomaly_type") == "error_burst" and a.get("service_name") == inj["service"]
                      and a.get("model") == inj["model"])
            if by_trace or by_key:
                how = "trace_id" if by_trace else "service+model"
                if best is None or arrived < best[0]:
                    best = (arrived, a, how)
        row: dict[str, Any] = {"i": inj["i"], "service": inj["service"], "model": inj["model"],
                               "sidecar": inj["sidecar"], "detected": best is not None}
        if best is not None:
            arrived, a, how = best
            used.add(str(a.get("alert_id")))
            raised = parse_time(a["timestamp"]) / NS if a.get("timestamp") else math.nan
            row.update(latency_s=arrived - inj["wall"], raised_after_s=raised - inj["wall"], matched_by=how,
                       alert_id=a.get("alert_id"), anomaly_type=a.get("anomaly_type"),
                       detection_method=a.get("detection_method"), severity=a.get("severity"))
        out.append(row)
    return out


async def run_fleet(settings: FleetSettings, say: Callable[[str], None], *, log_dir: str) -> dict[str, Any]:
    """One fleet run; the result dict (see ``report``). Every child is stopped before it returns."""
    s = settings
    run_id = uuid.uuid4().hex[:10]
    exchange, queue = f"bench.fleet.{run_id}", f"bench.fleet.{run_id}.all"
    use_amqp = _broker_up(s.broker_url)
    feed = AlertFeed()
    children: list[Child] = []
    sender: subprocess.Popen[str] | None = None
    result: dict[str, Any] = {"settings": asdict(s), "alert_channel": "rabbitmq" if use_amqp else "sse",
                              "amqp_exchange": exchange if use_amqp else None}
    if not use_amqp:
        say(f"  RabbitMQ not reachable at {s.broker_url}: alerts are read from the SSE stream instead")
    agg_port = free_port()
    agg_url = f"http://127.0.0.1:{agg_port}"
    agg_args = [sys.executable, "-m", "sentinel.cli", "aggregator", "--listen", f"127.0.0.1:{agg_port}",
                "--data-dir", os.path.join(log_dir, "aggregator-data"), "--grpc-listen", "", "--log-level", "warning",
                "--alerts-dedup-window-s", str(s.alert_dedup_window_s), "--alerts-storm-max-alerts", "100000",
                # One alert per series, sent as raised: each injection is its own key, and what is measured
                # is the pipeline's latency, not the grouping timers (group_wait would add 10 s to each).
                "--alerts-group-by", "...", "--alerts-group-wait-s", "0",
                "--amqp-exchange", exchange, "--amqp-queue", queue]
    agg_env = {"SENTINEL_AMQP_URL": s.broker_url} if use_amqp else {}
    agg = Child("aggregator", agg_args, log_dir=log_dir, env=agg_env)
    children.append(agg)
    try:
        async with httpx.AsyncClient() as http:
            t = time.perf_counter()
            agg.start()
            await agg.wait_http_ready(http, f"{agg_url}/readyz", s.startup_timeout_s)
            if use_amqp:
                deadline = time.monotonic() + 30.0
                while _sum(await _scrape_labeled(http, f"{agg_url}/metrics"),
                           "sentinel_aggregator_sink_connected", sink="amqp") < 1.0:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the aggregator's RabbitMQ sink did not connect within 30 s\n" + agg.tail())
                    await asyncio.sleep(0.2)
                await feed.start_amqp(s.broker_url, queue)
            feed.start_sse(f"{agg_url}/api/v1/stream")
            sidecars: list[tuple[Child, str, str]] = []
            for i in range(s.sidecars):
                grpc_port, metrics_port = free_port(), free_port()
                argv = [sys.executable, "-m", "sentinel.cli", "sidecar", "--grpc-listen", f"127.0.0.1:{grpc_port}",
                        "--http-listen", "", "--metrics-listen", f"127.0.0.1:{metrics_port}",
                        "--sidecar-id", f"fleet-{i}", "--log-level", "warning", "--aggregator-url", agg_url]
                env = {"SENTINEL_DETECTION": f"{{error_rate: {{window: {s.sidecar_error_window}}}}}"}
                c = Child(f"sidecar-{i}", argv, log_dir=log_dir, env=env, kind="sidecar")
                children.append(c)
                c.start()
                sidecars.append((c, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{metrics_port}"))
            await asyncio.gather(*(c.wait_http_ready(http, f"{m}/readyz", s.startup_timeout_s)
                                   for c, _, m in sidecars))
            say(f"  aggregator pid {agg.pid} ({agg_url}) and {s.sidecars} sidecars ready in "
                f"{time.perf_counter() - t:.1f}s; alerts on "
                + (f"RabbitMQ exchange {exchange}, queue {queue}" if use_amqp else "the SSE stream"))

            cfg = {"targets": [g for _, g, _ in sidecars], "rate": s.rate, "seconds": s.seconds,
                   "spans_per_request": s.spans_per_request, "payloads": s.payloads, "seed": PAYLOAD_SEED,
                   "warmup_s": s.warmup_s, "inject_every_s": s.inject_every_s, "burst_spans": s.burst_spans}
            cfg_path = Path(log_dir) / "sender.json"
            cfg_path.write_text(json.dumps(cfg))
            sender_log: IO[bytes] = open(Path(log_dir) / "sender.log", "ab")  # noqa: SIM115 (closed below)
            try:
                sender = subprocess.Popen([sys.executable, "-m", "loadtest.bench_fleet", "--serve-sender",
                                           str(cfg_path)], cwd=ROOT, env=child_env(), text=True,
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sender_log)
            finally:
                sender_log.close()
            assert sender.stdout is not None and sender.stdin is not None
            line = await asyncio.wait_for(asyncio.to_thread(sender.stdout.readline), s.startup_timeout_s)
            if line.strip() != "READY":
                raise RuntimeError("the sender did not start\n" + log_tail(Path(log_dir) / "sender.log"))
            procs = [_Proc("aggregator", agg.ps)] + [_Proc(c.name, c.ps) for c, _, _ in sidecars]
            procs.append(_Proc("sender", psutil.Process(sender.pid)))
            for p in procs:
                p.cpu0 = p.cpu()
                p.sample()
            ticks0 = _cpu_ticks()
            sender.stdin.write("GO\n")
            sender.stdin.flush()
            t_go = time.perf_counter()
            say(f"  sending {s.rate:,.0f} spans/s for {s.seconds:g}s ({s.rate / s.sidecars:,.0f} per sidecar, "
                f"{s.spans_per_request} spans per request); an error burst of {s.burst_spans} calls every "
                f"{s.inject_every_s:g}s from t={s.warmup_s:g}s")
            result_line: list[str] = []

            async def read_result() -> None:
                assert sender is not None and sender.stdout is not None
                while True:
                    text = await asyncio.to_thread(sender.stdout.readline)
                    if not text:
                        return
                    if text.startswith("RESULT "):
                        result_line.append(text[7:])
                        return

            reader = asyncio.create_task(read_result())
            while not reader.done():
                for p in procs:
                    p.sample()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), 1.0)
            t_sent = time.perf_counter()
            cpu_sent = {p.name: p.cpu() for p in procs}
            ticks1 = _cpu_ticks()
            if not result_line:
                raise RuntimeError("the sender ended without a result\n" + log_tail(Path(log_dir) / "sender.log"))
            sent = json.loads(result_line[0])
            sender.wait(10.0)

            # Drain: every sidecar forwards what it holds (sealed within batch_timeout_s, 1 s).
            deadline = time.monotonic() + s.drain_timeout_s
            side: list[list[tuple[str, dict[str, str], float]]] = []
            while True:
                side = list(await asyncio.gather(*(_scrape_labeled(http, f"{m}/metrics") for _, _, m in sidecars)))
                calls = sum(_sum(x, "sentinel_sidecar_llm_calls_total") for x in side)
                done = sum(_sum(x, "sentinel_sidecar_forwarded_rows_total")
                           + _sum(x, "sentinel_sidecar_dropped_rows_total") for x in side)
                if done >= calls or time.monotonic() > deadline:
                    break
                for p in procs:
                    p.sample()
                await asyncio.sleep(0.25)
            t_drained = time.perf_counter()
            # Then the aggregator's analysis: a marker batch behind everything (bench_aggregator).
            r = await http.post(f"{agg_url}/v1/ingest", content=marker_body(0),
                                headers={"Content-Type": "application/x-msgpack"}, timeout=30.0)
            r.raise_for_status()
            t_marker = await wait_marker(http, agg_url, 0, s.drain_timeout_s, poll_s=0.05)
            deadline = time.monotonic() + s.alert_wait_s
            while time.monotonic() < deadline:
                alerts = feed.amqp if use_amqp else feed.sse
                if all(any(r["detected"] for r in match_injections([inj], alerts)) for inj in sent["injections"]):
                    break
                await asyncio.sleep(0.25)
            agg_m = await _scrape_labeled(http, f"{agg_url}/metrics")
            for p in procs:
                p.sample()
        await feed.stop_sse()
    finally:
        if sender is not None:
            stop_process(sender)
            for pipe in (sender.stdin, sender.stdout):
                if pipe is not None:
                    pipe.close()
        for c in children[1:]:
            c.stop()
        if children:
            children[0].stop()
        if use_amqp:
            await feed.cleanup_amqp(exchange, queue)

    elapsed = t_sent - t_go
    dropped: dict[str, float] = {}
    for x in side:
        for reason, v in _by_label(x, "sentinel_sidecar_dropped_rows_total", "reason").items():
            dropped[reason] = dropped.get(reason, 0.0) + v
    sidecar_calls = int(sum(_sum(x, "sentinel_sidecar_llm_calls_total") for x in side))
    forwarded = int(sum(_sum(x, "sentinel_sidecar_forwarded_rows_total") for x in side))
    ingested = int(_sum(agg_m, "sentinel_aggregator_rows_ingested_total")) - 1  # the marker's row
    dropped_total = int(sum(dropped.values()))
    result["traffic"] = {k: v for k, v in sent.items() if k not in ("injections", "spans_acked_per_sidecar")}
    result["traffic"]["target_spans_per_s"] = s.rate
    result["traffic"]["achieved_ratio"] = sent["achieved_spans_per_s"] / s.rate
    result["sidecars"] = {
        "count": s.sidecars,
        "llm_calls": sidecar_calls,
        "forwarded_rows": forwarded,
        "dropped_rows": dropped_total,
        "dropped_rows_by_reason": {k: int(v) for k, v in dropped.items() if v},
        "refused_exports": int(sum(_sum(x, "sentinel_sidecar_requests_total", outcome="refused") for x in side)),
        "forward_retries": int(sum(_sum(x, "sentinel_sidecar_forward_retries_total") for x in side)),
        "drain_s": t_drained - t_sent,
    }
    outcomes = _by_label(agg_m, "sentinel_aggregator_batches_received_total", "outcome")
    result["aggregator"] = {
        "rows_ingested": ingested,
        "batches_by_outcome": {k: int(v) for k, v in outcomes.items() if v},
        "duplicate_batches": int(_sum(agg_m, "sentinel_aggregator_duplicate_batches_total")),
        "rows_late": int(_sum(agg_m, "sentinel_aggregator_rows_late_total")),
        "alerts_total": int(_sum(agg_m, "sentinel_aggregator_alerts_total")),
        "sink_sent_amqp": int(_sum(agg_m, "sentinel_aggregator_sink_sent_total", sink="amqp")),
        "analysis_done_after_drain_s": t_marker - t_drained,
    }
    result["nothing_dropped"] = (dropped_total == 0 and ingested == sent["spans_acked"] == sidecar_calls
                                 and sent["failed_requests"] == 0 and sent["rejected_spans"] == 0)
    result["kept_rate"] = result["traffic"]["achieved_ratio"] >= 0.98

    def res(names: Sequence[_Proc]) -> dict[str, float]:
        cpu = [(cpu_sent[p.name] - p.cpu0) / elapsed for p in names]
        rss = [max(p.rss) / MIB for p in names if p.rss]
        return {"cpu_cores_total": float(np.nansum(cpu)), "cpu_cores_max_one": float(np.nanmax(cpu)),
                "rss_max_mib_one": max(rss), "rss_sum_of_max_mib": sum(rss)}

    by_name = {p.name: p for p in procs}
    steal = ticks1[0] - ticks0[0]
    idle = ticks1[1] - ticks0[1]
    total = ticks1[2] - ticks0[2]
    result["resources"] = {
        "aggregator": res([by_name["aggregator"]]),
        "sidecars": res([p for p in procs if p.name.startswith("sidecar-")]),
        "sender": res([by_name["sender"]]),
        "machine_busy_pct": 100.0 * (total - idle) / total if total else math.nan,
        "machine_steal_pct": 100.0 * steal / total if total else math.nan,
        "cpus": os.cpu_count(),
    }
    alerts = feed.amqp if use_amqp else feed.sse
    matches = match_injections(sent["injections"], alerts)
    lat = [m["latency_s"] for m in matches if m["detected"]]
    raised = [m["raised_after_s"] for m in matches if m["detected"]]
    sse_matches = match_injections(sent["injections"], feed.sse)
    sse_lat = [m["latency_s"] for m in sse_matches if m["detected"]]
    matched_ids = {m.get("alert_id") for m in matches}
    result["detection"] = {
        "channel": result["alert_channel"],
        "injections": len(matches),
        "detected": len(lat),
        "p50_s": percentile(lat, 50),
        "p95_s": percentile(lat, 95),
        "max_s": float(max(lat)) if lat else math.nan,
        "raised_p50_s": percentile(raised, 50),
        "raised_p95_s": percentile(raised, 95),
        "sse_p50_s": percentile(sse_lat, 50),
        "sse_p95_s": percentile(sse_lat, 95),
        "sse_detected": len(sse_lat),
        "alerts_received": len(alerts),
        "other_alerts": sum(1 for _, a in alerts if a.get("alert_id") not in matched_ids),
        "other_alert_types": sorted({str(a.get("anomaly_type")) for _, a in alerts
                                     if a.get("alert_id") not in matched_ids}),
        "other_alerts_detail": [
            {"at_s": round(arrived - sent["start_wall"], 2), "anomaly_type": a.get("anomaly_type"),
             "service": a.get("service_name"), "model": a.get("model"), "detection_method": a.get("detection_method"),
             "summary": a.get("summary")}
            for arrived, a in alerts if a.get("alert_id") not in matched_ids][:50],
        "per_injection": matches,
    }
    return result


# ---------------------------------------------------------------------------------------------
# report


def latency_met(r: dict[str, Any]) -> bool:
    d = r["detection"]
    return bool(d["injections"]) and d["detected"] == d["injections"] and d["p95_s"] < TARGET_LATENCY_P95_S


def carried(r: dict[str, Any]) -> bool:
    """Nothing dropped, the rate kept, and every injection detected with p95 under the target."""
    return bool(r["nothing_dropped"] and r["kept_rate"] and latency_met(r))


def highest_carried(results: dict[str, Any]) -> float | None:
    runs = [results, *results.get("step_down", [])]
    rates = [float(r["settings"]["rate"]) for r in runs if "detection" in r and carried(r)]
    return max(rates) if rates else None


def summary_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, measured, target/verdict) rows."""
    t, sc, ag, res, d = r["traffic"], r["sidecars"], r["aggregator"], r["resources"], r["detection"]
    s = r["settings"]
    rows = [
        ("sidecars x target rate", f"{s['sidecars']} x {s['rate'] / s['sidecars']:,.0f} = {s['rate']:,.0f} spans/s",
         "20 x 1,000 = 20,000"),
        ("achieved rate (acknowledged spans/s)",
         f"{t['achieved_spans_per_s']:,.0f} ({t['achieved_ratio']:.3f} x target)",
         "kept up" if r["kept_rate"] else "NOT kept up"),
        ("spans acknowledged / rows ingested by the aggregator", f"{t['spans_acked']:,} / {ag['rows_ingested']:,}",
         "equal: " + ("yes" if t["spans_acked"] == ag["rows_ingested"] else "NO")),
        ("rows dropped by sidecars (all reasons)", f"{sc['dropped_rows']:,}"
         + (f" {sc['dropped_rows_by_reason']}" if sc["dropped_rows"] else ""),
         "0: " + ("yes" if sc["dropped_rows"] == 0 else "NO")),
        ("exports refused (UNAVAILABLE, retried) / failed for good",
         f"{t['refused_retried']:,} / {t['failed_requests']:,}", "-"),
        ("nothing dropped", "yes" if r["nothing_dropped"] else "NO", ""),
        (f"detection latency, injection -> alert on {d['channel']}",
         f"p50 {d['p50_s']:.2f} s, p95 {d['p95_s']:.2f} s, max {d['max_s']:.2f} s "
         f"({d['detected']}/{d['injections']} detected)",
         f"p95 < {TARGET_LATENCY_P95_S:g} s: " + ("met" if latency_met(r) else "NOT met")),
        ("  of which until the alert was raised", f"p50 {d['raised_p50_s']:.2f} s, p95 {d['raised_p95_s']:.2f} s", "-"),
        ("aggregator CPU / RSS", f"{res['aggregator']['cpu_cores_total']:.2f} cores / "
         f"{res['aggregator']['rss_max_mib_one']:.0f} MiB max", "-"),
        (f"{s['sidecars']} sidecars CPU / RSS", f"{res['sidecars']['cpu_cores_total']:.2f} cores in all "
         f"(max {res['sidecars']['cpu_cores_max_one']:.3f} one) / {res['sidecars']['rss_max_mib_one']:.0f} MiB max "
         f"one, {res['sidecars']['rss_sum_of_max_mib']:,.0f} MiB all", "-"),
        ("sender CPU", f"{res['sender']['cpu_cores_total']:.2f} cores", "-"),
        ("machine busy / steal", f"{res['machine_busy_pct']:.0f} % / {res['machine_steal_pct']:.1f} % of "
         f"{res['cpus']} CPUs", "-"),
    ]
    return rows


def report(r: dict[str, Any], say: Callable[[str], None]) -> None:
    rows = summary_rows(r)
    say_table("Summary", ("figure", "measured", "target"), rows, say)
    d = r["detection"]
    say(f"  alerts received: {d['alerts_received']} ({d['other_alerts']} not from an injection"
        + (f": {', '.join(d['other_alert_types'])}" if d["other_alert_types"] else "") + "); "
        f"analysis finished {r['aggregator']['analysis_done_after_drain_s']:.2f}s after the sidecars drained; "
        f"export call p50 {r['traffic']['export_p50_ms']:.1f} ms, p99 {r['traffic']['export_p99_ms']:.1f} ms")
    for o in d.get("other_alerts_detail", [])[:10]:
        say(f"    not injected: t={o['at_s']:.1f}s {o['anomaly_type']} {o['service']} / {o['model']} "
            f"({o['detection_method']}): {o['summary']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_fleet", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 sidecars at 5,000 spans/s for 15 s")
    p.add_argument("--sidecars", type=int, help="sidecar processes [20]")
    p.add_argument("--rate", type=float, help="spans/s, all sidecars together [20000]")
    p.add_argument("--seconds", type=float, help="seconds of traffic [60]")
    p.add_argument("--spans-per-request", type=int, help="spans per export request [200]")
    p.add_argument("--burst-spans", type=int, help="failed calls per injected burst [100]")
    p.add_argument("--inject-every-s", type=float, help="seconds between injections [5]")
    p.add_argument("--warmup-s", type=float, help="clean traffic before the first injection [6]")
    p.add_argument("--alert-dedup-window-s", type=float, help="the aggregator's alerts.dedup_window_s [30]")
    p.add_argument("--broker-url", help=f"RabbitMQ [{BROKER_URL}]")
    p.add_argument("--step-down", default="", metavar="RATES",
                   help="if --rate is not carried, try these lower rates (comma-separated spans/s, e.g. 15000,10000) "
                        "until one is [none]")
    p.add_argument("--step-seconds", type=float, default=30.0, help="seconds of traffic of each step-down run [30]")
    p.add_argument("--json", metavar="PATH", help="also write every figure as JSON to PATH")
    p.add_argument("--keep-logs", action="store_true", help="keep the children's logs and data directory")
    p.add_argument("--serve-sender", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_sender:
        return serve_sender(args.serve_sender)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop the children

    signal.signal(signal.SIGTERM, on_sigterm)
    settings = QUICK if args.quick else FleetSettings()
    overrides = {k: v for k, v in (("sidecars", args.sidecars), ("rate", args.rate), ("seconds", args.seconds),
                                   ("spans_per_request", args.spans_per_request), ("burst_spans", args.burst_spans),
                                   ("inject_every_s", args.inject_every_s), ("warmup_s", args.warmup_s),
                                   ("alert_dedup_window_s", args.alert_dedup_window_s),
                                   ("broker_url", args.broker_url)) if v is not None}
    settings = replace(settings, **overrides)

    def say(text: str) -> None:
        print(text, flush=True)

    info = machine_info()
    say("LLM-Sentinel fleet benchmark" + (" (--quick)" if args.quick else ""))
    say(f"  machine: {info['cpu_model']}, {info['cpus']} CPUs ({info['cpus_usable']} usable), nothing pinned: the "
        f"aggregator, {settings.sidecars} sidecars and the sender share them; Python {info['python']}")
    say(f"  load average at start: {' '.join(f'{x:.2f}' for x in info['load_average'])}")
    log_dir = tempfile.mkdtemp(prefix="bench_fleet_")
    say(f"  logs and data: {log_dir}")
    results: dict[str, Any] = {"machine": info}
    status = 0
    try:
        results.update(asyncio.run(run_fleet(settings, say, log_dir=log_dir)))
        report(results, say)
        if not results["nothing_dropped"]:
            status = 1
        steps = [r for r in (float(x) for x in args.step_down.split(",") if x) if r < settings.rate]
        if steps and not carried(results):
            say(f"\n{settings.rate:,.0f} spans/s was not carried (nothing dropped, rate kept and detection p95 < "
                f"{TARGET_LATENCY_P95_S:g} s); trying lower rates for {args.step_seconds:g}s each: "
                + ", ".join(f"{r:,.0f}" for r in steps))
            results["step_down"] = []
            for rate in steps:
                step_dir = tempfile.mkdtemp(prefix=f"bench_fleet_{rate:.0f}_", dir=log_dir)
                step = asyncio.run(run_fleet(replace(settings, rate=rate, seconds=args.step_seconds), say,
                                             log_dir=step_dir))
                results["step_down"].append(step)
                report(step, say)
                if carried(step):
                    break
        results["highest_carried_rate"] = highest_carried(results)
        h = results["highest_carried_rate"]
        say(f"\nhighest rate carried by {settings.sidecars} sidecars on this machine (nothing dropped, rate kept, "
            f"detection p95 < {TARGET_LATENCY_P95_S:g} s): " + (f"{h:,.0f} spans/s" if h else "none of those tried"))
    except Exception as e:
        say(f"  FAILED: {type(e).__name__}: {e}")
        results["error"] = f"{type(e).__name__}: {e}"
        status = 2
    results["machine"]["load_average_at_end"] = list(os.getloadavg())
    say(f"load average at end: {' '.join(f'{x:.2f}' for x in results['machine']['load_average_at_end'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
        say(f"figures written to {args.json}")
    if status == 0 and not args.keep_logs:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)
    elif status:
        say(f"  logs kept in {log_dir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
