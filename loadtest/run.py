"""Run one load-test scenario against real processes and report what was detected, how fast, and at what cost.

    python -m loadtest.run loadtest/scenarios/quick.yaml [--out DIR] [--mode raw|sdk-grpc|sdk-http]
                                                         [--sidecars N] [--quick]

What one run does (everything on loopback; every child is stopped, SIGTERM then SIGKILL, even on error):

1. declares a topic exchange unique to the run (``incidents-lt-<8 hex>``) on the RabbitMQ at
   ``--amqp-url`` (default ``amqp://guest:guest@127.0.0.1:5672/``, or ``SENTINEL_AMQP_URL``), and binds
   its own exclusive queue to it with ``incidents.#`` **before** any traffic, in a thread of its own
   (so an alert's arrival time is taken when it arrives, not when the load generator yields);
2. starts the aggregator (``python -m sentinel.cli aggregator``: a temporary ``data_dir``, a free
   loopback port, no gRPC listener, the scenario's ``aggregator:`` settings as its ``--config``, with
   ``alerts.time_scale`` set to the scenario's speedup unless given (every alert window scaled alike),
   publishing to that exchange with no queue of its own) and ``N`` sidecars (``--sidecars``, default
   the scenario's ``sidecars``; each with free gRPC/HTTP/metrics ports, ``--sidecar-id lt-<i>`` and
   the scenario's ``sidecar:`` settings), and waits for every ``/readyz``;
3. plays the scenario (:func:`loadtest.loadgen.play`) into the sidecars, noting the wall time at
   which each incident starts and ends; samples CPU and RSS of every process (the aggregator, each
   sidecar, and this process, which is the load generator) once a second with psutil;
4. waits a drain period — ``max(10 s, grace_s / speedup)`` (``--quick``: 5 s) — for the last
   alerts; alerts arriving later are kept in ``run.json`` under ``late_alerts`` but not scored;
5. reads every sidecar's and the aggregator's ``/metrics`` and the aggregator's per-service series
   (``GET /api/v1/services/{s}/series``), stops everything, deletes the exchange;
6. writes into ``--out`` (default ``loadtest/reports/scratch/<scenario>``): ``run.json`` (the raw
   record: alerts with arrival times, incident wall times, samples, metrics, series),
   ``report.json``, ``report.md`` and ``traffic.png`` (:mod:`loadtest.report`; matching rule there
   and in ``loadtest/scenario.py``). The children's logs go to ``OUT/logs/`` when the run fails.

Exit status 1 when the run failed (a child did not start, the broker was unreachable, the player
raised); a missed incident or a false alert is a figure, not a failure, here (``loadtest.suite
--quick`` turns them into one).

Importable: ``report = await run_scenario(scenario, out_dir, mode="raw")``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtest.loadgen import MODES, play
from loadtest.procs import ROOT, Child, free_port, psutil
from loadtest.report import write_report
from loadtest.scenario import Incident, Scenario, load_scenario

__all__ = ["DEFAULT_AMQP_URL", "MODES", "AlertCollector", "ProcessSampler", "main", "run_scenario"]

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
STARTUP_TIMEOUT_S = 60.0
START_ATTEMPTS = 3
DRAIN_MIN_S = 10.0
QUICK_DRAIN_MIN_S = 5.0
NS = 1_000_000_000


class AlertCollector:
    """An exclusive queue bound with ``incidents.#`` to the run's exchange, consumed in its own thread;
    each message kept with its arrival wall time (``time.time_ns()``), de-duplicated on ``message_id``."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = exchange
        self.alerts: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._delete_exchange = True
        self.connected = False

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="alert-collector", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or not self.connected:
            raise RuntimeError(f"RabbitMQ at {_safe_url(self.url)}: cannot bind a queue to {self.exchange}: "
                               + ("; ".join(self.errors) or "timed out"))

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            connection = await aio_pika.connect(self.url, timeout=10)
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            self._ready.set()
            return
        try:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, "incidents.#")
            await queue.consume(self._on_message, no_ack=True)
            self.connected = True
            self._ready.set()
            await self._stop.wait()
            if self._delete_exchange:
                await channel.exchange_delete(self.exchange)
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                await connection.close()

    async def _on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrival = time.time_ns()
        try:
            alert = json.loads(message.body)
        except ValueError:
            alert = {"anomaly_type": "(not JSON)", "raw": message.body[:200].decode(errors="replace")}
        mid = message.message_id or str(alert.get("alert_id", ""))
        with self._lock:
            if mid and mid in self._seen:
                return
            self._seen.add(mid)
            self.alerts.append({"arrival_ns": arrival, "routing_key": message.routing_key, "message_id": mid,
                                "alert": alert})

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.alerts)

    def stop(self, *, delete_exchange: bool = True, timeout_s: float = 15.0) -> None:
        """Stop consuming and (by default) delete the exchange; idempotent."""
        self._delete_exchange = delete_exchange
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout_s)


