"""The alert store of a cluster: PostgreSQL (``store_url``), shared by every replica.

The same interface and tables as :class:`aggregator.alerting.store.SQLiteAlertStore` (the side
tables too: audit, feedback, confidence floors, config versions), plus what makes several replicas
one alerting system:

- **schema** created and migrated at :meth:`PgAlertStore.open`, idempotently, under an advisory
  lock, so replicas starting together do not race (``meta.schema_version``);
- **one open alert per fingerprint** (the group key): a partial unique index on ``alerts
  (fingerprint) WHERE status <> 'resolved'``; :meth:`PgAlertStore.insert` is ``INSERT … ON CONFLICT
  DO NOTHING`` and returns the alert another replica stored first, which the caller then joins;
- **one outbox row per notification**: a notification is keyed (alert id or ``<id>#<n>``) in table
  ``notifications`` and its outbox rows are written only by the first replica to key it, so two
  replicas sending the same notification send it once (even after the first was delivered);
- **each outbox row delivered by one replica**: :meth:`PgAlertStore.outbox_pending` claims rows
  (``SELECT … FOR UPDATE SKIP LOCKED``) with a lease; a dead claimer's rows are claimed by another
  replica once the lease ran out (a delivery is at least once, as with one process and a restart);
- **the storm limit** counts every replica's notifications (table ``notifications``: key, time);
- **a resolved alert stays resolved**: an update from a replica that has not yet heard of the
  resolution is ignored rather than reopening it;
- **live updates**: every write sends ``NOTIFY sentinel_alerts`` in its transaction (delivered on
  commit); :meth:`PgAlertStore.listen` runs a thread that LISTENs and hands other replicas' alerts
  (read back from the table: a notification carries only ids) and silence changes to callbacks —
  the aggregator feeds them to its alert manager and its live hub (SSE, gRPC ``Watch``).
- **configuration versions**: the same listener follows ``NOTIFY sentinel_config`` (sent by
  :class:`aggregator.config_versions.ConfigVersions` with each new version) for a cluster replica.

Thread-safe: a connection pool; each method is one transaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import psycopg
import psycopg_pool
from prometheus_client import CollectorRegistry, Counter

from aggregator.alerting.silences import Silence
from aggregator.alerting.store import (
    AlertQuery,
    OutboxItem,
    SqlCursor,
    StoreError,
    alert_doc,
    silence_of_row,
    where_of,
)
from sentinel.alerts import Alert

__all__ = ["CHANNEL", "CONFIG_CHANNEL", "DEFAULT_OUTBOX_LEASE_S", "PgAlertStore", "redact_url"]

log = logging.getLogger(__name__)

#: The NOTIFY channel of alert and silence changes.
CHANNEL = "sentinel_alerts"
#: The NOTIFY channel of new configuration versions (:mod:`aggregator.config_versions`; payload: the number).
CONFIG_CHANNEL = "sentinel_config"
#: How long a replica's claim on outbox rows holds: a delivery (with its retries' backoff) is well
#: under it; a replica that died holding rows has them delivered by another one after it.
DEFAULT_OUTBOX_LEASE_S = 60.0
DEFAULT_OPEN_TIMEOUT_S = 10.0
DEFAULT_POOL_SIZE = 4
SCHEMA_VERSION = 1
# pg_advisory_xact_lock key of schema changes: "sentinel" as a number, constant across versions.
_LOCK_KEY = 0x73656E74696E656C
_IDS_PER_NOTIFY = 100  # a NOTIFY payload is limited to 8000 bytes: 100 ids of 36 characters fit
_LISTEN_RETRY_S = 1.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    ts BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    severity TEXT NOT NULL,
    anomaly_type TEXT NOT NULL,
    service_name TEXT,
    model TEXT,
    status TEXT NOT NULL,
    doc JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (status) WHERE status <> 'resolved';
CREATE INDEX IF NOT EXISTS alerts_service ON alerts (service_name, ts);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_fingerprint ON alerts (fingerprint) WHERE status <> 'resolved';
CREATE TABLE IF NOT EXISTS outbox (
    sink TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    payload BYTEA NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead BOOLEAN NOT NULL DEFAULT false,
    claimed_by TEXT,
    lease_until TIMESTAMPTZ,
    PRIMARY KEY (sink, alert_id)
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (sink, dead, seq);
CREATE TABLE IF NOT EXISTS notifications (
    key TEXT PRIMARY KEY,
    at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_at ON notifications (at);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    starts_at BIGINT NOT NULL,
    ends_at BIGINT NOT NULL,
    doc TEXT NOT NULL
);
"""

