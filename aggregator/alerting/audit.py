"""The audit log: an append-only record of every state change made through the API (and reloads).

Kept in the alert store (``alerts.db``, or the cluster's PostgreSQL; table ``audit``): when, who
(the authenticated principal: a JWT's ``sub``, a static token's place such as ``admin_tokens[0]``,
never the token; ``SIGHUP`` for a reload), the role the request was made with, the action
(``alert.acknowledge``, ``alert.feedback``, ``silence.create``, ``silence.expire``,
``silence.delete``, ``config.version``, or ``<METHOD> <route>`` for any other write), its target
(an alert or silence id) and a small JSON detail. Triggers (in either database) refuse ``UPDATE``
and ``DELETE`` on the table, so nothing in the process can rewrite it; each entry is also logged as
one JSON line on the ``sentinel.audit`` logger.
Retention: none (an entry is a few hundred bytes; a busy team writes a few thousand a day).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aggregator.alerting.store import MAX_PAGE, SideTable
from sentinel.alerts import iso_time

__all__ = ["AuditEntry", "AuditLog"]

log = logging.getLogger("sentinel.audit")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: int
    who: str
    role: str
    action: str
    target: str = ""
    detail: dict[str, Any] = field(default_factory=dict)
    id: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "at": iso_time(self.at), "who": self.who, "role": self.role, "action": self.action,
                "target": self.target, "detail": self.detail}


class AuditLog(SideTable):
    """The ``audit`` table of an open alert store (created on first use)."""

    schema = _SCHEMA
    append_only = (("audit", "the audit log is append-only"),)

    def append(self, entry: AuditEntry) -> AuditEntry:
        detail = json.dumps(entry.detail, separators=(",", ":"), sort_keys=True, default=str)
        with self.connection() as db:
            cur = db.execute("INSERT INTO audit (at, who, role, action, target, detail) VALUES (?,?,?,?,?,?) "
                             "RETURNING id", (entry.at, entry.who, entry.role, entry.action, entry.target, detail))
            stored = AuditEntry(entry.at, entry.who, entry.role, entry.action, entry.target, entry.detail,
                                int(cur.fetchone()[0]))
        log.info("%s", json.dumps({"audit": stored.to_dict()}, separators=(",", ":"), default=str))
        return stored

    def query(self, *, start: int | None = None, end: int | None = None, action: str | None = None,
              who: str | None = None, target: str | None = None, limit: int = 100,
              offset: int = 0) -> tuple[list[AuditEntry], int]:
        """Matching entries, newest first, and how many match in all."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit: must be between 1 and {MAX_PAGE}")
        if offset < 0:
            raise ValueError("offset: must not be negative")
        clauses: list[str] = []
        args: list[Any] = []
        for clause, value in (("at >= ?", start), ("at < ?", end), ("action = ?", action), ("who = ?", who),
                              ("target = ?", target)):
            if value is not None and value != "":
                clauses.append(clause)
                args.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        with self.connection() as db:
            total = int(db.execute(f"SELECT COUNT(*) FROM audit{where}", args).fetchone()[0])
            rows = db.execute(f"SELECT id, at, who, role, action, target, detail FROM audit{where} "
                              "ORDER BY id DESC LIMIT ? OFFSET ?", [*args, limit, offset]).fetchall()
        return [AuditEntry(r[1], r[2], r[3], r[4], r[5], json.loads(r[6]), int(r[0])) for r in rows], total
