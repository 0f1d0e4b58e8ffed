"""The alert store: alerts, silences and the sinks' outbox, behind one interface.

:class:`AlertStore` is the interface the alert manager, the sinks and the API use; the embedded
default is :class:`SQLiteAlertStore` (one file, ``alerts.db`` in ``data_dir``, WAL,
``synchronous=FULL``). Another SQL database (PostgreSQL) can implement the same protocol.

The outbox is what makes the sinks durable: :meth:`AlertStore.insert` writes the alert (and
:meth:`AlertStore.notify` each later notification of it: its new state) and one outbox row per sink
that is to be sent it in **one transaction**, so no sink can see an alert that is not stored, and
an alert that is stored is sent once its sink can take it — after a broker outage or an aggregator
restart too. A sink deletes its row only once delivery is confirmed.

Thread-safe: one connection guarded by a lock (the analysis thread writes, the API and sinks read
through ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aggregator.alerting.silences import Silence
from sentinel.alerts import SEVERITIES, STATUSES, Alert

__all__ = ["AlertQuery", "AlertStore", "OutboxItem", "SQLiteAlertStore", "SideTable", "StoreError"]

MAX_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    ts INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    severity TEXT NOT NULL,
    anomaly_type TEXT NOT NULL,
    service_name TEXT,
    model TEXT,
    status TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts (ts);
CREATE INDEX IF NOT EXISTS alerts_open ON alerts (status) WHERE status != 'resolved';
CREATE INDEX IF NOT EXISTS alerts_service ON alerts (service_name, ts);
CREATE TABLE IF NOT EXISTS outbox (
    sink TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    payload BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    dead INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, alert_id)
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (sink, dead, seq);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY,
    starts_at INTEGER NOT NULL,
    ends_at INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


class StoreError(Exception):
    """The store cannot be opened or written (a full disk, a file that is not a database)."""


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters of ``GET /api/v1/alerts``; every one optional. Times are unix ns on ``timestamp``."""

    start: int | None = None
    end: int | None = None
    severity: tuple[str, ...] = ()
    service: str | None = None
    model: str | None = None
    anomaly_type: str | None = None
    status: tuple[str, ...] = ()
    limit: int = 100
    offset: int = 0

    def validate(self) -> None:
        for s in self.severity:
            if s not in SEVERITIES:
                raise ValueError(f"severity: {s!r} is not one of {', '.join(SEVERITIES)}")
        for s in self.status:
            if s not in STATUSES:
                raise ValueError(f"status: {s!r} is not one of {', '.join(STATUSES)}")
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValueError(f"limit: must be between 1 and {MAX_PAGE}")
        if self.offset < 0:
            raise ValueError("offset: must not be negative")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError("end: must not be before start")


@dataclass(frozen=True, slots=True)
class OutboxItem:
    alert_id: str
    payload: bytes  # the alert's JSON as it was when raised
    attempts: int


