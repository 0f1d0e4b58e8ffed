"""``sentinel demo``: a sidecar, a recording aggregator and generated LLM traffic, in one process.

It needs no broker and no cluster: traffic goes over real OTLP/gRPC on loopback into a real
sidecar, which forwards batches over HTTP to a small recording aggregator. Halfway through, a
latency spike and then an error burst are injected, and the demo prints what the sidecar's local
detectors reported about them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import grpc.aio
from prometheus_client import CollectorRegistry

from loadtest.recorder import RecordingAggregator
from loadtest.spans import build_trace_request
from sidecar.app import Sidecar
from sidecar.config import SidecarConfig

__all__ = ["run_demo"]

_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_SPANS_PER_REQUEST = 100


def _phase(t: float, seconds: float) -> str:
    if 0.45 * seconds <= t < 0.55 * seconds:
        return "latency_spike"
    if 0.70 * seconds <= t < 0.80 * seconds:
        return "error_burst"
    return "normal"


async def run_demo(*, seconds: float = 20.0, rate: float = 2000.0) -> int:
    recorder = RecordingAggregator()
    await recorder.start()
    sidecar = Sidecar(
        SidecarConfig(
            grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0", metrics_listen="127.0.0.1:0",
            aggregator_url=recorder.url, sidecar_id="demo", batch_timeout_s=0.25,
            # A short error-rate window suits a 20-second demo; the default (60 s) suits production.
            detection={"error_rate": {"window": "5s"}},
        ),
        registry=CollectorRegistry(),
    )
    await sidecar.start()
    ports = sidecar.ports()
    print(f"LLM-Sentinel demo: sidecar OTLP/gRPC on 127.0.0.1:{ports['grpc']}, OTLP/HTTP on "
          f"127.0.0.1:{ports['http']}, metrics on http://127.0.0.1:{ports['metrics']}/metrics")
    print(f"sending {rate:.0f} GenAI spans/s for {seconds:.0f}s; latency spike at "
          f"{0.45 * seconds:.0f}-{0.55 * seconds:.0f}s, error burst at {0.70 * seconds:.0f}-{0.80 * seconds:.0f}s\n")
    rng = random.Random(42)
    sent = 0
    by_phase: Counter[tuple[str, str]] = Counter()
    phase_of: dict[str, str] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        export = channel.unary_unary(_EXPORT, None, None)
        start = time.monotonic()
        next_report = 1.0
        while (t := time.monotonic() - start) < seconds:
            phase = _phase(t, seconds)
            request = build_trace_request(
                _SPANS_PER_REQUEST, rng=rng, start_unix_nano=time.time_ns(),
                latency_scale=6.0 if phase == "latency_spike" else 1.0,
                error_rate=0.6 if phase == "error_burst" else 0.01,
            )
            await export(request.SerializeToString(), timeout=10)
            sent += _SPANS_PER_REQUEST
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        phase_of[span.trace_id.hex()] = phase
            if t >= next_report:
                m = sidecar.metrics
                print(f"t={t:4.0f}s  phase={phase:<13} spans sent={sent:>7}  rows forwarded="
                      f"{int(m.forwarded_rows._value.get()):>7}  local anomalies="
                      f"{sum(len(b.anomalies) for b in recorder.batches):>5}")
                next_report += 1.0
            await asyncio.sleep(max(0.0, sent / rate - (time.monotonic() - start)))
    await sidecar.shutdown()
    # Attribute each anomaly to the phase in which its span was sent.
    for b in recorder.batches:
        for a in b.anomalies:
            by_phase[(phase_of.get(a.trace_id or "", "normal"), a.metric)] += 1
    await recorder.stop()
    print("\nlocal anomalies forwarded, by injected phase and metric:")
    for (phase, metric), count in sorted(by_phase.items()):
        print(f"  {phase:<14} {metric:<14} {count:>6}")
    # A slow provider shows as latency up and, per token, as throughput (tokens/s) down.
    spike = sum(c for (p, m), c in by_phase.items() if p == "latency_spike" and m in ("latency_ms", "tokens_per_s"))
    burst = sum(c for (p, m), c in by_phase.items() if p == "error_burst" and m == "error_rate")
    print(f"\nlatency spike detected: {'yes' if spike else 'NO'}; error burst detected: {'yes' if burst else 'NO'}")
    print(f"rows forwarded to the recording aggregator: {recorder.rows} (duplicates refused: {recorder.duplicates})")
    return 0 if spike and burst else 1
