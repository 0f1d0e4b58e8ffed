"""Replay a fixed batch stream through the aggregator's detectors; write, or compare, what they did.

    python -m loadtest.detector_replay --out PATH [--batches 400]   # candidates + saved state, as JSON
    python -m loadtest.detector_replay --compare OLD NEW            # exit 1 and name what differs
    python -m loadtest.detector_replay --speed                      # detectors' thread CPU per batch

A speed change to the detectors must not change what they find or what they save: run this at the
commit before and the commit after (``PYTHONPATH=<an export of the old commit>`` for the old one)
and compare the two files. Floats are written by ``repr`` (JSON), so equal files are equal bit
for bit. The stream is ``loadtest.bench_aggregator``'s corpus (real sidecar rows) at a low event
rate, so that many windows close; every run is the same (fixed seeds, fixed start time):

* rows out of order within a batch, and a share of them late by up to ``--late-s`` (some beyond the
  detectors' lateness: dropped and counted);
* now and then a batch spanning several buckets (a sidecar's spool), and a batch from the far past;
* episodes on one service: an error burst, a cost and token spike, a latency shift, a silence;
* three settings: the defaults, a small ``max_keys`` (keys evicted) and a short lateness (more late rows).

Each setting's candidates (``Candidate.to_dict``) and the detectors' saved state at a few points
and at the end (``DetectorConsumer.snapshot``) are written; state is also read back and the
stream continued from it, so a restore is compared too.

``--speed`` times the other side: ``loadtest.bench_aggregator``'s stream (1,024-row batches, event
time at 100,000 rows/s) through the detectors alone, in this thread's CPU time, and the part of it
spent in ``BucketedKeys`` (its ``add``, ``add_categories`` and ``close``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.bench_aggregator import NS, Stream, build_corpus
from sentinel import wire
from sentinel.model import FeatureBatch

__all__ = ["SETTINGS", "compare", "main", "record", "speed", "stream"]

START_NS = 1_764_000_000 * NS
SEED = 16
_BUCKETED = ("error_burst", "token_abuse", "level_shift", "finish_length", "content_filter", "expensive_prompt",
             "cost_cusum", "drift", "throughput_drop")
#: Detector settings replayed: the defaults, few keys (evictions), a short lateness (more late rows).
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "small": {name: {"max_keys": 6} for name in _BUCKETED},
    "short": {name: {"lateness_s": 5.0} for name in _BUCKETED},
}


def stream(batches: int, *, rows_per_batch: int = 512, event_rows_per_s: float = 40.0, late_s: float = 90.0
           ) -> Iterator[wire.WireBatch]:
    """The fixed stream (see the module docstring)."""
    rng = np.random.default_rng(SEED)
    corpus = build_corpus(6, 512)
    src = Stream(corpus, rows_per_batch=rows_per_batch, sidecars=5, event_rows_per_s=event_rows_per_s,
                 start_unix_nano=START_NS)
    services = sorted({s for s in corpus.batch.strings["service"] if s is not None})
    victim = services[0]
    for k in range(batches):
        b = src.next_batch()
        n = b.batch.n
        numeric = {c: np.array(v, copy=True) for c, v in b.batch.numeric.items()}
        strings = {c: list(v) for c, v in b.batch.strings.items()}
        t = numeric["time_unix_nano"]
        t[:] = t[rng.permutation(n)]  # out of order within the batch
        late = rng.random(n) < 0.05
        t[late] -= (rng.random(int(late.sum())) * late_s * NS).astype(np.int64)
        if k % 37 == 36:  # a spool: this batch's rows spread over the last ten minutes
            t -= (rng.random(n) * 600 * NS).astype(np.int64)
        if k % 101 == 100:  # a batch from the far past
            t -= 3 * 3600 * NS
        mine = np.array([s == victim for s in strings["service"]], dtype=bool)
        phase = k % 120
        if 40 <= phase < 48:  # an error burst
            numeric["is_error"][mine & (rng.random(n) < 0.6)] = 1
        if 60 <= phase < 66:  # a cost and token spike
            for c in ("cost_usd", "input_tokens", "output_tokens"):
                if c in numeric:
                    numeric[c][mine] = numeric[c][mine] * 20
        if 80 <= phase < 90:  # a latency shift
            numeric["latency_ms"][mine] = numeric["latency_ms"][mine] * 4
        keep = np.ones(n, dtype=bool)
        if 100 <= phase < 112:  # a silence
            keep = ~mine
        batch = FeatureBatch(n=n, numeric=numeric, strings=strings)
        if not keep.all():
            batch = batch.take(keep)
        yield wire.WireBatch(sidecar=b.sidecar, seq=b.seq, batch=batch, anomalies=[],
                             created_unix_nano=b.created_unix_nano)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def record(batches: int) -> dict[str, Any]:
    """Each setting's candidates and saved states over the stream (see the module docstring)."""
    from aggregator.analysis.detectors.consumer import DetectorConsumer

    out: dict[str, Any] = {}
    feed = list(stream(batches))
    for name, settings in SETTINGS.items():
        with tempfile.TemporaryDirectory(prefix="detector_replay_") as d:
            consumer = DetectorConsumer(settings, d)
            found: list[Any] = []
            states: list[Any] = []
            for k, b in enumerate(feed):
                arrival = int(b.created_unix_nano)
                found += [c.to_dict() for c in consumer.consume(b, arrival_ns=arrival)]
                if k % 97 == 50 or k == len(feed) - 1:
                    states.append(_jsonable(consumer.snapshot()))
                if k == len(feed) // 2:  # a restart: state read back, the stream continued from it
                    snap = _jsonable(consumer.snapshot() or {})
                    consumer = DetectorConsumer(settings, d)
                    consumer.restore(snap)
            out[name] = {"candidates": _jsonable(found), "states": states,
                         "late_rows": {n: getattr(det, "late_rows", None) for n, det in consumer.detectors.items()}}
    return out