# A group's model (and service, type) change as members join: the columns follow the document. A
# resolved alert is not reopened by a replica that has not heard of its resolution yet.
_UPDATE = ("UPDATE alerts SET last_seen=%s, severity=%s, status=%s, service_name=%s, model=%s, anomaly_type=%s, "
           "doc=%s::jsonb WHERE alert_id=%s AND (status <> 'resolved' OR %s = 'resolved')")


def redact_url(url: str) -> str:
    """The URL without its password (and query, which may hold one), for logs.

    >>> redact_url("postgresql://sentinel:s3cret@db:5432/alerts?sslmode=require")
    'postgresql://sentinel:***@db:5432/alerts?…'
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}" if ":" in user else f"{user}@{host}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def _update_row(a: Alert, doc: str) -> tuple[Any, ...]:
    return (a.last_seen, a.severity, a.status, a.service_name, a.model, a.anomaly_type, doc, a.alert_id, a.status)


def _count(db: psycopg.Connection[Any], sql: str, args: Sequence[Any]) -> int:
    row = db.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def _event(a: Alert) -> str:
    return "resolved" if a.status == "resolved" else "update"


class _Sql:
    """A pooled connection as the side tables use one (``?`` placeholders, ``executescript``)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> SqlCursor:
        return self._conn.execute(sql.replace("%", "%%").replace("?", "%s"), tuple(parameters))

    def executescript(self, sql: str, /) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # replicas creating it together
        self._conn.execute(sql.encode())  # no parameters: several statements, taken as they are


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.raised_elsewhere = Counter(
            "sentinel_aggregator_store_raised_elsewhere", "New alerts found already raised by another replica "
            "(the detection joined that alert)", registry=registry)
        self.remote_events = Counter(
            "sentinel_aggregator_store_remote_events", "Alert and silence changes of other replicas received "
            "(LISTEN/NOTIFY)", registry=registry)
        self.outbox_reclaimed = Counter(
            "sentinel_aggregator_store_outbox_reclaimed", "Outbox rows claimed after another replica's lease ran "
            "out (it died or stalled while holding them)", registry=registry)


