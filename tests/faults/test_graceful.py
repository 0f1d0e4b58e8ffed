"""Fault 3: SIGTERM (a graceful stop, as Kubernetes sends one) of each process while spans flow.

sidecar/README.md, "SIGTERM": stop receiving, seal the open batch, forward for ``shutdown_grace_s``,
then spool what is left (or count it dropped without a spool). aggregator/README.md: the listener
stops, in-flight requests get ``shutdown_grace_s``, what is queued is committed. Exit status 0.
"""

from __future__ import annotations

import time

from tests.faults.conftest import (
    FaultEnv,
    assert_exactly_once,
    drained,
    observe,
    read_journal,
    spool_report,
    wait_until,
)


def test_sidecar_sigterm_while_spans_flow_forwards_everything(faults: FaultEnv) -> None:
    agg = faults.aggregator().start()
    sc = faults.sidecar("pod-term", aggregator_url=agg.url, extra=["--batch-timeout-s", "1.0"]).start()
    ex = faults.exporter(sc, rate_rps=12, spans_per_request=30).start()
    time.sleep(3)
    t0 = time.monotonic()
    assert sc.term() == 0
    stop_s = time.monotonic() - t0
    log = sc.log()
    sc.start()
    time.sleep(2)
    ex.stop()
    wait_until(lambda: drained(sc), 30, "the sidecar to drain")
    assert sc.term() == 0
    assert agg.term() == 0
    assert "did not take everything" not in log and "dropped" not in log, log[-3000:]
    d = assert_exactly_once(agg.journal(), ex.acked, ex.sent)
    observe("3a sidecar SIGTERM mid-flow (aggregator up)", acked_rows=len(ex.acked), stored_rows=d.rows,
            lost=d.missing_acked, duplicated=d.duplicate_rows, stop_s=round(stop_s, 2))


def test_sidecar_sigterm_with_aggregator_unreachable_spools_then_delivers(faults: FaultEnv) -> None:
    agg = faults.aggregator().start()
    proxy = faults.proxy(agg.port)
    sc = faults.sidecar("pod-term-spool", aggregator_url=f"http://127.0.0.1:{proxy.port}", spool=True,
                        extra=["--shutdown-grace-s", "1"]).start()
    ex = faults.exporter(sc, rate_rps=12, spans_per_request=30).start()
    time.sleep(2)
    faults.proxy_down(proxy)  # the aggregator becomes unreachable
    time.sleep(3)
    ex.stop()
    queued = sc.metrics()("sentinel_sidecar_queue_batches")
    assert sc.term() == 0  # memory is spilled to the spool
    log = sc.log()
    assert "the rest stays in the spool" in log
    faults.proxy_up(proxy)
    sc.start()
    spooled_batches, spooled_rows = spool_report(sc)
    wait_until(lambda: drained(sc), 30, "the spool to drain")
    assert sc.term() == 0
    assert agg.term() == 0
    d = assert_exactly_once(agg.journal(), ex.acked, ex.sent)
    observe("3b sidecar SIGTERM, aggregator unreachable (spool)", acked_rows=len(ex.acked), stored_rows=d.rows,
            lost=d.missing_acked, duplicated=d.duplicate_rows, batches_in_memory_at_term=int(queued),
            spooled_batches_at_restart=spooled_batches,
            spooled_rows_at_restart=spooled_rows)


def test_aggregator_sigterm_mid_ingest_commits_what_it_acknowledged(faults: FaultEnv) -> None:
    agg = faults.aggregator().start()
    sidecars = [faults.sidecar(f"pod-{i}", aggregator_url=agg.url, extra=["--batch-timeout-s", "0.05"]).start()
                for i in range(2)]
    exporters = [faults.exporter(sc, rate_rps=10, spans_per_request=40).start()
                 for sc in sidecars]
    time.sleep(3)
    t0 = time.monotonic()
    assert agg.term() == 0
    stop_s = time.monotonic() - t0
    forwarded = sum(sc.metrics()("sentinel_sidecar_forwarded_rows_total") for sc in sidecars)
    journal_rows = sum(b.rows for b in read_journal(agg.data_dir))
    assert journal_rows >= forwarded, "rows acknowledged to sidecars are missing from the journal"
    time.sleep(1)
    agg.start()
    time.sleep(2)
    for e in exporters:
        e.stop()
    for sc in sidecars:
        wait_until(lambda sc=sc: drained(sc), 60, f"{sc.name} to drain")
        assert sc.term() == 0
    assert agg.term() == 0
    acked = set().union(*(e.acked for e in exporters))
    sent = set().union(*(e.sent for e in exporters))
    d = assert_exactly_once(agg.journal(), acked, sent)
    observe("3c aggregator SIGTERM mid-ingest (2 sidecars)", acked_rows=len(acked), stored_rows=d.rows,
            lost=d.missing_acked, duplicated=d.duplicate_rows, stop_s=round(stop_s, 2),
            journal_rows_at_stop=int(journal_rows), sidecar_acked_rows_at_stop=int(forwarded))