def speed(rows: int = 300_000, warmup_rows: int = 40_000) -> dict[str, float]:
    """The detectors' thread CPU time per batch on the aggregator bench's stream, and BucketedKeys' part."""
    from aggregator.analysis.detectors import buckets
    from aggregator.analysis.detectors.consumer import DetectorConsumer
    from loadtest.bench_aggregator import AggBenchSettings

    spent = [0.0]
    inside = [False]

    def timed(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def run(*args: Any, **kwargs: Any) -> Any:
            if inside[0]:
                return f(*args, **kwargs)
            inside[0], t0 = True, time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                spent[0] += time.thread_time() - t0
                inside[0] = False
        return run

    methods = {m: getattr(buckets.BucketedKeys, m) for m in ("add", "add_categories", "close")}
    s = AggBenchSettings()
    corpus = build_corpus(s.corpus_payloads, s.spans_per_payload)
    src = Stream(corpus, rows_per_batch=s.rows_per_batch, sidecars=s.sidecars, event_rows_per_s=s.event_rows_per_s,
                 start_unix_nano=START_NS)
    warm, feed = src.take(warmup_rows), src.take(rows)
    try:
        for m, f in methods.items():
            setattr(buckets.BucketedKeys, m, timed(f))
        with tempfile.TemporaryDirectory(prefix="detector_replay_") as d:
            consumer = DetectorConsumer({}, d)
            for b in warm:
                consumer.consume(b, arrival_ns=b.created_unix_nano)
            spent[0] = 0.0
            t0 = time.thread_time()
            for b in feed:
                consumer.consume(b, arrival_ns=b.created_unix_nano)
            total = time.thread_time() - t0
    finally:
        for m, f in methods.items():
            setattr(buckets.BucketedKeys, m, f)
    n = len(feed)
    return {"batches": n, "detectors_ms_per_batch": total / n * 1e3, "bucketed_keys_ms_per_batch": spent[0] / n * 1e3,
            "detectors_rows_per_s": sum(b.batch.n for b in feed) / total}


def compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs, by path (empty: identical)."""
    diffs: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if len(diffs) >= 20:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                if k not in a or k not in b:
                    diffs.append(f"{path}/{k}: only in {'new' if k not in a else 'old'}")
                else:
                    walk(a[k], b[k], f"{path}/{k}")
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                diffs.append(f"{path}: {len(a)} items before, {len(b)} after")
            for i, (x, y) in enumerate(zip(a, b, strict=False)):
                walk(x, y, f"{path}[{i}]")
        elif json.dumps(a) != json.dumps(b):
            diffs.append(f"{path}: {a!r} before, {b!r} after")

    walk(old, new, "")
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the record of this code here")
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    p.add_argument("--speed", action="store_true", help="time the detectors on the aggregator bench's stream")
    args = p.parse_args(argv)
    if args.speed:
        fig = speed()
        print(f"detectors {fig['detectors_ms_per_batch']:.2f} ms a batch ({fig['detectors_rows_per_s']:,.0f} rows/s "
              f"thread CPU), BucketedKeys {fig['bucketed_keys_ms_per_batch']:.2f} ms of it ({fig['batches']} batches)")
        return 0
    if args.compare:
        old, new = (json.loads(Path(f).read_text()) for f in args.compare)
        diffs = compare(old, new)
        for line in diffs:
            print(line)
        counts = {k: len(v["candidates"]) for k, v in new.items()}
        print("identical" if not diffs else f"{len(diffs)}+ differences", f"(candidates: {counts})")
        return 1 if diffs else 0
    if not args.out:
        p.error("--out or --compare")
    rec = record(args.batches)
    Path(args.out).write_text(json.dumps(rec, sort_keys=True))
    print({k: len(v["candidates"]) for k, v in rec.items()}, "candidates;",
          {k: v["late_rows"] for k, v in rec.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
