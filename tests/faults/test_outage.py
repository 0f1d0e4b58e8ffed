"""Fault 4: the network between an edge sidecar and the aggregator is gone for a while, then back.

Scaled down from "several minutes": 25 s of traffic at 300 spans/s, the TCP path cut (a killed
proxy: connections reset, nothing listening) for 15 s of it. store-and-forward mode
(sidecar/README.md): every export is acknowledged from the spool, the spool grows during the outage
and, once the path is back, replays in order — seq increasing at the aggregator — and nothing is lost.
"""

from __future__ import annotations

import itertools
import time

from tests.faults.conftest import FaultEnv, assert_exactly_once, drained, observe, seqs_by_sidecar, wait_until


def test_edge_outage_spool_drains_in_order_and_loses_nothing(faults: FaultEnv) -> None:
    agg = faults.aggregator().start()
    proxy = faults.proxy(agg.port)
    sc = faults.sidecar("edge-outage", aggregator_url=f"http://127.0.0.1:{proxy.port}", mode="store-and-forward",
                        extra=["--spool-segment-bytes", "256KiB"]).start()
    ex = faults.exporter(sc, rate_rps=6, spans_per_request=50).start()  # 300 spans/s
    time.sleep(4)
    faults.proxy_down(proxy)
    outage_start = time.monotonic()
    peak_records = peak_bytes = 0.0
    while time.monotonic() - outage_start < 15:
        m = sc.metrics()
        peak_records = max(peak_records, m("sentinel_sidecar_spool_records"))
        peak_bytes = max(peak_bytes, m("sentinel_sidecar_spool_bytes"))
        time.sleep(0.5)
    faults.proxy_up(proxy)
    restored = time.monotonic()
    time.sleep(6)  # traffic goes on while the backlog drains
    left_at_stop = sc.metrics()("sentinel_sidecar_spool_records")
    ex.stop()
    wait_until(lambda: drained(sc), 90, "the spool to drain", interval_s=0.2)
    drained_s = time.monotonic() - restored
    retries = sc.metrics()("sentinel_sidecar_forward_retries_total")
    assert sc.term() == 0
    assert agg.term() == 0

    batches = agg.journal()
    d = assert_exactly_once(batches, ex.acked, ex.sent)
    seqs = seqs_by_sidecar(batches)["edge-outage"]
    inversions = sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
    assert inversions == 0, f"{inversions} batches arrived out of seq order"
    codes = ex.codes()
    assert set(codes) == {"OK"}, f"store-and-forward refuses nothing while the spool has room: {codes}"
    assert peak_records > 50
    observe("4 aggregator unreachable 15 s of 25 s at 300 spans/s (store-and-forward)",
            acked_rows=len(ex.acked), stored_rows=d.rows, lost=d.missing_acked, duplicated=d.duplicate_rows,
            batches=d.batches, seq_inversions=inversions, peak_spool_batches=int(peak_records),
            peak_spool_kib=round(peak_bytes / 1024), spool_batches_6s_after_link_back=int(left_at_stop),
            drained_after_link_back_s=round(drained_s, 1), forward_retries=int(retries))
