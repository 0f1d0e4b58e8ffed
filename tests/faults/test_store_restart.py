"""The PostgreSQL alert store across a database restart (issue 17: "PostgreSQL restart").

A PostgreSQL of the test's own (``initdb`` in a temporary directory, its own port, run as the
``postgres`` user through ``setpriv``: the machine's shared server is never touched) is stopped
(fast shutdown) under two stores on it, as two replicas. Meanwhile a write fails with a
``StoreError`` naming the redacted URL; once it is back, writes resume on the same store (the pool
replaces its broken connections), the other replica's listener reconnects, and an alert raised
after the restart reaches it. Skipped without ``initdb`` or ``setpriv``, or when not run as root.
"""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig
from aggregator.alerting.pg_store import PgAlertStore
from aggregator.alerting.store import StoreError
from sentinel.alerts import Alert
from tests.faults.conftest import observe, wait_until
from tests.faults.servers import OwnPostgres
from tests.test_alert_manager import RecordingSink, cand

pytestmark = pytest.mark.system

def test_the_store_and_its_listener_survive_a_postgresql_restart(own_postgres: OwnPostgres) -> None:
    url = own_postgres.url("sentinel")
    one = PgAlertStore(url, registry=CollectorRegistry(), pool_size=2, open_timeout_s=5)
    two = PgAlertStore(url, registry=CollectorRegistry(), pool_size=2, open_timeout_s=5)
    one.open()
    two.open()
    received: list[Alert] = []
    lock = threading.Lock()

    def on_alert(event: str, alert: Alert) -> None:
        with lock:
            received.append(alert)

    try:
        two.listen(on_alert, lambda: None)
        wait_until(two.listening.is_set, 10, "replica 2 listening")
        m = AlertManager(AlertManagerConfig(group_wait_s=0), one, AlertHub(), sinks=[RecordingSink()],
                         registry=CollectorRegistry())
        m.restore()
        m.emit([cand(service="before")])
        wait_until(lambda: any(a.service_name == "before" for a in received), 10, "the first alert on replica 2")

        own_postgres.stop()
        with pytest.raises(StoreError) as down:
            m.emit([cand(service="during")])
        assert "s3cret-pw" not in str(down.value) and "postgres:***@127.0.0.1" in str(down.value)
        wait_until(lambda: not two.listening.is_set(), 10, "replica 2 noticing the database is gone")

        own_postgres.start()
        t0 = time.monotonic()

        def write_works() -> bool:
            try:
                m.emit([cand(service="after")])
                return True
            except StoreError:
                return False

        wait_until(write_works, 30, "writes resuming after the restart")
        resumed = time.monotonic() - t0
        wait_until(lambda: any(a.service_name == "after" for a in received), 30,
                   "an alert raised after the restart reaching replica 2")
        observe("PostgreSQL restart under the alert store", writes_resumed_s=round(resumed, 2),
                listener_back_s=round(time.monotonic() - t0, 2))
        assert {a.service_name for a in one.unresolved()} >= {"before", "after"}
    finally:
        one.close()
        two.close()
