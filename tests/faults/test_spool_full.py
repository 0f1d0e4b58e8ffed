"""Fault 5: the spool fills up (a tiny ``spool.max_bytes``) while the aggregator is away.

sidecar/README.md, "The spool": ``drop_oldest`` deletes the oldest segment and counts its rows
(``sentinel_sidecar_dropped_rows_total{reason="spool_full"}``); ``refuse`` answers new exports with
UNAVAILABLE, so the app keeps its data. Either way: rows stored + rows counted dropped = rows
acknowledged.
"""

from __future__ import annotations

from tests.faults.conftest import (
    AggregatorProc,
    Exporter,
    FaultEnv,
    assert_exactly_once,
    delivery,
    drained,
    observe,
    wait_until,
)

SPOOL = ["--spool-max-bytes", "64KiB", "--spool-segment-bytes", "8KiB", "--shutdown-grace-s", "1"]
REQUESTS, SPANS = 60, 20  # ~4.6 KB of wire body per request: ~270 KB in all, four times the spool


def _fill(faults: FaultEnv, policy: str) -> tuple[AggregatorProc, Exporter, dict[str, float]]:
    agg = faults.aggregator()  # its port is reserved; nothing listens there yet: the aggregator is away
    sc = faults.sidecar(f"edge-{policy}", aggregator_url=agg.url, mode="store-and-forward",
                        extra=[*SPOOL, "--spool-full-policy", policy]).start()
    ex = faults.exporter(sc, spans_per_request=SPANS)
    ex.send(REQUESTS)
    m = sc.metrics()
    figures = {"dropped": m("sentinel_sidecar_dropped_rows_total", reason="spool_full"),
               "dropped_other": m("sentinel_sidecar_dropped_rows_total") - m("sentinel_sidecar_dropped_rows_total",
                                                                            reason="spool_full"),
               "spool_bytes": m("sentinel_sidecar_spool_bytes"),
               "refused": m("sentinel_sidecar_requests_total", signal="traces", outcome="refused")}
    assert figures["spool_bytes"] <= 64 * 1024
    agg.start()
    wait_until(lambda: drained(sc), 60, "the spool to drain")
    assert sc.term() == 0
    assert agg.term() == 0
    return agg, ex, figures


def test_spool_full_drop_oldest_counts_every_drop(faults: FaultEnv) -> None:
    agg, ex, f = _fill(faults, "drop_oldest")
    assert ex.codes() == {"OK": REQUESTS}, "drop_oldest never refuses an export"
    batches = agg.journal()
    d = delivery(batches, ex.acked, ex.sent)
    assert d.duplicate_rows == 0 and d.duplicate_batches == 0 and d.unknown == 0, d
    assert f["dropped"] > 0 and f["dropped_other"] == 0
    stored = {i for b in batches for i in b.span_ids}
    kept = [all(i in stored for i in c.span_ids) for c in ex.snapshot()]
    partial = [c for c, k in zip(ex.snapshot(), kept, strict=True) if not k and any(i in stored for i in c.span_ids)]
    assert not partial, "a request's rows are kept or dropped together (one batch per request)"
    # The oldest are dropped: what is stored is a run of the newest requests — plus, see below, the
    # oldest one, which the forwarder was retrying while its segment was dropped.
    newest = kept[1:].index(True) + 1
    assert all(kept[newest:]) and not any(kept[1:newest])
    # Every acknowledged row is stored or counted dropped; at most one batch (the one in flight when
    # its segment was dropped) is both. The exact equality is test_..._never_counts_a_delivered_batch.
    over = d.rows + int(f["dropped"]) - len(ex.acked)
    assert 0 <= over <= SPANS, f"stored {d.rows} + counted dropped {int(f['dropped'])} vs acknowledged {len(ex.acked)}"
    observe("5a spool full, drop_oldest", acked_rows=len(ex.acked), stored_rows=d.rows,
            dropped_counted=int(f["dropped"]), stored_plus_dropped_minus_acked=over,
            requests_kept=sum(kept), oldest_request_kept=kept[0], spool_kib=round(f["spool_bytes"] / 1024))


# Was a bug (fixed): see the fault suite README.
def test_spool_full_drop_oldest_never_counts_a_delivered_batch_as_dropped(faults: FaultEnv) -> None:
    agg, ex, f = _fill(faults, "drop_oldest")
    stored = sum(b.rows for b in agg.journal())
    assert stored + f["dropped"] == len(ex.acked)


def test_spool_full_refuse_answers_unavailable_and_loses_nothing(faults: FaultEnv) -> None:
    agg, ex, f = _fill(faults, "refuse")
    codes = ex.codes()
    assert codes["UNAVAILABLE"] > 0 and codes["OK"] > 0, codes
    assert set(codes) == {"OK", "UNAVAILABLE"}, codes
    calls = ex.snapshot()
    first_refused = next(i for i, c in enumerate(calls) if c.code != "OK")
    assert all(c.code != "OK" for c in calls[first_refused:]), "nothing is taken while the spool is full"
    # A refusal does not wait for room: a blocked export would end DEADLINE_EXCEEDED, not UNAVAILABLE
    # (checked above). How quick it is is a figure for the table, not an assertion.
    refusal_s = sorted(c.seconds for c in calls[first_refused:])
    assert f["dropped"] == 0 and f["dropped_other"] == 0
    assert f["refused"] == codes["UNAVAILABLE"]
    d = assert_exactly_once(agg.journal(), ex.acked, ex.sent)
    assert d.rows == len(ex.acked)
    observe("5b spool full, refuse", acked_rows=len(ex.acked), stored_rows=d.rows,
            dropped_counted=int(f["dropped"]), refused_exports=codes["UNAVAILABLE"],
            slowest_refusal_ms=round(refusal_s[-1] * 1000, 1))