class AlertStore(Protocol):
    """What the alert manager, the sinks and the API need from a store."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def insert(self, alert: Alert, sinks: Sequence[str]) -> None: ...
    def notify(self, alert: Alert, sinks: Sequence[str], key: str) -> None: ...
    def update(self, alerts: Iterable[Alert]) -> None: ...
    def get(self, alert_id: str) -> Alert | None: ...
    def query(self, q: AlertQuery) -> tuple[list[Alert], int]: ...
    def unresolved(self) -> list[Alert]: ...
    def summary(self, start: int | None, end: int | None) -> dict[str, Any]: ...
    def prune(self, before_ns: int) -> int: ...
    def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]: ...
    def outbox_done(self, sink: str, alert_ids: Sequence[str]) -> None: ...
    def outbox_failed(self, sink: str, alert_id: str, error: str, *, dead: bool) -> None: ...
    def outbox_depth(self, sink: str) -> int: ...
    def put_silence(self, silence: Silence) -> None: ...
    def get_silence(self, silence_id: str) -> Silence | None: ...
    def silences(self) -> list[Silence]: ...
    def delete_silence(self, silence_id: str) -> bool: ...


class SideTable:
    """Tables kept beside the alerts in a :class:`SQLiteAlertStore`'s file (``schema``, created on first use)."""

    schema = ""

    def __init__(self, store: SQLiteAlertStore) -> None:
        self.store = store
        self._ready = False
        self._init_lock = threading.Lock()

    def connection(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """The store's connection under its lock, the tables created."""
        with self._init_lock:
            if not self._ready:
                with self.store.connection() as db:
                    db.executescript(self.schema)
                self._ready = True
        return self.store.connection()


def _doc(alert: Alert) -> str:
    return json.dumps(alert.to_dict(), separators=(",", ":"), allow_nan=False)


# A group's model (and service, type) change as members join: the columns follow the document.
_UPDATE = ("UPDATE alerts SET last_seen=?, severity=?, status=?, service_name=?, model=?, anomaly_type=?, doc=? "
           "WHERE alert_id=?")


def _update_row(a: Alert, doc: str) -> tuple[Any, ...]:
    return (a.last_seen, a.severity, a.status, a.service_name, a.model, a.anomaly_type, doc, a.alert_id)


class SQLiteAlertStore:
    """The embedded store (``<data_dir>/alerts.db``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._seq = 0

    def open(self) -> None:
        if self._db is not None:
            return
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # an alert a sink may see must survive a power cut
            db.executescript(_SCHEMA)
            row = db.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"alert store {self.path}: {e}") from e
        self._seq = int(row[0])
        self._db = db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """The open connection under the store's lock: for the tables kept beside the alerts in the
        same file (:mod:`aggregator.alerting.feedback`, :mod:`aggregator.alerting.audit`)."""
        with self._lock:
            yield self.db

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("alert store is not open")
        return self._db

    # --- alerts -------------------------------------------------------------------------------

    def insert(self, alert: Alert, sinks: Sequence[str]) -> None:
        """The alert and its outbox rows, in one transaction."""
        doc = _doc(alert)
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO alerts (alert_id, fingerprint, ts, last_seen, severity, anomaly_type, "
                    "service_name, model, status, doc) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (alert.alert_id, alert.fingerprint, alert.timestamp, alert.last_seen, alert.severity,
                     alert.anomaly_type, alert.service_name, alert.model, alert.status, doc))
                self._outbox_rows(sinks, alert.alert_id, doc)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def notify(self, alert: Alert, sinks: Sequence[str], key: str) -> None:
        """One notification of a stored alert: its new state and the outbox rows (keyed ``key``), in one
        transaction — a restart before it leaves the notification due, after it leaves it sent."""
        doc = _doc(alert)
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(_UPDATE, _update_row(alert, doc))
                self._outbox_rows(sinks, key, doc)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def _outbox_rows(self, sinks: Sequence[str], key: str, doc: str) -> None:
        for sink in sinks:  # inside the caller's transaction
            self._seq += 1
            self.db.execute("INSERT INTO outbox (sink, alert_id, seq, payload) VALUES (?,?,?,?)",
                            (sink, key, self._seq, doc.encode()))

    def update(self, alerts: Iterable[Alert]) -> None:
        rows = [_update_row(a, _doc(a)) for a in alerts]
        if not rows:
            return
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_UPDATE, rows)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def get(self, alert_id: str) -> Alert | None:
        with self._lock:
            row = self.db.execute("SELECT doc FROM alerts WHERE alert_id=?", (alert_id,)).fetchone()
        return Alert.from_dict(json.loads(row[0])) if row else None

    @staticmethod
    def _where(q: AlertQuery) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        args: list[Any] = []
        if q.start is not None:
            clauses.append("ts >= ?")
            args.append(q.start)
        if q.end is not None:
            clauses.append("ts < ?")
            args.append(q.end)
        if q.model:  # the alert's model, or one of its members' (a group of several models has none)
            clauses.append("(model = ? OR EXISTS (SELECT 1 FROM json_each(doc, '$.members') "
                           "WHERE json_extract(value, '$.labels.model') = ?))")
            args += [q.model, q.model]
        for col, value in (("service_name", q.service), ("anomaly_type", q.anomaly_type)):
            if value:
                clauses.append(f"{col} = ?")
                args.append(value)
        for col, values in (("severity", q.severity), ("status", q.status)):
            if values:
                clauses.append(f"{col} IN ({','.join('?' * len(values))})")
                args.extend(values)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query(self, q: AlertQuery) -> tuple[list[Alert], int]:
        """A page of matching alerts, newest first, and how many match in all."""
        q.validate()
        where, args = self._where(q)
        with self._lock:
            total = int(self.db.execute(f"SELECT COUNT(*) FROM alerts{where}", args).fetchone()[0])
            rows = self.db.execute(f"SELECT doc FROM alerts{where} ORDER BY ts DESC, alert_id LIMIT ? OFFSET ?",
                                   [*args, q.limit, q.offset]).fetchall()
        return [Alert.from_dict(json.loads(r[0])) for r in rows], total

    def unresolved(self) -> list[Alert]:
        with self._lock:
            rows = self.db.execute("SELECT doc FROM alerts WHERE status != 'resolved' ORDER BY ts").fetchall()
        return [Alert.from_dict(json.loads(r[0])) for r in rows]

    def summary(self, start: int | None, end: int | None) -> dict[str, Any]:
        """Counts by severity, type, status and service of alerts raised in [start, end)."""
        where, args = self._where(AlertQuery(start=start, end=end))
        out: dict[str, Any] = {}
        with self._lock:
            out["total"] = int(self.db.execute(f"SELECT COUNT(*) FROM alerts{where}", args).fetchone()[0])
            for col, key in (("severity", "by_severity"), ("anomaly_type", "by_type"), ("status", "by_status"),
                             ("service_name", "by_service")):
                rows = self.db.execute(f"SELECT {col}, COUNT(*) FROM alerts{where} GROUP BY {col}", args).fetchall()
                out[key] = {"" if k is None else str(k): int(n) for k, n in rows}  # no service: ""
        return out

    def prune(self, before_ns: int) -> int:
        """Delete resolved alerts raised before ``before_ns`` (retention); open ones are kept."""
        with self._lock:
            # Outbox keys are the alert id, or <alert_id>#<n> for its later notifications.
            cur = self.db.execute("DELETE FROM alerts WHERE ts < ? AND status = 'resolved' AND NOT EXISTS "
                                  "(SELECT 1 FROM outbox o WHERE o.alert_id = alerts.alert_id OR "
                                  "o.alert_id LIKE alerts.alert_id || '#%')", (before_ns,))
            return int(cur.rowcount)

    # --- outbox -------------------------------------------------------------------------------

    def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        """The oldest undelivered, not given-up rows of ``sink``, in the order the alerts were raised."""
        with self._lock:
            rows = self.db.execute("SELECT alert_id, payload, attempts FROM outbox WHERE sink=? AND dead=0 "
                                   "ORDER BY seq LIMIT ?", (sink, limit)).fetchall()
        return [OutboxItem(r[0], bytes(r[1]), int(r[2])) for r in rows]

    def outbox_done(self, sink: str, alert_ids: Sequence[str]) -> None:
        with self._lock:
            self.db.executemany("DELETE FROM outbox WHERE sink=? AND alert_id=?", [(sink, a) for a in alert_ids])

    def outbox_failed(self, sink: str, alert_id: str, error: str, *, dead: bool) -> None:
        """Count a failed attempt; ``dead`` gives up on the row (kept, visible, never retried)."""
        with self._lock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, last_error=?, dead=? WHERE sink=? AND "
                            "alert_id=?", (error[:500], int(dead), sink, alert_id))

    def outbox_depth(self, sink: str) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE sink=? AND dead=0", (sink,)).fetchone()[0])

    # --- silences -----------------------------------------------------------------------------

    def put_silence(self, silence: Silence) -> None:
        doc = json.dumps(silence.to_dict())
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO silences (id, starts_at, ends_at, doc) VALUES (?,?,?,?)",
                            (silence.id, silence.starts_at, silence.ends_at, doc))

    def get_silence(self, silence_id: str) -> Silence | None:
        with self._lock:
            row = self.db.execute("SELECT doc, starts_at, ends_at FROM silences WHERE id=?", (silence_id,)).fetchone()
        return self._silence(row) if row else None

    def silences(self) -> list[Silence]:
        with self._lock:
            rows = self.db.execute("SELECT doc, starts_at, ends_at FROM silences ORDER BY starts_at").fetchall()
        return [self._silence(r) for r in rows]

    @staticmethod
    def _silence(row: Any) -> Silence:
        s = Silence.from_dict(json.loads(row[0]))
        s.starts_at, s.ends_at = int(row[1]), int(row[2])  # full precision (the doc has milliseconds)
        return s

    def delete_silence(self, silence_id: str) -> bool:
        with self._lock:
            return int(self.db.execute("DELETE FROM silences WHERE id=?", (silence_id,)).rowcount) > 0