async def _delete_exchange(url: str, exchange: str) -> None:
    """Best effort, for a run whose collector never connected (the aggregator may have declared it)."""
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            await channel.exchange_delete(exchange)


class ProcessSampler:
    """CPU (% of one core, from CPU-time deltas) and RSS of named processes, once per ``interval_s``, in a thread."""

    def __init__(self, processes: Mapping[str, tuple[str, int]], interval_s: float = 1.0) -> None:
        self.processes = dict(processes)  # name -> (kind, pid)
        self.interval_s = interval_s
        self.samples: dict[str, list[list[float]]] = {name: [] for name in self.processes}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self.t0 = time.monotonic()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        handles: dict[str, Any] = {}
        last: dict[str, tuple[float, float]] = {}
        for name, (_, pid) in self.processes.items():
            with contextlib.suppress(psutil.Error):
                handles[name] = psutil.Process(pid)
        while True:
            now = time.monotonic()
            for name, ps in handles.items():
                try:
                    t = ps.cpu_times()
                    cpu = float(t.user + t.system)
                    rss = float(ps.memory_info().rss)
                except psutil.Error:
                    continue
                prev = last.get(name)
                last[name] = (now, cpu)
                if prev is not None and now > prev[0]:
                    self.samples[name].append([now - self.t0, 100.0 * (cpu - prev[1]) / (now - prev[0]), rss])
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> dict[str, dict[str, Any]]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        return {name: {"kind": kind, "pid": pid, "samples": self.samples[name]}
                for name, (kind, pid) in self.processes.items()}


def _safe_url(url: str) -> str:
    """The URL without its password (never logged)."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def parse_metrics(text: str) -> dict[str, float]:
    """``sentinel_*`` samples of a Prometheus page: ``name`` (summed over labels) and ``name{k="v",…}``."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if not s.name.startswith("sentinel_") or s.name.endswith(("_bucket", "_created")):
                continue
            out[s.name] = out.get(s.name, 0.0) + s.value
            if s.labels:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _incident_dict(inc: Incident) -> dict[str, Any]:
    return {"id": inc.id, "type": inc.type, "start_s": inc.start_s, "end_s": inc.end_s, "target": dict(inc.target),
            "params": dict(inc.params), "detect_as": list(inc.detect_as)}


def _scenario_dict(sc: Scenario) -> dict[str, Any]:
    d = asdict(sc)
    d["incidents"] = [_incident_dict(i) for i in sc.incidents]
    for key in ("services", "models", "regions"):
        d[key] = list(d[key])
    return d


def _stats_dict(stats: Any) -> dict[str, Any]:
    if stats is None:
        return {}
    if isinstance(stats, Mapping):
        d = dict(stats)
    elif hasattr(stats, "__dataclass_fields__"):
        d = asdict(stats)
    elif hasattr(stats, "_asdict"):
        d = dict(stats._asdict())
    else:
        d = {k: v for k, v in vars(stats).items() if not k.startswith("_")}
    out: dict[str, Any] = json.loads(json.dumps(d, default=str))
    return out


