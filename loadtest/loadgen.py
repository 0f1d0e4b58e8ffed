"""The scenario player: plays a :class:`~loadtest.scenario.Scenario`'s traffic into sidecars, in (compressed) time.

    stats = await play(scenario, ["127.0.0.1:4317", "127.0.0.1:4417"], mode="raw",
                       on_incident=lambda inc, edge, wall_ns: print(inc.id, edge))

    python -m loadtest loadtest/scenarios/quick.yaml --endpoint 127.0.0.1:4317 --endpoint 127.0.0.1:4417
    python -m loadtest loadtest/scenarios/quick.yaml --dry-run

**Sidecars.** ``endpoints`` is a list of OTLP addresses (``host:port`` for gRPC, ``http://host:port``
for OTLP/HTTP) or a map of sidecar name to address. Service ``i`` of ``scenario.services`` always
goes to sidecar ``i mod n`` (:func:`sidecar_for_service`), so each service's traffic passes through
one sidecar, as it would through the sidecar of its pods.

**Time.** Simulated time runs ``speedup`` times as fast as the wall clock: a wall-clock loop ticks
every :data:`TICK_S` (0.1 s) and each tick sends the calls that start in the simulated interval
since the last tick, ``[sim_done, min(duration_s, speedup · wall elapsed))`` — at most
:data:`MAX_STEP_S` wall seconds' worth at once, so a sender that cannot keep up falls behind
(measured as lag) instead of sending ever larger bursts. A call at simulated offset ``t`` has the
event time ``start_unix_nano + t · 1e9`` (span start; its end is ``latency_ms`` later).
``start_unix_nano`` defaults to the wall clock when play starts: event time starts now and then
runs ahead of the wall clock (by up to ``duration_s · (1 − 1/speedup)`` at the end). The other
choice, ``--event-time end-now`` (``start_unix_nano=default_start_unix_nano(scenario)``, i.e.
``now − duration_s · (1 − 1/speedup)``), keeps event times behind the wall clock, but then every
call more than ``late_after_s`` (300 s) of event time before the end is *late* at the aggregator:
counted, not shown to the windowed detectors, its sidecar-local anomalies not confirmed — old data
must not page as if it were now — so incidents in it are not detected by design.

**Incidents.** ``on_incident(incident, "start", wall_ns)`` is called (with ``time.time_ns()``)
just before the first tick whose interval contains the incident's ``start_s`` hands its calls to
the transport, and ``on_incident(incident, "end", wall_ns)`` just after the tick containing its
last instant (``end_s``) did. If play stops early (``stop`` set) incidents that started and did
not end get their ``"end"`` then.

**Modes.** ``raw``: the OTLP requests are built from the traffic model
(:meth:`~loadtest.traffic.TrafficModel.requests`, one per service and tick, at most
:data:`MAX_SPANS_PER_REQUEST` spans each), serialised once and sent as bytes with grpc.aio generic
unary calls to ``/opentelemetry.proto.collector.trace.v1.TraceService/Export``, up to
:data:`MAX_IN_FLIGHT` per sidecar. ``sdk-grpc`` / ``sdk-http``: the real OpenTelemetry SDK, as an
instrumented app would use it: a ``TracerProvider`` per (service, region) with its ``Resource``,
a ``BatchSpanProcessor`` and an ``OTLPSpanExporter`` (gRPC or HTTP/protobuf); every span is created
with ``start_span(start_time=…)`` / ``end(end_time=…)`` and the same attributes. The SDK is far
slower than raw sending (``loadtest/SCENARIOS.md`` has the measured maxima).

Export errors are counted (``PlayStats.failures``, ``failed_spans``), never raised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc
import grpc.aio
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from loadtest.scenario import Incident, Scenario, ScenarioError, load_scenario
from loadtest.spans import span_name
from loadtest.traffic import ERROR_TYPES, CallBatch, TrafficModel

__all__ = [
    "EXPORT_METHOD",
    "MAX_IN_FLIGHT",
    "MAX_SPANS_PER_REQUEST",
    "MAX_STEP_S",
    "MODES",
    "TICK_S",
    "PlayStats",
    "default_start_unix_nano",
    "main",
    "play",
    "sidecar_for_service",
]

log = logging.getLogger(__name__)

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
Mode = Literal["raw", "sdk-grpc", "sdk-http"]
MODES: tuple[Mode, ...] = ("raw", "sdk-grpc", "sdk-http")
TICK_S = 0.1
MAX_STEP_S = 0.5
MAX_IN_FLIGHT = 8
MAX_SPANS_PER_REQUEST = 1000
EXPORT_TIMEOUT_S = 10.0
LAG_WARN_S = 1.0
_MAX_ERRORS = 10

OnIncident = Callable[[Incident, str, int], None]


@dataclass
class PlayStats:
    """What :func:`play` did. Spans count calls acknowledged by a sidecar (``spans_per_sidecar``),
    failed in an export (``failed_spans``), or, in the SDK modes, dropped by a full span queue."""

    mode: str
    sidecars: dict[str, str]                                   # name -> endpoint
    services: dict[str, str] = field(default_factory=dict)    # service -> sidecar name
    start_unix_nano: int = 0
    calls: int = 0                                             # calls generated (spans handed to the transport)
    spans_sent: int = 0                                        # acknowledged
    spans_per_sidecar: dict[str, int] = field(default_factory=dict)
    failed_spans: int = 0
    dropped_spans: int = 0                                     # SDK queue overflow (created, never exported)
    requests: int = 0                                          # export requests acknowledged
    failures: int = 0                                          # export requests that failed
    errors: list[str] = field(default_factory=list)            # the first distinct error messages
    sim_s: float = 0.0                                         # simulated seconds played
    wall_s: float = 0.0                                        # from start to the last export answered
    spans_per_s: float = 0.0                                   # spans_sent / wall_s
    lag_s: float = 0.0                                         # behind schedule after the last tick
    max_lag_s: float = 0.0                                     # the most behind schedule at any tick
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)

    def note_error(self, message: str) -> None:
        if message not in self.errors and len(self.errors) < _MAX_ERRORS:
            self.errors.append(message)


def sidecar_for_service(scenario: Scenario, n: int) -> dict[str, int]:
    """Which sidecar (0 .. n-1) each service's traffic goes through: service ``i`` → ``i mod n``."""
    if n < 1:
        raise ValueError("need at least one sidecar")
    return {s: i % n for i, s in enumerate(scenario.services)}