class PgAlertStore:
    """The alert store in PostgreSQL (``store_url``); every replica of a cluster opens the same one."""

    shared = True
    dialect = "postgresql"

    def __init__(self, url: str, *, registry: CollectorRegistry | None = None,
                 outbox_lease_s: float = DEFAULT_OUTBOX_LEASE_S, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                 pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.url = url
        self.redacted_url = redact_url(url)
        self.origin = uuid.uuid4().hex  # this process's writes, told apart in the notifications
        self.outbox_lease_s = outbox_lease_s
        self._open_timeout_s = open_timeout_s
        self._pool_size = pool_size
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self.listening = threading.Event()  # set while LISTEN is in effect (tests wait for it)
        self.metrics = _Metrics(registry)

    # --- lifecycle ----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._pool is not None:
                return
            pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
                self.url, min_size=1, max_size=self._pool_size, open=False, name="sentinel-alert-store")
            try:
                pool.open(wait=True, timeout=self._open_timeout_s)
                with pool.connection() as db:
                    db.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))  # released at commit
                    db.execute(_SCHEMA.encode())
                    row = db.execute("SELECT v FROM meta WHERE k = 'schema_version'").fetchone()
                    if row is not None and int(row[0]) > SCHEMA_VERSION:
                        raise StoreError(f"alert store {self.redacted_url}: schema version {row[0]} is newer than "
                                         f"this aggregator's {SCHEMA_VERSION}: upgrade it")
                    db.execute("INSERT INTO meta (k, v) VALUES ('schema_version', %s) ON CONFLICT (k) DO UPDATE "
                               "SET v = excluded.v", (str(SCHEMA_VERSION),))
            except StoreError:
                pool.close()
                raise
            except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
                pool.close()
                raise StoreError(f"alert store {self.redacted_url}: {e}") from e
            self._pool = pool
        log.info("alert store: PostgreSQL %s (shared by the replicas)", self.redacted_url)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5.0)
            self._listener = None
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction on a pooled connection (committed on leaving, rolled back on an error)."""
        pool = self._pool
        if pool is None:
            raise StoreError("alert store is not open")
        try:
            with pool.connection() as db:
                yield db
        except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
            raise StoreError(f"alert store {self.redacted_url}: {e}") from e

    @contextlib.contextmanager
    def connection(self) -> Iterator[_Sql]:
        """A transaction for the tables kept beside the alerts (:class:`aggregator.alerting.store.SideTable`)."""
        with self._tx() as db:
            yield _Sql(db)

    def _changed(self, db: psycopg.Connection[Any], event: str, ids: Sequence[str]) -> None:
        """Tell the other replicas (on commit) which alerts changed; ``event`` is the hub's."""
        for i in range(0, max(len(ids), 1), _IDS_PER_NOTIFY):  # a change of the silences has no ids
            payload = json.dumps({"o": self.origin, "e": event, "ids": list(ids[i:i + _IDS_PER_NOTIFY])})
            db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))

    # --- alerts -------------------------------------------------------------------------------

    def insert(self, alert: Alert, sinks: Sequence[str]) -> Alert | None:
        """The alert and its outbox rows in one transaction, unless an unresolved alert with its fingerprint
        is stored (another replica raised it first): then nothing is written and that one is returned."""
        doc = alert_doc(alert)
        for _ in range(3):  # the one found may resolve before it is read: insert again
            with self._tx() as db:
                row = db.execute(
                    "INSERT INTO alerts (alert_id, fingerprint, ts, last_seen, severity, anomaly_type, service_name, "
                    "model, status, doc) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s::jsonb) "
                    "ON CONFLICT (fingerprint) WHERE status <> 'resolved' DO NOTHING RETURNING alert_id",
                    (alert.alert_id, alert.fingerprint, alert.timestamp, alert.last_seen, alert.severity,
                     alert.anomaly_type, alert.service_name, alert.model, alert.status, doc)).fetchone()
                if row is not None:
                    self._outbox_rows(db, sinks, alert.alert_id, doc)
                    self._changed(db, "alert", [alert.alert_id])
                    return None
                row = db.execute("SELECT doc FROM alerts WHERE fingerprint=%s AND status <> 'resolved'",
                                 (alert.fingerprint,)).fetchone()
            if row is not None:
                self.metrics.raised_elsewhere.inc()
                return Alert.from_dict(row[0])
        raise StoreError(f"alert store: the open alert of {alert.fingerprint} keeps changing")

    def notify(self, alert: Alert, sinks: Sequence[str], key: str) -> None:
        """One notification: the alert's new state and its outbox rows (keyed ``key``: a replica writing the
        same notification again adds none), in one transaction."""
        doc = alert_doc(alert)
        with self._tx() as db:
            db.execute(_UPDATE, _update_row(alert, doc))
            # Keyed apart from the outbox, whose row is gone once delivered: a replica sending the same
            # notification a moment later (it had not heard of the first yet) adds no second one.
            first = db.execute("INSERT INTO notifications (key, at) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING "
                               "RETURNING key", (key, alert.notified_at or alert.last_seen)).fetchone()
            if first is not None:
                self._outbox_rows(db, sinks, key, doc)
            self._changed(db, _event(alert), [alert.alert_id])

    @staticmethod
    def _outbox_rows(db: psycopg.Connection[Any], sinks: Sequence[str], key: str, doc: str) -> None:
        for sink in sinks:  # inside the caller's transaction
            db.execute("INSERT INTO outbox (sink, alert_id, payload) VALUES (%s,%s,%s) "
                       "ON CONFLICT (sink, alert_id) DO NOTHING", (sink, key, doc.encode()))

    def update(self, alerts: Iterable[Alert]) -> None:
        todo = list(alerts)
        if not todo:
            return
        with self._tx() as db:
            with db.cursor() as cur:
                cur.executemany(_UPDATE, [_update_row(a, alert_doc(a)) for a in todo])
            for event in ("update", "resolved"):
                ids = [a.alert_id for a in todo if _event(a) == event]
                if ids:
                    self._changed(db, event, ids)

    def get(self, alert_id: str) -> Alert | None:
        with self._tx() as db:
            row = db.execute("SELECT doc FROM alerts WHERE alert_id=%s", (alert_id,)).fetchone()
        return Alert.from_dict(row[0]) if row else None

    def get_many(self, alert_ids: Sequence[str]) -> list[Alert]:
        with self._tx() as db:
            rows = db.execute("SELECT doc FROM alerts WHERE alert_id = ANY(%s)", (list(alert_ids),)).fetchall()
        return [Alert.from_dict(r[0]) for r in rows]

    @staticmethod
    def _where(q: AlertQuery) -> tuple[str, list[Any]]:
        return where_of(q, "EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(doc->'members', '[]'::jsonb)) m "
                           "WHERE m->'labels'->>'model' = %s)", "%s")

    def query(self, q: AlertQuery) -> tuple[list[Alert], int]:
        """A page of matching alerts, newest first, and how many match in all."""
        q.validate()
        where, args = self._where(q)
        with self._tx() as db:
            total = _count(db, f"SELECT COUNT(*) FROM alerts{where}", args)
            rows = db.execute(f"SELECT doc FROM alerts{where} ORDER BY ts DESC, alert_id LIMIT %s OFFSET %s",
                              [*args, q.limit, q.offset]).fetchall()
        return [Alert.from_dict(r[0]) for r in rows], total

    def unresolved(self) -> list[Alert]:
        with self._tx() as db:
            rows = db.execute("SELECT doc FROM alerts WHERE status <> 'resolved' ORDER BY ts").fetchall()
        return [Alert.from_dict(r[0]) for r in rows]

    def summary(self, start: int | None, end: int | None) -> dict[str, Any]:
        """Counts by severity, type, status and service of alerts raised in [start, end)."""
        where, args = self._where(AlertQuery(start=start, end=end))
        out: dict[str, Any] = {}
        with self._tx() as db:
            out["total"] = _count(db, f"SELECT COUNT(*) FROM alerts{where}", args)
            for col, key in (("severity", "by_severity"), ("anomaly_type", "by_type"), ("status", "by_status"),
                             ("service_name", "by_service")):
                rows = db.execute(f"SELECT {col}, COUNT(*) FROM alerts{where} GROUP BY {col}", args).fetchall()
                out[key] = {"" if k is None else str(k): int(n) for k, n in rows}  # no service: ""
        return out

    def prune(self, before_ns: int) -> int:
        """Delete resolved alerts raised before ``before_ns`` (retention); open ones are kept."""
        with self._tx() as db:
            # Outbox keys are the alert id, or <alert_id>#<n> for its later notifications.
            cur = db.execute("DELETE FROM alerts WHERE ts < %s AND status = 'resolved' AND NOT EXISTS "
                             "(SELECT 1 FROM outbox o WHERE o.alert_id = alerts.alert_id OR "
                             "o.alert_id LIKE alerts.alert_id || '#%%')", (before_ns,))
            return int(cur.rowcount)

    # --- outbox -------------------------------------------------------------------------------

    def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        """Claim the oldest undelivered rows of ``sink`` that no other live replica holds (its lease ran out,
        or none), in the order they were written; this replica's own claims are renewed."""
        with self._tx() as db:
            rows = db.execute(
                "WITH due AS (SELECT sink, alert_id, claimed_by AS prev FROM outbox WHERE sink=%s AND NOT dead AND "
                "(claimed_by IS NULL OR claimed_by=%s OR lease_until < now()) ORDER BY seq LIMIT %s "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE outbox o SET claimed_by=%s, lease_until=now() + make_interval(secs => %s) FROM due "
                "WHERE o.sink = due.sink AND o.alert_id = due.alert_id RETURNING o.alert_id, o.payload, o.attempts, "
                "o.seq, due.prev",
                (sink, self.origin, limit, self.origin, self.outbox_lease_s)).fetchall()
        rows.sort(key=lambda r: r[3])
        reclaimed = sum(1 for r in rows if r[4] is not None and r[4] != self.origin)
        if reclaimed:
            self.metrics.outbox_reclaimed.inc(reclaimed)
            log.warning("sink %s: %d outbox rows claimed after another replica's lease ran out", sink, reclaimed)
        return [OutboxItem(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def outbox_done(self, sink: str, alert_ids: Sequence[str]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE sink=%s AND alert_id = ANY(%s)", (sink, list(alert_ids)))

    def outbox_failed(self, sink: str, alert_id: str, error: str, *, dead: bool) -> None:
        """Count a failed attempt; ``dead`` gives up on the row (kept, visible, never retried). The claim is
        kept: this replica retries after its backoff, another one only if it dies."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1, last_error=%s, dead=%s WHERE sink=%s AND "
                       "alert_id=%s", (error[:500], dead, sink, alert_id))

    def outbox_depth(self, sink: str) -> int:
        with self._tx() as db:
            return _count(db, "SELECT COUNT(*) FROM outbox WHERE sink=%s AND NOT dead", (sink,))

    def notifications_since(self, since_ns: int) -> int:
        """Notifications every replica sent since ``since_ns`` (the storm limit across replicas); older
        ones are of no further use and deleted."""
        with self._tx() as db:
            db.execute("DELETE FROM notifications WHERE at < %s", (since_ns,))
            return _count(db, "SELECT COUNT(*) FROM notifications", ())

    # --- silences -----------------------------------------------------------------------------

    def put_silence(self, silence: Silence) -> None:
        doc = json.dumps(silence.to_dict())
        with self._tx() as db:
            db.execute("INSERT INTO silences (id, starts_at, ends_at, doc) VALUES (%s,%s,%s,%s) ON CONFLICT (id) "
                       "DO UPDATE SET starts_at=excluded.starts_at, ends_at=excluded.ends_at, doc=excluded.doc",
                       (silence.id, silence.starts_at, silence.ends_at, doc))
            self._changed(db, "silences", [])

    def get_silence(self, silence_id: str) -> Silence | None:
        with self._tx() as db:
            row = db.execute("SELECT doc, starts_at, ends_at FROM silences WHERE id=%s", (silence_id,)).fetchone()
        return silence_of_row(row) if row else None

    def silences(self) -> list[Silence]:
        with self._tx() as db:
            rows = db.execute("SELECT doc, starts_at, ends_at FROM silences ORDER BY starts_at").fetchall()
        return [silence_of_row(r) for r in rows]

    def delete_silence(self, silence_id: str) -> bool:
        with self._tx() as db:
            deleted = int(db.execute("DELETE FROM silences WHERE id=%s", (silence_id,)).rowcount) > 0
            if deleted:
                self._changed(db, "silences", [])
        return deleted

    # --- other replicas' changes ----------------------------------------------------------------

    def listen(self, on_alert: Callable[[str, Alert], None], on_silences: Callable[[], None],
               on_config: Callable[[int], None] | None = None) -> None:
        """From now on, in a thread: ``on_alert(event, alert)`` for each alert another replica raised
        (``alert``) or changed (``update``, ``resolved``), ``on_silences()`` when it changed the silences,
        ``on_config(version)`` when any replica recorded a configuration version. After a reconnection
        (notifications sent meanwhile are lost) all again: the silences, every unresolved alert as an
        ``update``, ``on_config(0)`` (look at the newest version). Stopped by :meth:`close`."""
        if self._listener is not None:
            return
        self._stop.clear()
        self._listener = threading.Thread(target=self._listen, args=(on_alert, on_silences, on_config),
                                          name="alert-store-listen", daemon=True)
        self._listener.start()

    def _listen(self, on_alert: Callable[[str, Alert], None], on_silences: Callable[[], None],
                on_config: Callable[[int], None] | None) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if on_config is not None:
                        conn.execute(f"LISTEN {CONFIG_CHANNEL}")
                    self.listening.set()
                    if failing:
                        log.info("alert store: listening to the other replicas' changes again")
                        failing = False
                        self._resync(on_alert, on_silences)
                        if on_config is not None:
                            on_config(0)
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            if n.channel == CONFIG_CHANNEL and on_config is not None:
                                self._config_received(n.payload, on_config)
                            else:
                                self._received(n.payload, on_alert, on_silences)
            except (psycopg.Error, StoreError) as e:
                self.listening.clear()
                if not failing:
                    log.warning("alert store: listening to the other replicas' changes failed (%s); retrying", e)
                    failing = True
                self._stop.wait(_LISTEN_RETRY_S)
        self.listening.clear()

    def _resync(self, on_alert: Callable[[str, Alert], None], on_silences: Callable[[], None]) -> None:
        """After a reconnection: what may have changed while nobody listened (notifications are not kept)
        — the silences, and every unresolved alert as an ``update``."""
        on_silences()
        for alert in self.unresolved():
            on_alert("update", alert)

    def _config_received(self, payload: str, on_config: Callable[[int], None]) -> None:
        try:
            on_config(int(payload))
        except Exception:  # a bad payload or a failing callback must not stop the listener
            log.exception("alert store: a configuration version of another replica could not be followed")

    def _received(self, payload: str, on_alert: Callable[[str, Alert], None],
                  on_silences: Callable[[], None]) -> None:
        try:
            note = json.loads(payload)
            if note.get("o") == self.origin:
                return  # this process's own write: its hub has it already
            self.metrics.remote_events.inc()
            if note.get("e") == "silences":
                on_silences()
                return
            for alert in self.get_many([str(i) for i in note.get("ids") or ()]):
                on_alert(str(note.get("e") or "update"), alert)
        except StoreError:
            raise
        except Exception:  # one bad notification or callback must not stop the others
            log.exception("alert store: a change of another replica could not be applied")
