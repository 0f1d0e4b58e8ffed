"""The ingest journal: every accepted batch, durably, in SQLite (``<data_dir>/ingest.sqlite3``).

"Durably accepted" means: the wire body is appended to the ``ingest`` table and its (sidecar, seq)
recorded by :class:`aggregator.ingest.dedup.Dedup`, in one transaction, committed (WAL,
``synchronous=FULL``) before ingest answers 2xx. A crash after the 2xx therefore never loses the
batch, and a crash before it leaves nothing behind, so the sidecar's retry is stored exactly once.

The journal is what later stages (baselines, detectors) consume: rows ordered by ``id`` (commit
order), each holding the msgpack body exactly as the sidecar sent it (read it back with
:func:`sentinel.wire.decode`). Rows older than the retention (default 24 h) are deleted by
:meth:`IngestJournal.prune`, which the aggregator runs on a timer.

Not thread-safe: the aggregator calls it from one dedicated thread, in order.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from aggregator.ingest.dedup import Dedup

__all__ = ["DB_NAME", "IngestJournal", "JournalEntry", "is_full"]

DB_NAME = "ingest.sqlite3"
_SQLITE_FULL = 13


def is_full(e: BaseException) -> bool:
    """Whether ``e`` is SQLite's "database or disk is full" (SQLITE_FULL)."""
    return isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == _SQLITE_FULL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sidecar TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_at INTEGER NOT NULL,       -- arrival, unix ns
    created_unix_nano INTEGER NOT NULL, -- when the sidecar sealed the batch (0: unknown)
    rows INTEGER NOT NULL,
    late_rows INTEGER NOT NULL,
    late INTEGER NOT NULL,              -- 1 when any row is late
    body BLOB NOT NULL                  -- the msgpack wire body as received
);
CREATE INDEX IF NOT EXISTS ingest_received_at ON ingest (received_at);
"""


@dataclass(frozen=True)
class JournalEntry:
    """One batch to store: what the handler decoded and measured, and the body itself."""

    sidecar: str
    seq: int
    received_at: int
    created_unix_nano: int
    rows: int
    late_rows: int
    body: bytes


class IngestJournal:
    """The SQLite journal and de-duplication table; ``open()``, ``append_many()``, ``close()``."""

    def __init__(self, data_dir: str | Path, *, dedup_window: int) -> None:
        self.path = Path(data_dir) / DB_NAME
        self._dedup_window = dedup_window
        self._conn: sqlite3.Connection | None = None
        self._dedup: Dedup | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed batch survives power loss too, not only a process crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._dedup = Dedup(conn, window=self._dedup_window)

    @property
    def dedup(self) -> Dedup:
        if self._dedup is None:
            raise RuntimeError("journal is not open")
        return self._dedup

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("journal is not open")
        return self._conn

    def append_many(self, entries: list[JournalEntry]) -> list[bool]:
        """Store the entries not seen before, in one transaction; per entry True (stored) or False
        (a duplicate of a stored batch).

        Raises ``sqlite3.Error`` (nothing stored) when the commit fails.
        """
        conn, dedup = self._connection(), self.dedup
        outcomes: list[bool] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for e in entries:
                # seen() also sees pairs recorded earlier in this transaction (same connection),
                # so the same batch twice in one group is stored once.
                if dedup.seen(e.sidecar, e.seq):
                    outcomes.append(False)
                    continue
                conn.execute(
                    "INSERT INTO ingest (sidecar, seq, received_at, created_unix_nano, rows, late_rows, late, body)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (e.sidecar, e.seq, e.received_at, e.created_unix_nano, e.rows, e.late_rows,
                     int(e.late_rows > 0), e.body),
                )
                dedup.record(e.sidecar, e.seq, received_at=e.received_at)
                outcomes.append(True)
            conn.execute("COMMIT")
        except BaseException as e:
            # SQLite rolls back by itself on some errors (SQLITE_FULL among them): a ROLLBACK then
            # fails with "no transaction is active" and would hide the real cause.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if is_full(e):
                self._release_wal()
            raise
        return outcomes

    def _release_wal(self) -> None:
        """After "database or disk is full": checkpoint and truncate the WAL, giving its space back.

        On a nearly full volume the WAL alone can hold the room the next commit needs; without this
        the journal stayed full after space was freed elsewhere (issue 15, case 8). Best effort.
        """
        with contextlib.suppress(sqlite3.Error):
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def prune(self, *, older_than: int) -> int:
        """Delete journal rows received before ``older_than`` (unix ns); returns how many."""
        conn = self._connection()
        try:
            cur = conn.execute("DELETE FROM ingest WHERE received_at < ?", (older_than,))
        except sqlite3.Error as e:
            if is_full(e):
                self._release_wal()
            raise
        return cur.rowcount

    def entries(self, *, after_id: int = 0, limit: int = 1000) -> list[tuple[int, str, int, int, int, bytes]]:
        """Journal rows after ``after_id`` in commit order: (id, sidecar, seq, rows, late_rows, body)."""
        conn = self._connection()
        return list(conn.execute(
            "SELECT id, sidecar, seq, rows, late_rows, body FROM ingest WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._dedup = None
