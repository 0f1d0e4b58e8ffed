"""Versions of the aggregator's live settings (the keys a reload applies), kept in the alert store.

Every change of the live settings — at start when the file differs from the newest version, on
SIGHUP, through ``PUT /api/v1/config`` or a rollback — is a new version: its number, when, who,
a comment, the whole set of live settings after it and the diff from the one before
(``{key: {"from": old, "to": new}}``). Versions are never changed or deleted (triggers refuse it).
Secrets (tokens, the broker URL, webhooks: ``SECRET_KEYS`` of :mod:`aggregator.config`) are kept
and shown only as a digest (:func:`redact`), so a version tells that a token changed, never what to.
In PostgreSQL (a cluster) a new version also sends ``NOTIFY sentinel_config`` with its number, in the
same transaction: every replica follows it (:meth:`aggregator.app.Aggregator.follow_config`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aggregator.alerting.pg_store import CONFIG_CHANNEL
from aggregator.alerting.store import MAX_PAGE, SideTable, SqlConnection
from sentinel.alerts import iso_time

__all__ = ["DIGEST_PREFIX", "ConfigVersion", "ConfigVersions", "diff", "is_digest", "redact"]

#: pg_advisory_xact_lock key of :meth:`ConfigVersions.add_unless_latest` ("sentinel config", as a number).
_ADD_LOCK = 0x5E17C0F
#: How a secret is shown: this prefix and the first 16 hex digits of the SHA-256 of its JSON value.
DIGEST_PREFIX = "sha256:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    version INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    comment TEXT NOT NULL,
    settings TEXT NOT NULL,
    diff TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS config_versions_no_update BEFORE UPDATE ON config_versions
    BEGIN SELECT RAISE(ABORT, 'configuration versions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS config_versions_no_delete BEFORE DELETE ON config_versions
    BEGIN SELECT RAISE(ABORT, 'configuration versions are append-only'); END;
"""


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{key: {"from": old, "to": new}}`` for every key whose value differs."""
    return {k: {"from": old.get(k), "to": new.get(k)} for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def redact(value: Any) -> Any:
    """A digest of a secret's value (an unset one, empty, shows as it is: "no tokens" is no secret).

    >>> redact([]), redact(["t0k3n"])[:7]
    ([], 'sha256:')
    """
    if not value:
        return value
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def is_digest(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(DIGEST_PREFIX)


@dataclass(frozen=True)
class ConfigVersion:
    version: int
    at: int
    who: str
    comment: str
    settings: dict[str, Any] = field(default_factory=dict)
    diff: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, *, with_settings: bool = True) -> dict[str, Any]:
        doc = {"version": self.version, "at": iso_time(self.at), "who": self.who, "comment": self.comment,
               "diff": self.diff}
        return doc | ({"settings": self.settings} if with_settings else {})


class ConfigVersions(SideTable):
    """The ``config_versions`` table of an open alert store (created on first use)."""

    schema = _SCHEMA
    append_only = (("config_versions", "configuration versions are append-only"),)

    def add(self, *, at: int, who: str, comment: str, settings: dict[str, Any],
            changes: dict[str, Any]) -> ConfigVersion:
        with self.connection() as db:
            return self._insert(db, at=at, who=who, comment=comment, settings=settings, changes=changes)

    def _insert(self, db: SqlConnection, *, at: int, who: str, comment: str, settings: dict[str, Any],
                changes: dict[str, Any]) -> ConfigVersion:
        doc, changed = json.dumps(settings, sort_keys=True), json.dumps(changes, sort_keys=True)
        cur = db.execute("INSERT INTO config_versions (at, who, comment, settings, diff) VALUES (?,?,?,?,?) "
                         "RETURNING version", (at, who, comment, doc, changed))
        number = int(cur.fetchone()[0])
        if self.store.dialect == "postgresql":  # delivered on commit, to every replica listening
            db.execute("SELECT pg_notify(?, ?)", (CONFIG_CHANNEL, str(number)))
        return ConfigVersion(number, at, who, comment, json.loads(doc), json.loads(changed))

    def add_unless_latest(self, *, at: int, who: str, comment: str,
                          settings: dict[str, Any]) -> tuple[ConfigVersion | None, ConfigVersion]:
        """``settings`` as a new version unless they are the newest one's: (the newest before, the newest after).

        One transaction, in PostgreSQL under a lock: replicas starting together with the same file add one
        version, not one each.
        """
        settings = json.loads(json.dumps(settings, sort_keys=True))  # as stored and read back
        with self.connection() as db:
            if self.store.dialect == "postgresql":
                db.execute("SELECT pg_advisory_xact_lock(?)", (_ADD_LOCK,))
            row = db.execute("SELECT version, at, who, comment, settings, diff FROM config_versions "
                             "ORDER BY version DESC LIMIT 1").fetchone()
            latest = _version(row) if row else None
            if latest is not None and latest.settings == settings:
                return latest, latest
            return latest, self._insert(db, at=at, who=who, comment=comment, settings=settings,
                                        changes=diff(latest.settings if latest else {}, settings))

    def get(self, version: int) -> ConfigVersion | None:
        with self.connection() as db:
            row = db.execute("SELECT version, at, who, comment, settings, diff FROM config_versions WHERE version=?",
                             (version,)).fetchone()
        return _version(row) if row else None

    def latest(self) -> ConfigVersion | None:
        with self.connection() as db:
            row = db.execute("SELECT version, at, who, comment, settings, diff FROM config_versions "
                             "ORDER BY version DESC LIMIT 1").fetchone()
        return _version(row) if row else None

    def history(self, limit: int = 100) -> list[ConfigVersion]:
        """The newest ``limit`` versions, newest first."""
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit: must be between 1 and {MAX_PAGE}")
        with self.connection() as db:
            rows = db.execute("SELECT version, at, who, comment, settings, diff FROM config_versions "
                              "ORDER BY version DESC LIMIT ?", (limit,)).fetchall()
        return [_version(r) for r in rows]


def _version(row: Any) -> ConfigVersion:
    return ConfigVersion(int(row[0]), int(row[1]), str(row[2]), str(row[3]), json.loads(row[4]), json.loads(row[5]))
