"""The action hook's actions in PostgreSQL (``store_url``): every replica lists and decides every one.

Table ``security_actions`` beside the alerts (the alert store's pool, created on first use):

- **one pending action per subject** in the whole cluster: a partial unique index on
  ``(subject_type, subject) WHERE status = 'pending'``; :meth:`PgActionStore.add` is ``INSERT … ON
  CONFLICT DO NOTHING``, so two replicas raising the same attack keep one action;
- **a decision is made once**: ``UPDATE … SET status = … WHERE action_id = … AND status = 'pending'``;
  of two operators (at one replica or two) one gets the row, the other ``ValueError`` naming the
  action, its status and who decided (the API's 409). The replica that made the decision sends the
  webhook, so an approved action is sent once; a replica dying between the two leaves it
  ``approved`` (shown, not sent again: at most once, as a decision is);
- **no copy in memory**: every list and get reads the table, so the replica that raised an action
  shows another replica's decision at its next request (no notification needed).

The newest ``max_actions`` are kept (older ones deleted at each insert).
"""

from __future__ import annotations

import json
from typing import Any

from aggregator.alerting.store import SideTable, SideTableHost
from aggregator.analysis.security.action_store import not_pending
from aggregator.analysis.security.actions import Action

__all__ = ["PgActionStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS security_actions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    action_id TEXT NOT NULL UNIQUE,
    subject_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    decided_by TEXT,
    decided_unix_nano INTEGER,
    error TEXT,
    doc TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS security_actions_pending ON security_actions (subject_type, subject)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS security_actions_status ON security_actions (status, seq);
"""
_COLUMNS = "doc, status, decided_by, decided_unix_nano, error"


def _action(row: Any) -> Action:
    """An action from its row: the fixed fields from ``doc``, the ones a decision changes from their columns."""
    doc, status, decided_by, decided_ns, error = row
    return Action(**{**json.loads(doc), "status": status, "decided_by": decided_by,
                     "decided_unix_nano": None if decided_ns is None else int(decided_ns), "error": error})


class PgActionStore(SideTable):
    """The ``security_actions`` table of the cluster's alert store (a PostgreSQL one: shared by the replicas)."""

    schema = _SCHEMA
    shared = True

    def __init__(self, store: SideTableHost, max_actions: int) -> None:
        super().__init__(store)
        self.max_actions = max_actions

    def add(self, a: Action) -> bool:
        doc = json.dumps(a.to_dict(), separators=(",", ":"), default=str)
        with self.connection() as db:
            row = db.execute(
                "INSERT INTO security_actions (action_id, subject_type, subject, status, decided_by, "
                "decided_unix_nano, error, doc) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING seq",
                (a.action_id, a.subject_type, a.subject, a.status, a.decided_by, a.decided_unix_nano, a.error,
                 doc)).fetchone()
            if row is None:
                return False  # the subject's pending action, raised here or at another replica
            db.execute("DELETE FROM security_actions WHERE seq <= (SELECT seq FROM security_actions "
                       "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (self.max_actions,))
        return True

    def list(self, status: str | None) -> list[Action]:
        where, args = ("WHERE status = ?", (status,)) if status is not None else ("", ())
        with self.connection() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM security_actions {where} ORDER BY seq DESC", args).fetchall()
        return [_action(r) for r in rows]

    def get(self, action_id: str) -> Action | None:
        with self.connection() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM security_actions WHERE action_id = ?", (action_id,)).fetchone()
        return None if row is None else _action(row)

    def decide(self, action_id: str, status: str, who: str, at_ns: int) -> Action:
        with self.connection() as db:
            row = db.execute(f"UPDATE security_actions SET status = ?, decided_by = ?, decided_unix_nano = ? "
                             f"WHERE action_id = ? AND status = 'pending' RETURNING {_COLUMNS}",
                             (status, who, at_ns, action_id)).fetchone()
            if row is None:
                row = db.execute(f"SELECT {_COLUMNS} FROM security_actions WHERE action_id = ?",
                                 (action_id,)).fetchone()
                if row is None:
                    raise KeyError(action_id)
                raise not_pending(_action(row))
        return _action(row)

    def finish(self, a: Action) -> None:
        with self.connection() as db:
            db.execute("UPDATE security_actions SET status = ?, error = ? WHERE action_id = ? AND status = 'approved'",
                       (a.status, a.error, a.action_id))

    def restore(self) -> None:
        """Nothing to read: the table is the state."""
