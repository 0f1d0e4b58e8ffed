"""Bandwidth benchmark: bytes forwarded per span with ``forward: rows`` and ``forward: summaries``.

    python -m loadtest.bench_summaries [--spans 200000] [--rate 2000] [--sample-rate 0.01] [--json PATH]

The same traffic for both modes: ``--spans`` GenAI spans (``loadtest.spans``: 4 services, 4 models,
3 regions, 1 % errors) in export requests of 100, ``--rate`` spans per simulated second, each
request parsed and extracted by the sidecar's own code and run through its local detector. Then,
as the sidecar's pipeline does it:

* ``rows``: the rows sealed into wire batches of ``batch_max_rows`` (2,048) with their anomalies;
* ``summaries``: every request counted into per-minute per-key summaries (``sidecar/summaries.py``),
  its anomalous rows and a ``--sample-rate`` sample sealed as rows, the summaries sealed into a batch
  of their own every ``summaries.flush_s`` (10 s of simulated time).

Printed: wire bytes (the exact ``POST /v1/ingest`` bodies, uncompressed, as the forwarder sends them)
per span in each mode, their ratio and the reduction (target: at least 90 % fewer bytes), how many
rows and summaries each sent, and the time each mode's sealing took (a ratio, same run).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from loadtest.spans import DEFAULT_START_UNIX_NANO, build_trace_request
from sentinel import wire
from sentinel.model import FeatureBatch, LocalAnomaly
from sidecar.detectors.local import LocalDetector
from sidecar.extract import ExtractConfig, Extractor
from sidecar.otlp_lite import parse_traces
from sidecar.summaries import Summariser, SummaryConfig

SPANS_PER_REQUEST = 100
BATCH_MAX_ROWS = 2048
TARGET_REDUCTION = 0.90


def traffic(spans: int, rate: float, seed: int) -> list[tuple[FeatureBatch, list[LocalAnomaly]]]:
    """Rows and local anomalies of every request, as the sidecar makes them."""
    rng = random.Random(seed)
    extractor = Extractor(ExtractConfig())
    detector = LocalDetector()
    out = []
    for i in range(spans // SPANS_PER_REQUEST):
        start = DEFAULT_START_UNIX_NANO + int(i * SPANS_PER_REQUEST / rate * 1e9)
        raw = build_trace_request(SPANS_PER_REQUEST, rng=rng, start_unix_nano=start).SerializeToString()
        request = parse_traces(raw)
        rows = []
        for rs in request.resource_spans:
            resource = extractor.resource(rs)
            for ss in rs.scope_spans:
                rows.extend(extractor.extract_spans(resource, ss.spans).rows)
        batch = FeatureBatch.from_rows(rows)
        out.append((batch, detector.process(batch)))
    return out


def rows_mode(requests: Sequence[tuple[FeatureBatch, list[LocalAnomaly]]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    bodies: list[bytes] = []
    pending: list[FeatureBatch] = []
    anomalies: list[LocalAnomaly] = []
    n = 0
    for batch, found in requests:
        pending.append(batch)
        anomalies += found
        n += batch.n
        if n >= BATCH_MAX_ROWS:
            bodies.append(wire.encode(FeatureBatch.concat(pending), sidecar="bench", seq=len(bodies),
                                      anomalies=anomalies))
            pending, anomalies, n = [], [], 0
    if pending:
        bodies.append(wire.encode(FeatureBatch.concat(pending), sidecar="bench", seq=len(bodies), anomalies=anomalies))
    rows = sum(wire.decode(b).batch.n for b in bodies)
    return {"bytes": sum(map(len, bodies)), "batches": len(bodies), "rows": rows, "summaries": 0,
            "seconds": time.perf_counter() - t0}


def summaries_mode(requests: Sequence[tuple[FeatureBatch, list[LocalAnomaly]]], *, sample_rate: float,
                   flush_s: float, rate: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    s = Summariser(SummaryConfig(forward="summaries", sample_rate=sample_rate, flush_s=flush_s), seed=0)
    bodies: list[bytes] = []
    pending: list[FeatureBatch] = []
    anomalies: list[LocalAnomaly] = []
    n = summaries = spans = 0
    next_flush = flush_s

    def seal_rows() -> None:
        nonlocal pending, anomalies, n
        if pending or anomalies:
            bodies.append(wire.encode(FeatureBatch.concat(pending) if pending else FeatureBatch.empty(),
                                      sidecar="bench", seq=len(bodies), anomalies=anomalies, summarised=True))
        pending, anomalies, n = [], [], 0

    def seal_summaries() -> None:
        nonlocal summaries
        taken = s.take()
        summaries += len(taken)
        if taken:
            bodies.append(wire.encode(FeatureBatch.empty(), sidecar="bench", seq=len(bodies), summaries=taken,
                                      summarised=True))

    for batch, found in requests:
        forward = s.add(batch, found)
        spans += batch.n
        if forward.n or found:
            pending.append(forward)
            anomalies += found
            n += forward.n
        if n >= BATCH_MAX_ROWS:
            seal_rows()
        if spans / rate >= next_flush:  # simulated time: summary_flush_s passed
            seal_rows()  # the 1 s batch timeout has passed many times within a flush period
            seal_summaries()
            next_flush += flush_s
    seal_rows()
    seal_summaries()
    rows = sum(wire.decode(b).batch.n for b in bodies)
    return {"bytes": sum(map(len, bodies)), "batches": len(bodies), "rows": rows, "summaries": summaries,
            "seconds": time.perf_counter() - t0}


def run(spans: int, rate: float, sample_rate: float, flush_s: float, seed: int = 1) -> dict[str, Any]:
    requests = traffic(spans, rate, seed)
    n = sum(b.n for b, _ in requests)
    full = rows_mode(requests)
    summ = summaries_mode(requests, sample_rate=sample_rate, flush_s=flush_s, rate=rate)
    reduction = 1.0 - summ["bytes"] / full["bytes"]
    return {
        "spans": n, "rate_spans_per_s": rate, "sample_rate": sample_rate, "summary_flush_s": flush_s,
        "anomalies": sum(len(a) for _, a in requests),
        "rows": {**full, "bytes_per_span": full["bytes"] / n},
        "summaries": {**summ, "bytes_per_span": summ["bytes"] / n},
        "bytes_ratio": summ["bytes"] / full["bytes"], "reduction": reduction,
        "target_reduction": TARGET_REDUCTION, "meets_target": reduction >= TARGET_REDUCTION,
        "seal_time_ratio": summ["seconds"] / full["seconds"],
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spans", type=int, default=200_000)
    p.add_argument("--rate", type=float, default=2000.0, help="spans per simulated second [2000]")
    p.add_argument("--sample-rate", type=float, default=0.01, help="summary_sample_rate [0.01]")
    p.add_argument("--flush-s", type=float, default=10.0, help="summary_flush_s [10]")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    r = run(args.spans, args.rate, args.sample_rate, args.flush_s)
    print(f"{r['spans']:,} spans at {r['rate_spans_per_s']:g}/s, {r['anomalies']} local anomalies, "
          f"sample {r['sample_rate']:g}, summaries every {r['summary_flush_s']:g} s")
    for mode in ("rows", "summaries"):
        m = r[mode]
        print(f"  forward: {mode:9s} {m['bytes']:>12,} bytes  {m['bytes_per_span']:8.2f} B/span  "
              f"{m['batches']:>5} batches  {m['rows']:>7,} rows  {m['summaries']:>5} summaries  "
              f"sealing {m['seconds']:.2f} s")
    verdict = "meets" if r["meets_target"] else "MISSES"
    print(f"  summaries / rows: {r['bytes_ratio']:.4f} of the bytes = {r['reduction']:.1%} fewer "
          f"({verdict} the >= {TARGET_REDUCTION:.0%} target); sealing time ratio {r['seal_time_ratio']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