def aggregator_settings(scenario: Scenario, alert_time_scale: float | None = None) -> dict[str, Any]:
    """The scenario's ``aggregator:`` settings, every alert window scaled to its compressed time.

    The alert manager's windows (de-duplication, persistence, correlation, resolution, grouping, the
    storm window) are wall clock; divided by ``alerts.time_scale`` they span the simulated time they
    would in production. ``alert_time_scale`` (``--alert-time-scale``; 1 keeps real wall-clock
    windows) wins over the scenario's own ``alerts.time_scale``, which wins over the scenario's
    ``speedup``. With compressed time, ``max_future_skew_s`` covers the simulated duration (event time
    runs ahead).
    """
    settings = dict(scenario.aggregator)
    alerts = dict(settings.get("alerts") or {})
    if "alert_time_scale" in settings:  # the deprecated flat spelling: one key, not both
        alerts.setdefault("time_scale", settings.pop("alert_time_scale"))
    if alert_time_scale is not None:
        alerts["time_scale"] = alert_time_scale
    alerts.setdefault("time_scale", scenario.speedup)
    settings["alerts"] = alerts
    if scenario.speedup > 1:
        # Compressed event time runs ahead of the wall clock on purpose (it starts at the current
        # minute): rows up to the whole simulated duration "in the future" are the scenario, not a
        # clock ahead, so the aggregator's clamp (max_future_skew_s) must not move them to arrival time.
        settings.setdefault("max_future_skew_s", float(scenario.duration_s) + 3600.0)
    return settings


class Fleet:
    """The aggregator and the sidecars of one run, on free loopback ports, with the scenario's settings."""

    def __init__(self, scenario: Scenario, n_sidecars: int, mode: str, tmp: Path, logs: Path, amqp_url: str,
                 exchange: str, alert_time_scale: float | None = None) -> None:
        agg_port = free_port()
        self.aggregator_url = f"http://127.0.0.1:{agg_port}"
        agg_cfg = tmp / "aggregator.yaml"
        agg_cfg.write_text(yaml.safe_dump(aggregator_settings(scenario, alert_time_scale)))
        self.aggregator = Child("aggregator", [
            sys.executable, "-m", "sentinel.cli", "aggregator", "--config", str(agg_cfg),
            "--listen", f"127.0.0.1:{agg_port}", "--grpc-listen", "", "--data-dir", str(tmp / "aggregator"),
            "--log-level", "warning"], log_dir=logs,
            env={"SENTINEL_AMQP_URL": amqp_url, "SENTINEL_AMQP_EXCHANGE": exchange, "SENTINEL_AMQP_QUEUE": ""})
        sc_cfg = tmp / "sidecar.yaml"
        sc_cfg.write_text(yaml.safe_dump(dict(scenario.sidecar)))
        self.sidecars: list[Child] = []
        self.endpoints: list[str] = []
        self.sidecar_metrics_urls: list[str] = []
        for i in range(n_sidecars):
            grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
            self.sidecars.append(Child(f"sidecar-{i}", [
                sys.executable, "-m", "sentinel.cli", "sidecar", "--config", str(sc_cfg),
                "--grpc-listen", f"127.0.0.1:{grpc_port}", "--http-listen", f"127.0.0.1:{http_port}",
                "--metrics-listen", f"127.0.0.1:{metrics_port}", "--aggregator-url", self.aggregator_url,
                "--sidecar-id", f"lt-{i}", "--log-level", "warning"], log_dir=logs, kind="sidecar"))
            self.endpoints.append(f"http://127.0.0.1:{http_port}" if mode == "sdk-http" else f"127.0.0.1:{grpc_port}")
            self.sidecar_metrics_urls.append(f"http://127.0.0.1:{metrics_port}")

    @property
    def children(self) -> list[Child]:
        return [self.aggregator, *self.sidecars]

    async def start(self, http: httpx.AsyncClient) -> None:
        """Start every process at once, then wait for each one's ``/readyz``."""
        for c in self.children:
            c.start()
        await self.aggregator.wait_http_ready(http, f"{self.aggregator_url}/readyz", STARTUP_TIMEOUT_S)
        for sc, url in zip(self.sidecars, self.sidecar_metrics_urls, strict=True):
            await sc.wait_http_ready(http, f"{url}/readyz", STARTUP_TIMEOUT_S)

    def stop(self) -> None:
        """Sidecars first (they forward what they hold to a live aggregator), then the aggregator."""
        for c in reversed(self.sidecars):
            c.stop()
        self.aggregator.stop()


