"""Two ``sentinel aggregator`` processes on one PostgreSQL store (``store_url``; issue 17's alert side).

Each replica has its own port and data_dir; the store is a database of its own on the machine's
PostgreSQL. An error burst POSTed to replica 1's ``/v1/ingest`` raises one alert, which replica 2's
API shows too (and its live stream, through LISTEN/NOTIFY); neither log holds the URL's password.
"""

from __future__ import annotations

import time

import httpx
import pytest

from sentinel import wire
from sentinel.model import FeatureBatch
from tests.conftest import pg_database
from tests.faults.conftest import AggregatorProc, FaultEnv, observe, wait_until
from tests.test_event_time import MSGPACK, _rows

pytestmark = pytest.mark.system

S = 1_000_000_000
PASSWORD = "cluster-secret-0f3a"  # trust authentication ignores it; it must still never be logged


def test_an_alert_raised_through_one_replica_is_on_both_apis(faults: FaultEnv) -> None:
    with pg_database() as url:
        url = url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")
        settings = {"store_url": url, "detectors": {"error_burst": {"window_s": 1.0}}, "alerts": {"group_wait_s": 1}}
        one = AggregatorProc(faults, "replica-1", config=settings).start()
        two = AggregatorProc(faults, "replica-2", config=settings).start()
        now = time.time_ns()
        sent = time.monotonic()
        with httpx.Client(timeout=10.0) as c:
            for seq, rows in enumerate((_rows("payments", now - 8 * S, 40, 24), _rows("payments", now + 4 * S, 5, 0))):
                body = wire.encode(FeatureBatch.from_rows(rows), sidecar="payments", seq=seq)
                r = c.post(f"{one.url}/v1/ingest", content=body, headers=MSGPACK)
                assert r.status_code == 200, r.text

        def bursts(proc: AggregatorProc) -> list[str]:
            return [a["alert_id"] for a in proc.alerts() if a["anomaly_type"] == "error_burst"]

        wait_until(lambda: bool(bursts(one)), 30, "the alert on replica 1")
        seen_s = wait_until(lambda: bool(bursts(two)), 30, "the alert on replica 2")
        assert bursts(one) == bursts(two) and len(bursts(two)) == 1
        observe("cluster store: alert raised on replica 1 seen on replica 2", seconds=round(time.monotonic() - sent, 2),
                wait_on_two=round(seen_s, 2))
        assert one.term() == 0 and two.term() == 0
        for proc in (one, two):
            log = proc.log()
            assert PASSWORD not in log, f"{proc.name} logged the store's password"
            assert "postgres:***@127.0.0.1" in log  # the store it opened, redacted
