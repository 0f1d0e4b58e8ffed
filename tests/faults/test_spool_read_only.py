"""Fault 13: the store-and-forward spool directory refuses writes for 10 s (issue 15, case 7).

A real store-and-forward sidecar process whose spool directory stops accepting changes while spans
flow: before the fix, ``Spool.ack``'s ``unlink`` raised and ended the forwarder task for good —
exports were still answered OK, ``/readyz`` stayed 200, nothing was forwarded for 60 s, and SIGTERM
exited 1 with a traceback. sidecar/README.md: every long-running task is supervised (restarted with
a backoff, counted in ``sentinel_sidecar_task_restarts_total{task}``), and a failed one is named by
``/readyz`` (503) until it has run ``settle_s`` without failing.

The suite runs as root, which ignores permissions, and a tmpfs refuses to go read-only while a
segment is open for writing; so the sidecar runs without ``CAP_DAC_OVERRIDE`` (``setpriv``), and
the test takes the write permission off its spool directory (``chmod 555``): ``unlink`` and new
segments then fail with EACCES where a read-only volume gives EROFS — the same ``OSError`` path.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import httpx
import pytest

from tests.faults.conftest import FaultEnv, assert_exactly_once, drained, observe, wait_until

pytestmark = pytest.mark.system

NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_read_only_spool_directory_is_survived_shown_and_recovered(faults: FaultEnv) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to run the sidecar without CAP_DAC_OVERRIDE")
    agg = faults.aggregator().start()
    sc = faults.sidecar("edge", aggregator_url=agg.url, mode="store-and-forward")
    argv = sc.argv
    sc.argv = lambda: NO_OVERRIDE + argv()  # type: ignore[method-assign]
    sc.start()
    assert sc.spool_dir is not None
    ex = faults.exporter(sc, rate_rps=4, spans_per_request=20, error_rate=0.0).start()
    time.sleep(2)

    def restarts() -> float:
        return sc.metrics()("sentinel_sidecar_task_restarts_total", task="forwarder")

    readyz: list[tuple[int, str]] = []
    sc.spool_dir.chmod(0o555)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(sc.ready_url, timeout=2.0)
                readyz.append((r.status_code, r.text))
            time.sleep(0.5)
        restarts_while_read_only = restarts()
        write_errors = sc.metrics()("sentinel_sidecar_spool_write_errors_total")
    finally:
        sc.spool_dir.chmod(0o755)
    recovered_s = wait_until(lambda: httpx.get(sc.ready_url, timeout=2.0).status_code == 200, 60,
                             "/readyz to recover")
    time.sleep(2)
    ex.stop()
    wait_until(lambda: drained(sc), 60, "the spool to drain")
    refused = sum(1 for c in ex.calls if c.code != "OK")
    assert sc.term() == 0, "SIGTERM exits cleanly after the fault"
    assert agg.term() == 0

    named = [text for code, text in readyz if code == 503 and "spool cannot be written" in text]
    assert named, f"/readyz named the unwritable spool while it refused writes: {readyz[-3:]}"
    assert write_errors >= 1 and refused >= 1
    assert {c.code for c in ex.calls} <= {"OK", "UNAVAILABLE"}, "refused exports are retryable"
    d = assert_exactly_once(agg.journal(), ex.acked, ex.sent)
    observe("13 store-and-forward spool directory read-only for 10 s", rows=d.rows, lost=d.missing_acked,
            exports=len(ex.calls), exports_refused=refused, spool_write_errors=int(write_errors),
            forwarder_restarts=int(restarts_while_read_only), readyz_503_naming_spool=len(named),
            readyz_polls=len(readyz), recovered_after_s=f"{recovered_s:.1f}")
