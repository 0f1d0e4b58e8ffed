"""Fault 2: the aggregator is SIGKILLed mid-ingest while two sidecars forward, then restarted.

aggregator/README.md, "Durability and de-duplication": a 200 is sent only after the batch is
committed (WAL, synchronous=FULL), so a crash after the 200 never loses it; a crash before it
leaves nothing and the sidecar's retry is stored once — also when the batch *was* committed and
only the answer was lost (the (sidecar, seq) pair is in the same database).
"""

from __future__ import annotations

import time

from tests.faults.conftest import FaultEnv, assert_exactly_once, drained, observe, read_journal, wait_until


def test_aggregator_sigkill_mid_ingest_every_acknowledged_row_once(faults: FaultEnv) -> None:
    agg = faults.aggregator().start()
    sidecars = [faults.sidecar(f"pod-{i}", aggregator_url=agg.url, extra=["--batch-timeout-s", "0.05"]).start()
                for i in range(2)]
    exporters = [faults.exporter(sc, rate_rps=10, spans_per_request=40).start()
                 for sc in sidecars]
    committed_vs_acked = []
    downtime = 0.0
    for _ in range(2):
        time.sleep(3)
        agg.kill()
        t0 = time.monotonic()
        # What the sidecars were told was stored must be in the journal of the killed process.
        forwarded = sum(sc.metrics()("sentinel_sidecar_forwarded_rows_total") for sc in sidecars)
        journal_rows = sum(b.rows for b in read_journal(agg.data_dir))
        committed_vs_acked.append((int(journal_rows), int(forwarded)))
        assert journal_rows >= forwarded, "a batch acknowledged to a sidecar is not in the journal"
        time.sleep(1.5)
        agg.start()
        downtime += time.monotonic() - t0
    time.sleep(2)
    for e in exporters:
        e.stop()
    for sc in sidecars:
        wait_until(lambda sc=sc: drained(sc), 60, f"{sc.name} to drain")
    duplicates = agg.metrics()("sentinel_aggregator_duplicate_batches_total")
    retries = sum(sc.metrics()("sentinel_sidecar_forward_retries_total") for sc in sidecars)
    for sc in sidecars:
        assert sc.term() == 0
    assert agg.term() == 0

    acked = set().union(*(e.acked for e in exporters))
    sent = set().union(*(e.sent for e in exporters))
    d = assert_exactly_once(agg.journal(), acked, sent)
    observe("2 aggregator SIGKILL x2 mid-ingest (2 sidecars)", acked_rows=len(acked), stored_rows=d.rows,
            lost=d.missing_acked, duplicated=d.duplicate_rows,
            journal_vs_sidecar_acked_at_kill=committed_vs_acked, retries=int(retries),
            duplicates_answered_after_restart=int(duplicates), downtime_s=round(downtime, 1),
            refused_exports=sum(sum(v for k, v in e.codes().items() if k != "OK") for e in exporters))


def test_lost_answers_are_retried_and_stored_once(faults: FaultEnv) -> None:
    """The other half of "mid-ingest": the batch is committed but the 200 never reaches the sidecar
    (the network drops it). The sidecar retries the same (sidecar, seq); the aggregator answers
    "duplicate" and stores nothing twice."""
    agg = faults.aggregator().start()
    lossy = faults.lossy_proxy(agg.port)
    sc = faults.sidecar("pod-lossy", aggregator_url=f"http://127.0.0.1:{lossy.port}",
                        extra=["--batch-timeout-s", "0.05"]).start()
    ex = faults.exporter(sc, rate_rps=10, spans_per_request=40).start()
    time.sleep(2)
    lossy.drop_answers = True
    time.sleep(3)
    lossy.drop_answers = False
    time.sleep(2)
    ex.stop()
    wait_until(lambda: drained(sc), 60, "the sidecar to drain")
    m = agg.metrics()
    duplicates = m("sentinel_aggregator_duplicate_batches_total")
    assert lossy.dropped > 0
    assert duplicates > 0, "answers were dropped after commit, so retries must have been answered 'duplicate'"
    assert sc.term() == 0
    assert agg.term() == 0
    d = assert_exactly_once(agg.journal(), ex.acked, ex.sent)
    observe("2b answers lost after commit (lossy network)", acked_rows=len(ex.acked), stored_rows=d.rows,
            lost=d.missing_acked, duplicated=d.duplicate_rows, answers_dropped=lossy.dropped,
            duplicate_batches_answered=int(duplicates))
