"""Fault 6: spool segments damaged while the sidecar is stopped — bytes flipped inside a record,
a record header overwritten, the newest segment's tail cut mid-record (a torn write) — then restart.

sidecar/README.md, "The spool": a torn tail is truncated; a corrupt record (bad CRC or magic) is
skipped by scanning for the next valid header; both counted
(``sentinel_sidecar_spool_corrupt_records_total``), never a crash; the rest is replayed in order.
(tests/test_spool.py covers the same at unit level; here it is the sidecar process end to end.)
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

from tests.faults.conftest import (
    AggregatorProc,
    FaultEnv,
    SidecarProc,
    delivery,
    drained,
    observe,
    spool_report,
    wait_until,
)

HEADER = struct.Struct("<4sIIQI")  # magic, body length, rows, seq, crc (sidecar/spool.py)


class Record(NamedTuple):
    path: Path
    offset: int
    length: int  # header + body
    seq: int


def records(spool: Path) -> list[Record]:
    out = []
    for seg in sorted(spool.glob("*.seg")):
        data = seg.read_bytes()
        pos = 0
        while pos + HEADER.size <= len(data):
            magic, length, _, seq, _ = HEADER.unpack_from(data, pos)
            assert magic == b"LSP1"
            out.append(Record(seg, pos, HEADER.size + length, seq))
            pos += HEADER.size + length
    return out


def flip(path: Path, offset: int, n: int = 8) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def _spool_with(faults: FaultEnv, requests: int) -> tuple[SidecarProc, list[list[str]], AggregatorProc]:
    """A store-and-forward sidecar that acknowledged ``requests`` exports with its aggregator away
    (not started yet), then stopped gracefully; returns it, each request's span ids, the aggregator."""
    agg = faults.aggregator()
    sc = faults.sidecar("edge-damage", aggregator_url=agg.url, mode="store-and-forward",
                        extra=["--spool-segment-bytes", "16KiB", "--shutdown-grace-s", "1"]).start()
    ex = faults.exporter(sc, spans_per_request=20)
    calls = ex.send(requests)
    assert all(c.code == "OK" for c in calls)
    assert sc.term() == 0
    return sc, [c.span_ids for c in calls], agg


def test_damaged_spool_recovers_counts_and_delivers_the_rest(faults: FaultEnv) -> None:
    sc, span_ids, agg = _spool_with(faults, 12)
    assert sc.spool_dir is not None
    recs = records(sc.spool_dir)
    assert len(recs) == 12 and len({r.path for r in recs}) >= 4, "several segments"
    by_segment: dict[Path, list[int]] = {}
    for i, r in enumerate(recs):
        by_segment.setdefault(r.path, []).append(i)
    segments = sorted(by_segment)
    body_hit = by_segment[segments[0]][1]     # bytes flipped in the middle of a record's body
    header_hit = by_segment[segments[2]][0]   # a record's magic and length overwritten
    torn = len(recs) - 1                      # the newest record, cut in half
    r = recs[body_hit]
    flip(r.path, r.offset + HEADER.size + (r.length - HEADER.size) // 2)
    r = recs[header_hit]
    flip(r.path, r.offset, 8)
    r = recs[torn]
    with r.path.open("r+b") as f:
        f.truncate(r.offset + r.length // 2)

    agg.start()
    sc.start()  # no crash: it comes up and is ready
    m = sc.metrics()
    corrupt = m("sentinel_sidecar_spool_corrupt_records_total")
    waiting, _ = spool_report(sc)
    wait_until(lambda: drained(sc), 30, "the spool to drain")
    assert sc.term() == 0
    assert agg.term() == 0

    damaged = {body_hit, header_hit, torn}
    expect = {i for k, ids in enumerate(span_ids) if k not in damaged for i in ids}
    sent = {i for ids in span_ids for i in ids}
    batches = agg.journal()
    d = delivery(batches, expect, sent)
    stored = {i for b in batches for i in b.span_ids}
    assert d.missing_acked == 0, f"undamaged records lost: {d}"
    assert d.duplicate_rows == 0 and d.unknown == 0, d
    assert stored == expect, "the damaged records are not delivered (a corrupt body is never returned)"
    assert [b.seq for b in batches] == sorted(recs[k].seq for k in range(len(recs)) if k not in damaged)
    assert corrupt >= 2, "the two corrupt records are counted"
    log = sc.log()
    assert "Traceback" not in log
    observe("6 damaged spool (1 body flip, 1 header flip, torn tail)", records=len(recs),
            replayed_records=int(waiting), delivered_records=d.batches, delivered_rows=d.rows,
            lost_undamaged=d.missing_acked, corrupt_records_counted=int(corrupt), damaged_records=len(damaged))


# Was a bug (fixed): see the fault suite README.
def test_torn_spool_tail_is_counted(faults: FaultEnv) -> None:
    sc, _, _ = _spool_with(faults, 3)
    assert sc.spool_dir is not None
    last = records(sc.spool_dir)[-1]
    with last.path.open("r+b") as f:
        f.truncate(last.offset + last.length // 2)
    sc.start()
    m = sc.metrics()
    assert m("sentinel_sidecar_spool_records") == 2
    assert "truncated" in sc.log()
    assert m("sentinel_sidecar_spool_corrupt_records_total") >= 1