async def run_scenario(scenario: Scenario, out_dir: str | Path, *, mode: str = "raw", sidecars: int | None = None,
                       quick: bool = False, amqp_url: str | None = None, charts: bool = True,
                       alert_time_scale: float | None = None,
                       say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run ``scenario`` end to end (module docstring); write ``run.json`` and the report into ``out_dir``;
    return the report (:func:`loadtest.report.build_report`; its ``errors`` say what failed, if anything)."""
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    amqp_url = amqp_url or os.environ.get("SENTINEL_AMQP_URL") or DEFAULT_AMQP_URL
    n_sidecars = sidecars or scenario.sidecars
    exchange = f"incidents-lt-{uuid.uuid4().hex[:8]}"
    drain_s = max(QUICK_DRAIN_MIN_S if quick else DRAIN_MIN_S, scenario.grace_s / scenario.speedup)
    t_run = time.monotonic()
    record: dict[str, Any] = {
        "scenario": _scenario_dict(scenario), "mode": mode, "sidecars": n_sidecars, "exchange": exchange,
        "drain_s": drain_s, "incident_wall": {}, "alerts": [], "late_alerts": [], "errors": [],
        "alert_time_scale": aggregator_settings(scenario, alert_time_scale)["alerts"]["time_scale"],
        "wall": {"play_start_ns": time.time_ns(), "play_end_ns": time.time_ns()},
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f"loadtest-{scenario.name}-"))
    logs = tmp / "logs"
    logs.mkdir()
    children: list[Child] = []
    fleet: Fleet | None = None
    collector = AlertCollector(amqp_url, exchange)
    sampler: ProcessSampler | None = None
    failed = False
    try:
        say(f"[{scenario.name}] RabbitMQ exchange {exchange}: binding a queue with incidents.#")
        await asyncio.to_thread(collector.start)

        async with httpx.AsyncClient(trust_env=False) as http:
            for attempt in range(1, START_ATTEMPTS + 1):
                fleet = Fleet(scenario, n_sidecars, mode, tmp, logs, amqp_url, exchange, alert_time_scale)
                try:
                    await fleet.start(http)
                    break
                except RuntimeError as e:  # e.g. a free port taken by someone else in between: fresh ports
                    fleet.stop()
                    if attempt == START_ATTEMPTS:
                        raise
                    record.setdefault("warnings", []).append(f"start-up attempt {attempt} failed: {e}")
                    say(f"[{scenario.name}] start-up attempt {attempt} failed, retrying: {str(e).splitlines()[0]}")
            assert fleet is not None
            children = fleet.children
            agg_url, endpoints = fleet.aggregator_url, fleet.endpoints
            say(f"[{scenario.name}] aggregator {agg_url} and {n_sidecars} sidecar(s) ready "
                f"({time.monotonic() - t_run:.1f}s); playing {scenario.duration_s:g} simulated s at "
                f"{scenario.speedup:g}x ({scenario.wall_seconds:.0f} s), {scenario.wall_rate:,.0f} calls/s, "
                f"mode {mode}")

            procs = {c.name: (c.kind, c.pid or 0) for c in children}
            procs["loadgen"] = ("loadgen", os.getpid())
            sampler = ProcessSampler(procs)
            sampler.start()

            def on_incident(incident: Incident, edge: str, wall_ns: int) -> None:
                record["incident_wall"].setdefault(incident.id, {})[f"{edge}_ns"] = int(wall_ns)
                say(f"[{scenario.name}] {(wall_ns - record['wall']['play_start_ns']) / NS:6.1f}s incident "
                    f"{incident.id} ({incident.type}) {edge}")

            stop = asyncio.Event()
            # Event time of simulated second 0: the start of the current minute (so the aggregator's
            # one-minute series buckets are whole simulated minutes). Event time then runs ahead of the
            # wall clock, never behind it by more than a minute: rows older than the aggregator's
            # late_after_s (300 s) are "late", and late local anomalies never page — with the player's
            # default origin (the last call at the wall clock) all but the last minutes would be late.
            start_unix_nano = time.time_ns() // (60 * NS) * (60 * NS)
            record["start_unix_nano"] = start_unix_nano
            record["wall"]["play_start_ns"] = time.time_ns()
            progress = {"sim_s": 0.0}
            restarts = asyncio.create_task(_restart_sidecars(scenario, fleet, http, record, say, progress))
            try:
                stats = await asyncio.wait_for(
                    play(scenario, endpoints, mode=mode, start_unix_nano=start_unix_nano,
                         on_incident=on_incident, stop=stop,
                         on_progress=lambda st: progress.__setitem__("sim_s", st.sim_s)),
                    timeout=scenario.wall_seconds * 2 + 60)
            except TimeoutError:
                stop.set()
                raise RuntimeError(f"the player did not finish within {scenario.wall_seconds * 2 + 60:.0f}s") from None
            finally:
                record["wall"]["play_end_ns"] = time.time_ns()
                restarts.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await restarts
            record["play"] = _stats_dict(stats)
            played_s = (record["wall"]["play_end_ns"] - record["wall"]["play_start_ns"]) / NS
            say(f"[{scenario.name}] played in {played_s:.1f}s; draining {drain_s:.0f}s")
            for c in children:
                if not c.running():
                    raise RuntimeError(f"{c.name} exited during the run (status {c.proc.returncode if c.proc else '?'})"
                                       f"\n{c.tail()}")
            await asyncio.sleep(drain_s)
            record["alerts"] = collector.snapshot()
            record["wall"]["drain_end_ns"] = time.time_ns()

            metrics: dict[str, Any] = {"sidecars": {}, "aggregator": {}}
            for sc, url in zip(fleet.sidecars, fleet.sidecar_metrics_urls, strict=True):
                r = await http.get(f"{url}/metrics", timeout=10)
                metrics["sidecars"][sc.name] = parse_metrics(r.text)
            r = await http.get(f"{agg_url}/metrics", timeout=10)
            metrics["aggregator"] = parse_metrics(r.text)
            record["metrics"] = metrics
            record["series"] = await _series(http, agg_url, scenario, start_unix_nano)
    except BaseException as e:
        failed = True
        record["errors"].append(type(e).__name__ + (f": {e}" if str(e) else " (interrupted)"))
        if not isinstance(e, Exception):
            raise
    finally:
        if sampler is not None:
            record["processes"] = sampler.stop()
        if fleet is not None:
            fleet.stop()
        if record["wall"].get("drain_end_ns"):
            n = len(record["alerts"])
            record["late_alerts"] = collector.snapshot()[n:]
        elif collector.connected:
            record["alerts"] = collector.snapshot()
            record["wall"]["drain_end_ns"] = time.time_ns()
        await asyncio.to_thread(collector.stop)
        if not collector.connected:
            await _delete_exchange(amqp_url, exchange)
        if collector.connected:  # otherwise start() already raised with these
            record["errors"] += [f"alert collector: {e}" for e in collector.errors]
        record["exit_status"] = {c.name: (c.proc.returncode if c.proc else None)
                                 for c in (fleet.children if fleet is not None else [])}
        record["run_wall_s"] = time.monotonic() - t_run
        record["machine"]["load_average_at_end"] = os.getloadavg()[0]
        if failed or record["errors"]:
            shutil.copytree(logs, out / "logs", dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (out / "run.json").write_text(json.dumps(record, separators=(",", ":"), default=str) + "\n")
    report = write_report(record, out, charts=charts)
    return report


async def _restart_sidecars(scenario: Scenario, fleet: Fleet, http: httpx.AsyncClient, record: dict[str, Any],
                           say: Callable[[str], None], progress: Mapping[str, float]) -> None:
    """Restart sidecar 0 when the player reaches each of the scenario's ``sidecar_restarts`` (simulated s;
    ``progress["sim_s"]``, so a player behind schedule restarts it at the right simulated time): SIGTERM
    (it forwards what it holds), then the same command on the same ports; spans sent while it is down
    are lost, and its local baselines start again from nothing, as after a pod restart."""
    child, url = fleet.sidecars[0], fleet.sidecar_metrics_urls[0]
    for at_s in sorted(scenario.sidecar_restarts):
        while progress["sim_s"] < at_s:
            await asyncio.sleep(0.1)
        began = time.monotonic()
        await asyncio.to_thread(child.stop)
        child.start()
        await child.wait_http_ready(http, f"{url}/readyz", STARTUP_TIMEOUT_S)
        down_s = time.monotonic() - began
        record.setdefault("sidecar_restarts", []).append({"at_sim_s": at_s, "down_wall_s": down_s})
        say(f"[{scenario.name}] restarted {child.name} at simulated {at_s:g} s (down {down_s:.1f} s wall)")


async def _series(http: httpx.AsyncClient, agg_url: str, scenario: Scenario, origin_ns: int) -> dict[str, Any]:
    """The aggregator's one-minute event-time series of each service over the scenario (at most 24 h)."""
    start_s = origin_ns // NS
    end_s = start_s + int(min(scenario.duration_s, 24 * 3600)) + 60
    out: dict[str, Any] = {}
    for svc in scenario.services:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            r = await http.get(f"{agg_url}/api/v1/services/{svc}/series", params={"start": start_s, "end": end_s},
                               timeout=10)
            if r.status_code == 200:
                out[svc] = r.json()
    return out