def default_start_unix_nano(scenario: Scenario, now_ns: int | None = None) -> int:
    """``now − duration_s · (1 − 1/speedup)``: the scenario's last event time is about when it is sent."""
    now = time.time_ns() if now_ns is None else now_ns
    return now - round(scenario.duration_s * (1.0 - 1.0 / scenario.speedup) * 1e9)


def _sidecars(endpoints: Mapping[str, str] | Sequence[str]) -> dict[str, str]:
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    named = dict(endpoints) if isinstance(endpoints, Mapping) else {e: e for e in endpoints}
    if not named:
        raise ValueError("endpoints: need at least one sidecar address")
    return named


def _grpc_target(endpoint: str) -> str:
    for scheme in ("http://", "https://", "grpc://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme):].rstrip("/")
    return endpoint


def _http_url(endpoint: str) -> str:
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    scheme, _, rest = url.partition("://")
    return url if "/" in rest.rstrip("/") else f"{scheme}://{rest.rstrip('/')}/v1/traces"


class _Sender:
    """One transport (raw or SDK) for all sidecars."""

    def __init__(self, model: TrafficModel, stats: PlayStats, route: dict[str, str], names: dict[str, str]) -> None:
        self.model = model
        self.stats = stats
        self.route = route          # service -> sidecar name
        self.endpoints = names      # sidecar name -> endpoint
        self.lock = threading.Lock()

    def ok(self, sidecar: str, spans: int) -> None:
        with self.lock:
            self.stats.spans_sent += spans
            self.stats.spans_per_sidecar[sidecar] = self.stats.spans_per_sidecar.get(sidecar, 0) + spans
            self.stats.requests += 1

    def failed(self, spans: int, message: str) -> None:
        with self.lock:
            self.stats.failed_spans += spans
            self.stats.failures += 1
            self.stats.note_error(message)

    async def start(self) -> None:
        pass

    async def send(self, calls: CallBatch, sim_t0: float, sim_t1: float, start_unix_nano: int) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class _RawSender(_Sender):
    async def start(self) -> None:
        opts = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        self.channels = {name: grpc.aio.insecure_channel(_grpc_target(ep), options=opts)
                         for name, ep in self.endpoints.items()}
        self.exports = {name: ch.unary_unary(EXPORT_METHOD, None, None) for name, ch in self.channels.items()}
        self.slots = {name: asyncio.Semaphore(MAX_IN_FLIGHT) for name in self.endpoints}
        self.tasks: set[asyncio.Task[None]] = set()

    async def send(self, calls: CallBatch, sim_t0: float, sim_t1: float, start_unix_nano: int) -> None:
        for lo in range(0, len(calls), MAX_SPANS_PER_REQUEST):
            part = calls.take(slice(lo, lo + MAX_SPANS_PER_REQUEST)) if len(calls) > MAX_SPANS_PER_REQUEST else calls
            for service, request in self.model.requests(sim_t0, sim_t1, start_unix_nano, calls=part).items():
                name = self.route[service]
                n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                body = request.SerializeToString()
                await self.slots[name].acquire()
                task = asyncio.create_task(self._export(name, body, n))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _export(self, name: str, body: bytes, n: int) -> None:
        try:
            await self.exports[name](body, timeout=EXPORT_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            self.failed(n, f"{name}: {e.code().name}: {e.details()}")
        except Exception as e:  # never let one export end the play
            self.failed(n, f"{name}: {type(e).__name__}: {e}")
        else:
            self.ok(name, n)
        finally:
            self.slots[name].release()

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for ch in self.channels.values():
            await ch.close(None)


class _SdkSender(_Sender):
    def __init__(self, model: TrafficModel, stats: PlayStats, route: dict[str, str], names: dict[str, str],
                 protocol: str) -> None:
        super().__init__(model, stats, route, names)
        self.protocol = protocol
        self.created = 0

    async def start(self) -> None:
        await asyncio.to_thread(self._build)

    def _build(self) -> None:
        self.providers: dict[tuple[int, int], TracerProvider] = {}
        self.tracers: dict[tuple[int, int], Any] = {}
        m = self.model
        for s, service in enumerate(m.services):
            name = self.route[service]
            for r in range(len(m.regions)):
                provider = TracerProvider(resource=Resource.create(dict(m.resource_attributes(s, r, 0))))
                exporter = _CountingExporter(self._exporter(self.endpoints[name]), self, name)
                provider.add_span_processor(BatchSpanProcessor(
                    exporter, max_queue_size=1 << 16, schedule_delay_millis=100, max_export_batch_size=512,
                    export_timeout_millis=int(EXPORT_TIMEOUT_S * 1000)))
                self.providers[(s, r)] = provider
                self.tracers[(s, r)] = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.1b0")

    def _exporter(self, endpoint: str) -> SpanExporter:
        if self.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

            return GrpcExporter(endpoint=_grpc_target(endpoint), insecure=True, timeout=EXPORT_TIMEOUT_S)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        return HttpExporter(endpoint=_http_url(endpoint), timeout=EXPORT_TIMEOUT_S)

    async def send(self, calls: CallBatch, sim_t0: float, sim_t1: float, start_unix_nano: int) -> None:
        if len(calls):
            await asyncio.to_thread(self._emit, calls, start_unix_nano)

    def _emit(self, calls: CallBatch, start_unix_nano: int) -> None:
        m = self.model
        ids = m.span_ids(calls)
        starts = (start_unix_nano + (calls.t * 1e9).round()).astype("int64")
        ends = starts + (calls.latency_ms * 1e6).round().astype("int64")
        for i in range(len(calls)):
            tracer = self.tracers[(int(calls.service[i]), int(calls.region[i]))]
            prof = m.profiles[int(calls.model[i])]
            attrs = dict(m.span_attributes(calls, i, ids[24 * i:24 * i + 6].hex()))
            span = tracer.start_span(span_name("genai", prof), kind=SpanKind.CLIENT, start_time=int(starts[i]),
                                     attributes=attrs)
            for name, at, event_attrs in m.span_events(calls, i, int(starts[i])):
                span.add_event(name, event_attrs, timestamp=at)
            e = int(calls.error_type[i])
            if e >= 0:
                span.set_status(Status(StatusCode.ERROR, f"{ERROR_TYPES[e][0]}: HTTP {ERROR_TYPES[e][1]}"))
            span.end(end_time=int(ends[i]))
        self.created += len(calls)

    async def close(self) -> None:
        await asyncio.to_thread(self._shutdown)
        with self.lock:
            self.stats.dropped_spans = max(0, self.created - self.stats.spans_sent - self.stats.failed_spans)

    def _shutdown(self) -> None:
        for provider in self.providers.values():
            provider.force_flush(int(EXPORT_TIMEOUT_S * 1000))
        for provider in self.providers.values():
            provider.shutdown()


class _CountingExporter(SpanExporter):
    """Counts what the wrapped OTLP exporter managed to send (and what it did not)."""

    def __init__(self, inner: SpanExporter, sender: _Sender, name: str) -> None:
        self.inner, self.sender, self.name = inner, sender, name

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        n = len(spans)
        try:
            result = self.inner.export(spans)
        except Exception as e:  # an exporter bug must not end the processor's thread
            self.sender.failed(n, f"{self.name}: {type(e).__name__}: {e}")
            return SpanExportResult.FAILURE
        if result == SpanExportResult.SUCCESS:
            self.sender.ok(self.name, n)
        else:
            self.sender.failed(n, f"{self.name}: the OTLP exporter reported {result.name}")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


async def play(
    scenario: Scenario,
    endpoints: Mapping[str, str] | Sequence[str],
    *,
    mode: Mode = "raw",
    start_unix_nano: int | None = None,
    on_incident: OnIncident | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[PlayStats], None] | None = None,
) -> PlayStats:
    """Play ``scenario`` into the sidecars at ``endpoints`` (module docstring); return what was sent.

    ``on_progress(stats)`` is called about once a wall-clock second with the running figures.
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    names = _sidecars(endpoints)
    order = list(names)
    route = {svc: order[i] for svc, i in sidecar_for_service(scenario, len(order)).items()}
    model = TrafficModel(scenario)
    t_start = time.monotonic()
    if start_unix_nano is None:
        start_unix_nano = time.time_ns()
    stats = PlayStats(mode=mode, sidecars=names, services=route, start_unix_nano=start_unix_nano,
                      spans_per_sidecar=dict.fromkeys(order, 0))
    sender: _Sender
    if mode == "raw":
        sender = _RawSender(model, stats, route, names)
    else:
        sender = _SdkSender(model, stats, route, names, "grpc" if mode == "sdk-grpc" else "http")

    def fire(inc: Incident, edge: str) -> None:
        if on_incident is None:
            return
        try:
            on_incident(inc, edge, time.time_ns())
        except Exception:
            log.exception("on_incident(%s, %s) failed", inc.id, edge)

    to_start = sorted(scenario.incidents, key=lambda i: i.start_s)
    to_end: list[Incident] = []  # started, not ended
    duration, speedup = scenario.duration_s, scenario.speedup
    await sender.start()
    t0 = time.monotonic()
    next_progress = 1.0
    sim_done = 0.0
    try:
        while sim_done < duration:
            if stop is not None and stop.is_set():
                stats.stopped_early = True
                break
            tick_began = time.monotonic()
            elapsed = tick_began - t0
            target = min(duration, elapsed * speedup, sim_done + MAX_STEP_S * speedup)
            if target > sim_done:
                while to_start and to_start[0].start_s < target:
                    inc = to_start.pop(0)
                    to_end.append(inc)
                    fire(inc, "start")
                calls = model.calls(sim_done, target)
                stats.calls += len(calls)
                await sender.send(calls, sim_done, target, start_unix_nano)
                sim_done = target
                for inc in sorted((i for i in to_end if i.end_s <= sim_done), key=lambda i: i.end_s):
                    to_end.remove(inc)
                    fire(inc, "end")
                stats.sim_s = sim_done
                stats.lag_s = max(0.0, (time.monotonic() - t0) - sim_done / speedup)
                stats.max_lag_s = max(stats.max_lag_s, stats.lag_s)
            now = time.monotonic() - t0
            if on_progress is not None and now >= next_progress:
                next_progress = now + 1.0
                stats.wall_s = now
                stats.spans_per_s = stats.spans_sent / now if now > 0 else 0.0
                on_progress(stats)
            if sim_done < duration:
                await asyncio.sleep(max(0.0, TICK_S - (time.monotonic() - tick_began)))
    finally:
        for inc in to_end:
            fire(inc, "end")
        await sender.close()
    stats.wall_s = time.monotonic() - t0
    stats.spans_per_s = stats.spans_sent / stats.wall_s if stats.wall_s > 0 else 0.0
    if stats.max_lag_s > LAG_WARN_S:
        msg = (f"the sender fell up to {stats.max_lag_s:.1f} s behind schedule ({mode} mode, "
               f"{scenario.wall_rate:,.0f} calls/s planned): event times and incident edges are late by that much")
        stats.warnings.append(msg)
        log.warning("%s", msg)
    log.debug("played %s in %.1fs (setup %.1fs)", scenario.name, stats.wall_s, t0 - t_start)
    return stats


# --- command line ------------------------------------------------------------------------------


def _schedule(scenario: Scenario) -> list[str]:
    sc = scenario
    lines = [f"scenario {sc.name}: {sc.duration_s:g} simulated s at {sc.speedup:g}x = {sc.wall_seconds:.1f} s wall; "
             f"{sc.rate:g} calls/simulated s = {sc.wall_rate:,.0f} spans/s wall; {len(sc.services)} services over "
             f"{sc.sidecars} sidecar(s); seed {sc.seed}{'; clean (no incidents)' if sc.clean else ''}"]
    for svc, i in sidecar_for_service(sc, sc.sidecars).items():
        lines.append(f"  {svc:<24} -> sidecar {i}")
    for inc in sc.incidents:
        target = ", ".join(f"{k}={v}" for k, v in inc.target.items()) or "everything"
        lines.append(f"  incident {inc.id} ({inc.type}) on {target}: simulated {inc.start_s:g}-{inc.end_s:g} s = "
                     f"wall {inc.start_s / sc.speedup:.1f}-{inc.end_s / sc.speedup:.1f} s; "
                     f"params {inc.params or {}}; detect as {', '.join(inc.detect_as)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest", description="Play a load-test scenario into sidecars.")
    p.add_argument("scenario", help="scenario YAML file (loadtest/scenarios/*.yaml)")
    p.add_argument("--endpoint", action="append", default=[],
                   help="sidecar OTLP address, repeatable: host:port (gRPC) or http://host:port (sdk-http)")
    p.add_argument("--mode", choices=MODES, default="raw")
    p.add_argument("--speedup", type=float, help="override the scenario's speedup")
    p.add_argument("--rate", type=float, help="override the scenario's rate (calls per simulated second)")
    p.add_argument("--event-time", choices=("start-now", "end-now"), default="start-now",
                   help="start-now (default): event time starts at the wall clock and runs ahead of it; end-now: "
                        "the last call's event time is about when play ends and earlier calls are in the past "
                        "(late at the aggregator: not detected, by design)")
    p.add_argument("--dry-run", action="store_true", help="print the schedule and exit")
    args = p.parse_args(argv)
    try:
        scenario = load_scenario(args.scenario)
        overrides = {k: v for k, v in (("speedup", args.speedup), ("rate", args.rate)) if v is not None}
        if overrides:
            scenario = dataclasses.replace(scenario, **overrides)
            scenario.validate(args.scenario)
    except ScenarioError as e:
        print(f"python -m loadtest: {e}", file=sys.stderr)
        return 2
    for line in _schedule(scenario):
        print(line)
    if args.dry_run:
        return 0
    if not args.endpoint:
        print("python -m loadtest: give at least one --endpoint (or --dry-run)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.monotonic()

    def progress(s: PlayStats) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] simulated {s.sim_s:7.0f}/{scenario.duration_s:g} s  "
              f"spans {s.spans_sent:>9,} ({s.spans_per_s:,.0f}/s)  failed {s.failed_spans:,}  lag {s.lag_s:.2f} s",
              flush=True)

    def incident(inc: Incident, edge: str, wall_ns: int) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] incident {inc.id} ({inc.type}) {edge}", flush=True)

    start = time.time_ns() if args.event_time == "start-now" else default_start_unix_nano(scenario)
    stats = asyncio.run(play(scenario, args.endpoint, mode=args.mode, start_unix_nano=start, on_incident=incident,
                             on_progress=progress))
    per = ", ".join(f"{k}: {v:,}" for k, v in stats.spans_per_sidecar.items())
    print(f"done in {stats.wall_s:.1f}s: {stats.spans_sent:,} spans acknowledged ({stats.spans_per_s:,.0f}/s; {per}), "
          f"{stats.requests:,} requests, {stats.failures:,} failed ({stats.failed_spans:,} spans), "
          f"{stats.dropped_spans:,} dropped; max lag {stats.max_lag_s:.2f} s")
    for message in stats.errors:
        print(f"  error: {message}")
    for w in stats.warnings:
        print(f"  warning: {w}")
    if stats.calls and not stats.spans_sent:
        print("python -m loadtest: no span was acknowledged", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
