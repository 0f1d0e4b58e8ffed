"""How well the sidecar's local detectors do on generated LLM traffic: false alarms and detections.

A benchmark, not a unit test. Traffic comes from :func:`loadtest.spans.build_trace_request`
(heavy-tailed lognormal token counts, latency growing with output tokens; 4 services x 4 models =
16 keys), goes through the real extractor and is fed to :class:`LocalDetector` in batches, with
call times spread at ``--rate`` calls per second of event time. Per seed:

* **clean**: ``--rows`` normal calls; every anomaly is a false positive. Reported per metric as
  anomalies per row, and the share of rows with any anomaly.
* each scenario starts from a detector warmed on ``--warm-rows`` clean calls, then injects:

  - ``latency x3``: ``latency_scale=3`` for every key over ``--spike-rows`` calls (>= 200 per
    key). Detected per key by a ``latency_ms`` or ``tokens_per_s`` anomaly; "rows to detect" is
    the 1-based position, among the key's affected calls, of the first one reported.
  - ``outlier x30`` / ``outlier 30 s``: one call per key made 30 times slower / set to 30 s in an
    otherwise clean batch; detected only if that very call is reported as ``latency_ms``.
  - ``error burst``: ``error_rate=0.6`` for 2 s of event time, error window 5 s (as the demo).
    Detected per key by an ``error_rate`` anomaly within the burst or 3 s after it; "time to
    detect" is event time from the burst's start.
  - ``token abuse``: one key's ``input_tokens`` x20 over ``--spike-rows`` calls; detected by an
    ``input_tokens`` anomaly on that key. Also the share of its abusive calls reported.

Run ``python -m loadtest.detector_quality`` (``--help`` for the knobs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest.spans import DEFAULT_START_UNIX_NANO, anomalous_span, build_trace_request
from sentinel.model import KEY_COLUMNS, FeatureBatch
from sidecar.detectors.local import METRICS, LocalDetectionConfig, LocalDetector
from sidecar.extract import ExtractConfig, Extractor

__all__ = ["Quality", "evaluate", "main"]

_GEN_SPACING_NS = 20_000_000  # build_trace_request's mean gap between calls
_NS = 1_000_000_000
Key = tuple[str | None, str | None, str | None]


@dataclass
class Quality:
    """What :func:`evaluate` measured, summed over seeds."""

    clean_rows: int = 0
    clean_rows_flagged: int = 0
    clean_by_metric: Counter[str] = field(default_factory=Counter)
    #: per scenario: keys tried, and per detected key the rows (or seconds) it took
    tried: Counter[str] = field(default_factory=Counter)
    delays: dict[str, list[float]] = field(default_factory=dict)
    #: outlier calls reported by any metric (``latency_ms`` or ``tokens_per_s``, usually)
    outlier_any: Counter[str] = field(default_factory=Counter)
    abuse_rows: int = 0
    abuse_flagged: int = 0
    scenario_false: Counter[str] = field(default_factory=Counter)

    def detected(self, scenario: str, delay: float) -> None:
        self.delays.setdefault(scenario, []).append(delay)


class _Traffic:
    """Seeded batches of extracted rows, consecutive in event time at ``rate`` calls/s."""

    def __init__(self, seed: int, batch: int, rate: float, extractor: Extractor) -> None:
        self.g = np.random.default_rng(seed)
        self.batch = batch
        self.scale = _NS / rate / _GEN_SPACING_NS
        self.gen_start = DEFAULT_START_UNIX_NANO
        self.extractor = extractor

    def next(self, edit: Callable[[Any], None] | None = None, **kw: Any) -> FeatureBatch:
        request = build_trace_request(self.batch, rng=self.g, start_unix_nano=self.gen_start, **kw)
        if edit is not None:
            edit(request)
        self.gen_start += self.batch * _GEN_SPACING_NS
        b = FeatureBatch.from_rows(self.extractor.extract(request).rows)
        # Compress (or stretch) event time to the wanted call rate; durations stay as generated.
        t = b.numeric["time_unix_nano"]
        b.numeric["time_unix_nano"] = DEFAULT_START_UNIX_NANO + ((t - DEFAULT_START_UNIX_NANO) * self.scale).astype(
            np.int64
        )
        return b


def _keys(b: FeatureBatch) -> list[Key]:
    s = b.strings
    return list(zip(*(s[c] for c in KEY_COLUMNS), strict=True))


def _row_of(b: FeatureBatch) -> dict[str | None, int]:
    return {sid: i for i, sid in enumerate(b.strings["span_id"])}


def _spans(request: Any) -> Iterator[Any]:
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            yield from ss.spans


def evaluate(
    detection: Mapping[str, Any] | None = None,
    *,
    seeds: Sequence[int] = (1, 2, 3),
    rows: int = 50_000,
    warm_rows: int = 20_000,
    spike_rows: int = 5_000,
    batch: int = 500,
    rate: float = 2000.0,
) -> Quality:
    """Run the clean stream and every scenario for each seed with the ``detection:`` map given."""
    config = LocalDetectionConfig.from_mapping(detection)
    extractor = Extractor(ExtractConfig())
    q = Quality()
    for seed in seeds:
        _clean(q, config, _Traffic(seed, batch, rate, extractor), rows)
        for scenario in (_latency_spike, _outliers_x30, _outliers_30s, _error_burst, _token_abuse):
            traffic = _Traffic(10_000 + seed, batch, rate, extractor)
            det = LocalDetector(config)
            for _ in range(max(1, warm_rows // batch)):
                det.process(traffic.next())
            scenario(q, det, traffic, spike_rows)
    return q


def _clean(q: Quality, config: LocalDetectionConfig, traffic: _Traffic, rows: int) -> None:
    det = LocalDetector(config)
    for _ in range(max(1, rows // traffic.batch)):
        b = traffic.next()
        found = det.process(b)
        q.clean_rows += b.n
        q.clean_rows_flagged += len({a.span_id for a in found if a.metric != "error_rate"})
        q.clean_by_metric.update(a.metric for a in found)


def _latency_spike(q: Quality, det: LocalDetector, traffic: _Traffic, spike_rows: int) -> None:
    seen: Counter[Key] = Counter()
    first: dict[Key, int] = {}
    for _ in range(max(1, spike_rows // traffic.batch)):
        b = traffic.next(latency_scale=3.0)
        keys = _keys(b)
        pos = {}
        for i, k in enumerate(keys):  # rows of a key are in time order in the batch
            seen[k] += 1
            pos[i] = seen[k]
        row = _row_of(b)
        for a in det.process(b):
            i = row[a.span_id]
            k = keys[i]
            if a.metric in ("latency_ms", "tokens_per_s") and k not in first:
                first[k] = pos[i]
    q.tried["latency x3"] += len(seen)
    for k in seen:
        if k in first:
            q.detected("latency x3", first[k])


def _one_outlier_per_key(q: Quality, det: LocalDetector, traffic: _Traffic, name: str, new_ms: float | None) -> None:
    chosen: dict[str, Key] = {}

    def edit(request: Any) -> None:
        picked: set[Key] = set()
        for rs in request.resource_spans:
            service = next(kv.value.string_value for kv in rs.resource.attributes if kv.key == "service.name")
            for span in rs.scope_spans[0].spans:
                model = next(kv.value.string_value for kv in span.attributes if kv.key == "gen_ai.request.model")
                k: Key = (service, model, "chat")
                if k in picked or span.status.code == 2:  # one successful call per key
                    continue
                picked.add(k)
                if new_ms is None:
                    anomalous_span(span, latency_factor=30.0)
                else:
                    span.end_time_unix_nano = span.start_time_unix_nano + int(new_ms * 1e6)
                chosen[span.span_id.hex()] = k

    b = traffic.next(edit)
    found = det.process(b)
    q.tried[name] += len(chosen)
    hit = {a.span_id for a in found if a.metric == "latency_ms"}
    for sid in chosen:
        if sid in hit:
            q.detected(name, 1)
    q.outlier_any[name] += len(chosen.keys() & {a.span_id for a in found})
    q.scenario_false[name] += sum(1 for a in found if a.span_id not in chosen and a.metric != "error_rate")


def _outliers_x30(q: Quality, det: LocalDetector, traffic: _Traffic, spike_rows: int) -> None:
    _one_outlier_per_key(q, det, traffic, "outlier x30", None)


def _outliers_30s(q: Quality, det: LocalDetector, traffic: _Traffic, spike_rows: int) -> None:
    _one_outlier_per_key(q, det, traffic, "outlier 30 s", 30_000.0)


def _error_burst(q: Quality, det: LocalDetector, traffic: _Traffic, spike_rows: int) -> None:
    # The error rate is judged over event time; the burst covers 2 s of it, then 3 s of normal calls.
    rate = _NS / (traffic.scale * _GEN_SPACING_NS)
    burst_batches = max(1, round(2.0 * rate / traffic.batch))
    after_batches = max(1, round(3.0 * rate / traffic.batch))
    start: int | None = None
    first: dict[Key, float] = {}
    keys: set[Key] = set()
    for i in range(burst_batches + after_batches):
        b = traffic.next(error_rate=0.6 if i < burst_batches else 0.01)
        if start is None:
            start = int(b.numeric["time_unix_nano"].min())
        if i < burst_batches:
            keys.update(_keys(b))
        for a in det.process(b):
            k = (a.service, a.model, a.operation)
            if a.metric == "error_rate" and k not in first:
                first[k] = (a.time_unix_nano - start) / _NS
    q.tried["error burst"] += len(keys)
    for k in keys:
        if k in first:
            q.detected("error burst", first[k])


def _token_abuse(q: Quality, det: LocalDetector, traffic: _Traffic, spike_rows: int) -> None:
    target: Key | None = None
    n = 0
    first: int | None = None
    # Abuse in as many batches as the spike, so the key sees a few hundred calls.
    for _ in range(max(1, spike_rows // traffic.batch)):
        b = traffic.next()
        keys = _keys(b)
        target = target or keys[0]
        mine = np.array([k == target for k in keys])
        x = b.numeric["input_tokens"]
        b.numeric["input_tokens"] = np.where(mine, x * 20.0, x)
        pos = np.cumsum(mine) + n
        n += int(mine.sum())
        row = _row_of(b)
        flagged = {row[a.span_id] for a in det.process(b) if a.metric == "input_tokens"}
        q.scenario_false["token abuse"] += sum(1 for i in flagged if not mine[i])
        hits = sorted(i for i in flagged if mine[i])
        q.abuse_flagged += len(hits)
        if hits and first is None:
            first = int(pos[hits[0]])
    q.abuse_rows += n
    q.tried["token abuse"] += 1
    if first is not None:
        q.detected("token abuse", first)


def format_report(q: Quality, seeds: int) -> str:
    lines = [f"clean traffic: {q.clean_rows} rows over {seeds} seed(s); every anomaly is a false positive", ""]
    lines.append(f"{'metric':<14} {'anomalies':>9} {'per row':>9}")
    for m in (*METRICS, "error_rate"):
        c = q.clean_by_metric[m]
        lines.append(f"{m:<14} {c:>9} {c / max(q.clean_rows, 1):>9.4%}")
    lines.append(f"{'rows flagged':<14} {q.clean_rows_flagged:>9} {q.clean_rows_flagged / max(q.clean_rows, 1):>9.4%}")
    lines += ["", f"{'scenario':<13} {'detected':>10} {'median':>8} {'max':>8}  unit / notes"]
    units = {"latency x3": "rows of the key", "outlier x30": "that very call", "outlier 30 s": "that very call",
             "error burst": "s from burst start", "token abuse": "rows of the key"}
    for name, unit in units.items():
        d = q.delays.get(name, [])
        med = f"{statistics.median(d):.1f}" if d else "-"
        mx = f"{max(d):.1f}" if d else "-"
        note = unit
        if name == "latency x3" and d:
            note += f"; {sum(1 for x in d if x <= 20)} within 20 rows"
        if name == "token abuse" and q.abuse_rows:
            note += f"; {q.abuse_flagged}/{q.abuse_rows} abusive calls reported"
        if name in q.outlier_any:
            note += f"; {q.outlier_any[name]} reported by any metric"
        if q.scenario_false[name]:
            note += f"; {q.scenario_false[name]} other anomalies"
        lines.append(f"{name:<13} {len(d):>4}/{q.tried[name]:<5} {med:>8} {mx:>8}  {note}")
    return "\n".join(lines)


def time_batches(detection: Mapping[str, Any] | None = None, *, rows: int = 2000, repeat: int = 50) -> float:
    """Median milliseconds :meth:`LocalDetector.process` takes for a warm ``rows``-row batch."""
    traffic = _Traffic(99, rows, 2000.0, Extractor(ExtractConfig()))
    batches = [traffic.next() for _ in range(8)]
    det = LocalDetector(LocalDetectionConfig.from_mapping(detection))
    for b in batches:
        det.process(b)
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        det.process(batches[i % len(batches)])
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.detector_quality", description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (1..N)")
    p.add_argument("--rows", type=int, default=50_000, help="clean rows per seed")
    p.add_argument("--warm-rows", type=int, default=20_000, help="clean rows before each scenario")
    p.add_argument("--spike-rows", type=int, default=5_000, help="rows of the latency spike / token abuse")
    p.add_argument("--batch", type=int, default=500, help="rows per batch")
    p.add_argument("--rate", type=float, default=2000.0, help="calls per second of event time (all keys)")
    p.add_argument("--error-window", default="5s", help="detection.error_rate.window")
    a = p.parse_args(argv)
    detection = {"error_rate": {"window": a.error_window}}
    t0 = time.perf_counter()
    q = evaluate(detection, seeds=range(1, a.seeds + 1), rows=a.rows, warm_rows=a.warm_rows,
                 spike_rows=a.spike_rows, batch=a.batch, rate=a.rate)
    print(format_report(q, a.seeds))
    ms = time_batches(detection)
    print(f"\nLocalDetector.process, warm 2000-row batch (16 keys): {ms:.2f} ms median"
          f"  [benchmark took {time.perf_counter() - t0:.0f} s]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