def summary_line(rep: Mapping[str, Any]) -> str:
    al, inc = rep["alerts"], rep["incidents"]
    lat = rep["detection_latency_s"]
    p50 = "-" if lat["p50"] is None else f"{lat['p50']:.2f}"
    return (f"{sum(i['detected'] for i in inc)}/{len(inc)} incidents detected, latency p50 {p50} s; "
            f"{al['total']} alerts, {al['false']} false; "
            f"{(rep['throughput']['spans_per_s'] or 0):,.0f} spans/s; errors: {len(rep['errors'])}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.run", description=__doc__.split("\n")[0])
    p.add_argument("scenario", help="a scenario file (loadtest/scenarios/*.yaml)")
    p.add_argument("--out", help="output directory [loadtest/reports/scratch/<scenario>]")
    p.add_argument("--mode", choices=MODES, default="raw",
                   help="how spans are sent: prebuilt OTLP protobuf (raw) or the OpenTelemetry SDK [raw]")
    p.add_argument("--sidecars", type=int, help="sidecar processes [the scenario's sidecars]")
    p.add_argument("--quick", action="store_true", help=f"shorter drain ({QUICK_DRAIN_MIN_S:g} s minimum instead of "
                                                        f"{DRAIN_MIN_S:g} s)")
    p.add_argument("--amqp-url", help=f"RabbitMQ [SENTINEL_AMQP_URL or {DEFAULT_AMQP_URL}]")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--alert-time-scale", type=float, help="divide every alert window by this [the scenario's "
                   "alert_time_scale, else its speedup]; 1: real wall-clock windows")
    args = p.parse_args(argv)

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally that stops the children

    signal.signal(signal.SIGTERM, on_sigterm)
    scenario = load_scenario(args.scenario)
    out = Path(args.out) if args.out else ROOT / "loadtest" / "reports" / "scratch" / scenario.name
    rep = asyncio.run(run_scenario(scenario, out, mode=args.mode, sidecars=args.sidecars, quick=args.quick,
                                   amqp_url=args.amqp_url, charts=not args.no_charts,
                                   alert_time_scale=args.alert_time_scale,
                                   say=lambda s: print(s, flush=True)))
    print(f"[{scenario.name}] {summary_line(rep)}")
    print(f"[{scenario.name}] report: {out / 'report.md'}")
    for e in rep["errors"]:
        print(f"[{scenario.name}] ERROR {e}", file=sys.stderr)
    return 1 if rep["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
