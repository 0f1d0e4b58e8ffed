"""``sentinel demo``: an aggregator, a sidecar and LLM traffic with injected incidents, in one process.

It needs no broker and no cluster (the embedded defaults: alerts in a SQLite store in a temporary
directory, on the API, the live stream and the page). Generated GenAI spans go over real
OTLP/gRPC on loopback into a real sidecar, which forwards feature rows to a real aggregator.
Two incidents are injected: a latency spike on one service, then an error burst on another.
Alerts are printed as the aggregator raises them; the page's URL is printed at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections import Counter
from typing import Any

import grpc.aio
from prometheus_client import CollectorRegistry

from aggregator.alerting.hub import Subscription
from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from sentinel.cli.spans import DEFAULT_SERVICES, build_trace_request
from sentinel.config import load
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig

__all__ = ["DEMO_PHASES", "format_alert", "run_demo"]

_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_TICK_S = 0.1
SPIKE_SERVICE = "support-chat"
BURST_SERVICE = "search-rag"
#: (start, end) in seconds since the traffic started; latency x10 on one service, 60 % errors on another.
DEMO_PHASES = {"latency_spike": (8.0, 16.0), "error_burst": (20.0, 28.0)}
#: Normal traffic of the last two minutes, sent at start: the baselines a real deployment has
#: learned before an incident (without it the first seconds' thin baselines decide).
WARMUP_S = 120.0
_SPAN_GAP_NS = 20_000_000  # build_trace_request starts calls 20 ms apart
WARMUP_SPANS = int(WARMUP_S * 1e9 / _SPAN_GAP_NS)


def _phase(t: float) -> str:
    for name, (start, end) in DEMO_PHASES.items():
        if start <= t < end:
            return name
    return "normal"


def format_alert(event: dict[str, Any], t: float) -> str:
    a = event["alert"]
    return (f"[{t:5.1f}s] {event['event'].upper():<8} {a['severity'].upper():<8} {a['anomaly_type']:<16} "
            f"{a.get('summary') or ''}")


async def _print_alerts(sub: Subscription, start: float, seen: Counter[tuple[str, str]],
                        notified: dict[str, int]) -> None:
    raised: set[str] = set()  # ids announced as alerts (a symptom folded later is taken back out)
    async for event in sub:
        a = event["alert"]
        if event["event"] == "alert":
            seen[(a["anomaly_type"], a["service_name"] or "")] += 1
            raised.add(a["alert_id"])
        elif str(a.get("resolved_reason") or "").startswith("folded into"):  # an explained symptom: not its own alert
            if a["alert_id"] in raised:
                raised.discard(a["alert_id"])
                seen[(a["anomaly_type"], a["service_name"] or "")] -= 1
            print(format_alert({"event": "folded", "alert": a}, time.monotonic() - start), flush=True)
        sent = int(a.get("notifications") or 0)
        if sent > notified.get(a["alert_id"], 0):  # what a pager would get: one per group (group_wait)
            notified[a["alert_id"]] = sent
            print(format_alert({"event": "notify", "alert": a}, time.monotonic() - start), flush=True)
        elif event["event"] != "update":  # updates (repeat detections) would flood the terminal
            print(format_alert(event, time.monotonic() - start), flush=True)


async def _start_aggregator(data_dir: str, listen: str) -> Aggregator:
    settings: dict[str, Any] = {
        "listen": listen, "data_dir": data_dir, "grpc_listen": "127.0.0.1:0", "shutdown_grace_s": 1.0,
        # Fast enough to see resolutions within the demo; production defaults are five minutes.
        "alerts": {"resolve_after_s": 20.0},
    }
    agg = Aggregator(load(AggregatorConfig, data=settings, env={}), registry=CollectorRegistry())
    try:
        await agg.start()
    except OSError:
        if listen.endswith(":0"):
            raise
        await agg.shutdown()
        print(f"({listen} is in use: using a free port)")
        settings["listen"] = "127.0.0.1:0"
        agg = Aggregator(AggregatorConfig(**settings), registry=CollectorRegistry())
        await agg.start()
    return agg


async def run_demo(*, seconds: float = 35.0, rate: float = 1000.0, listen: str = "127.0.0.1:9090",
                   keep_running: bool = False, data_dir: str | None = None) -> int:
    """Run the demo; exit status 0 when both injected incidents raised an alert."""
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="sentinel-demo-")
    agg = await _start_aggregator(data_dir or (tmp.name if tmp else "."), listen)
    sidecar = Sidecar(
        SidecarConfig(
            grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
            aggregator_url=agg.url, sidecar_id="demo", batch_timeout_s=0.25,
            # A short error-rate window suits a short demo; the default (60 s) suits production.
            detection={"error_rate": {"window": "5s"}},
        ),
        registry=CollectorRegistry(),
    )
    await sidecar.start()
    ports = sidecar.ports()
    spike, burst = DEMO_PHASES["latency_spike"], DEMO_PHASES["error_burst"]
    print("LLM-Sentinel demo (embedded defaults: no broker, no cluster)")
    print(f"  web page:  {agg.url}/        API: {agg.url}/api/v1/alerts        live: {agg.url}/api/v1/stream")
    print(f"  sidecar:   OTLP/gRPC 127.0.0.1:{ports['grpc']}, OTLP/HTTP 127.0.0.1:{ports['http']}")
    print(f"  traffic:   {rate:.0f} GenAI spans/s for {seconds:.0f} s over {len(DEFAULT_SERVICES)} services; "
          f"latency x10 on {SPIKE_SERVICE} at {spike[0]:.0f}-{spike[1]:.0f} s, 60 % errors on {BURST_SERVICE} "
          f"at {burst[0]:.0f}-{burst[1]:.0f} s\n", flush=True)
    start = time.monotonic()
    seen: Counter[tuple[str, str]] = Counter()
    sub = agg.hub.subscribe()
    notified: dict[str, int] = {}  # alert id -> notifications sent
    printer = asyncio.create_task(_print_alerts(sub, start, seen, notified))
    rng = random.Random(42)
    others = tuple(s for s in DEFAULT_SERVICES if s not in (SPIKE_SERVICE, BURST_SERVICE))
    sent = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            export = channel.unary_unary(_EXPORT, None, None)
            history_start = time.time_ns() - int(WARMUP_S * 1e9)
            step = WARMUP_SPANS // 60
            for i in range(60):  # back to back, ending now (live traffic must not be older than history)
                request = build_trace_request(step, rng=rng, start_unix_nano=history_start + i * step * _SPAN_GAP_NS)
                await export(request.SerializeToString(), timeout=10)
            print(f"sent {WARMUP_SPANS} spans of normal history (the last {WARMUP_S:.0f} s); live traffic now",
                  flush=True)
            start = time.monotonic()
            while (t := time.monotonic() - start) < seconds:
                phase = _phase(t)
                n = max(4, int(rate * _TICK_S))
                now = time.time_ns()
                parts = [
                    build_trace_request(n // 4, rng=rng, services=(SPIKE_SERVICE,), start_unix_nano=now,
                                        latency_scale=10.0 if phase == "latency_spike" else 1.0),
                    build_trace_request(n // 4, rng=rng, services=(BURST_SERVICE,), start_unix_nano=now,
                                        error_rate=0.6 if phase == "error_burst" else 0.01),
                    build_trace_request(n - 2 * (n // 4), rng=rng, services=others, start_unix_nano=now),
                ]
                for request in parts:
                    await export(request.SerializeToString(), timeout=10)
                sent += n
                await asyncio.sleep(max(0.0, sent / rate - (time.monotonic() - start)))
        print(f"\ntraffic done: {sent} spans sent", flush=True)
        await asyncio.sleep(2.0)  # the last batches reach the aggregator and its analysis
        if keep_running:
            print(f"the page stays up at {agg.url}/ — Ctrl-C to stop", flush=True)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
    finally:
        await sidecar.shutdown()
        await agg.shutdown()
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
        if tmp is not None:
            tmp.cleanup()
    # A slow provider shows as latency up and, per call, as tokens per second down (throughput_drop).
    slow = sum(n for (kind, svc), n in seen.items()
               if svc == SPIKE_SERVICE and kind in ("latency_spike", "throughput_drop"))
    bursts = seen[("error_burst", BURST_SERVICE)]
    by_type = Counter(kind for (kind, _svc) in (+seen).elements())
    print(f"\nalerts raised: {dict(by_type) or 'none'}; notifications sent: {sum(notified.values())} "
          f"(one per alert group after alerts.group_wait_s; its members are the models, regions, users)")
    print(f"slow provider on {SPIKE_SERVICE} alerted: {'yes' if slow else 'NO'}; "
          f"error burst on {BURST_SERVICE} alerted: {'yes' if bursts else 'NO'}")
    return 0 if slow and bursts else 1
