"""De-duplication of ingest batches by (``sidecar``, ``seq``), kept in SQLite so it survives a restart.

A sidecar retries a batch until it is acknowledged, and replays its spool after a crash, so the same
(``sidecar``, ``seq``) can arrive more than once. :class:`Dedup` remembers the pairs it has accepted
in a table of the ingest journal's database and is used inside the journal's transaction: the pair
is recorded in the same commit as the batch itself, so "recorded" and "stored" never disagree.

Bounded: per sidecar only the ``window`` highest seqs are kept. Seqs increase per sidecar (they
start from the wall clock at start-up), so a pruned pair belongs to a batch more than ``window``
batches older than that sidecar's newest. Such a batch arriving again is *accepted* (and may be
counted twice): at-least-once is preferred over dropping a batch that might not be a retry.

>>> import sqlite3
>>> d = Dedup(sqlite3.connect(":memory:"), window=2)
>>> d.seen("a", 1)
False
>>> d.record("a", 1, received_at=0)
>>> d.seen("a", 1)
True
"""

from __future__ import annotations

import sqlite3

__all__ = ["Dedup"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dedup (
    sidecar TEXT NOT NULL,
    seq INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (sidecar, seq)
) WITHOUT ROWID
"""


class Dedup:
    """The (sidecar, seq) pairs seen, on ``conn``; the caller owns the transaction and commits it.

    Pruning is amortised: a sidecar's old pairs are deleted once per ``prune_every`` records of it
    (default a tenth of the window), so a sidecar holds at most ``window + prune_every - 1`` pairs.
    """

    def __init__(self, conn: sqlite3.Connection, *, window: int, prune_every: int | None = None) -> None:
        if window <= 0:
            raise ValueError("window must be greater than 0")
        self._conn = conn
        self.window = window
        self.prune_every = prune_every if prune_every is not None else max(1, window // 10)
        self._since_prune: dict[str, int] = {}
        conn.execute(_SCHEMA)

    def seen(self, sidecar: str, seq: int) -> bool:
        row = self._conn.execute("SELECT 1 FROM dedup WHERE sidecar = ? AND seq = ?", (sidecar, seq)).fetchone()
        return row is not None

    def record(self, sidecar: str, seq: int, *, received_at: int) -> None:
        self._conn.execute(
            "INSERT OR IGNORE INTO dedup (sidecar, seq, received_at) VALUES (?, ?, ?)", (sidecar, seq, received_at)
        )
        n = self._since_prune.get(sidecar, 0) + 1
        if n >= self.prune_every:
            self.prune(sidecar)
            n = 0
        self._since_prune[sidecar] = n

    def prune(self, sidecar: str) -> int:
        """Forget all but the ``window`` highest seqs of ``sidecar``; returns how many were forgotten."""
        floor = self._conn.execute(
            "SELECT seq FROM dedup WHERE sidecar = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
            (sidecar, self.window - 1),
        ).fetchone()
        if floor is None:
            return 0
        cur = self._conn.execute("DELETE FROM dedup WHERE sidecar = ? AND seq < ?", (sidecar, floor[0]))
        return cur.rowcount

    def count(self, sidecar: str | None = None) -> int:
        """Pairs remembered (for one sidecar, or all)."""
        if sidecar is None:
            row = self._conn.execute("SELECT COUNT(*) FROM dedup").fetchone()
        else:
            row = self._conn.execute("SELECT COUNT(*) FROM dedup WHERE sidecar = ?", (sidecar,)).fetchone()
        return int(row[0])
