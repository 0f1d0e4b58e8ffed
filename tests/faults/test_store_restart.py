"""The PostgreSQL alert store across a database restart (issue 17: "PostgreSQL restart").

A PostgreSQL of the test's own (``initdb`` in a temporary directory, its own port, run as the
``postgres`` user through ``setpriv``: the machine's shared server is never touched) is stopped
(fast shutdown) under two stores on it, as two replicas. Meanwhile a write fails with a
``StoreError`` naming the redacted URL; once it is back, writes resume on the same store (the pool
replaces its broken connections), the other replica's listener reconnects, and an alert raised
after the restart reaches it. Skipped without ``initdb`` or ``setpriv``, or when not run as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig
from aggregator.alerting.pg_store import PgAlertStore
from aggregator.alerting.store import StoreError
from loadtest.procs import free_port
from sentinel.alerts import Alert
from tests.faults.conftest import observe, wait_until
from tests.test_alert_manager import RecordingSink, cand

pytestmark = pytest.mark.system

BIN = Path("/usr/lib/postgresql/15/bin")


class OwnPostgres:
    """A throwaway PostgreSQL server: ``start`` / ``stop`` by its own pid, same data and port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sentinel-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    @staticmethod
    def _as_postgres(argv: list[str]) -> None:
        subprocess.run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *argv], check=True,
                       capture_output=True, timeout=120)

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:s3cret-pw@127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        log = open(self.dir / "server.log", "ab")  # noqa: SIM115 - the server writes it until stopped
        self.proc = subprocess.Popen(
            ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", str(BIN / "postgres"),
             "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir), "-c", "listen_addresses=127.0.0.1",
             "-c", "fsync=off"], stdout=log, stderr=log)
        log.close()

        def up() -> bool:
            try:
                with psycopg.connect(self.url(), connect_timeout=1):
                    return True
            except psycopg.Error:
                return False

        wait_until(up, 30, "the test's own PostgreSQL accepting connections")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected
            self.proc.wait(30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if os.geteuid() != 0 or not (BIN / "initdb").exists() or shutil.which("setpriv") is None:
        pytest.skip("needs root, setpriv and PostgreSQL 15's initdb to run a server of its own")
    pg = OwnPostgres()
    try:
        pg.start()
        with psycopg.connect(pg.url(), autocommit=True) as admin:
            admin.execute("CREATE DATABASE sentinel")
        yield pg
    finally:
        pg.close()


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
