"""Operators' verdicts on alerts (true positive, false positive, unsure) and the precision they measure.

Kept in the alert store (``alerts.db``, or the cluster's PostgreSQL; table ``feedback``), one row
per verdict given: who, when, the alert's anomaly type and raise time (copied, so precision
survives the alert's retention), an optional comment. An alert's verdict is its newest row, so an
operator can change their mind. Precision per anomaly type = true positives / (true positives +
false positives) over the alerts with such a verdict; ``unsure`` counts towards neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aggregator.alerting.store import SideTable
from sentinel.alerts import iso_time

__all__ = ["MAX_COMMENT_CHARS", "VERDICTS", "Feedback", "FeedbackLog", "precision"]

VERDICTS: tuple[str, ...] = ("true_positive", "false_positive", "unsure")
#: A verdict's comment is a short note, not a report.
MAX_COMMENT_CHARS = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    anomaly_type TEXT NOT NULL,
    alert_ts INTEGER NOT NULL,
    verdict TEXT NOT NULL,
    by TEXT NOT NULL,
    at INTEGER NOT NULL,
    comment TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS feedback_alert ON feedback (alert_id, id);
CREATE INDEX IF NOT EXISTS feedback_ts ON feedback (alert_ts);
"""


@dataclass(frozen=True, slots=True)
class Feedback:
    alert_id: str
    anomaly_type: str
    alert_ts: int
    verdict: str
    by: str
    at: int
    comment: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"alert_id": self.alert_id, "anomaly_type": self.anomaly_type, "verdict": self.verdict,
                "by": self.by, "at": iso_time(self.at), "comment": self.comment}


def precision(counts: dict[str, int]) -> float | None:
    """TP / (TP + FP), or ``None`` with neither."""
    tp, fp = counts.get("true_positive", 0), counts.get("false_positive", 0)
    return tp / (tp + fp) if tp + fp else None


class FeedbackLog(SideTable):
    """The ``feedback`` table of an open alert store (created on first use)."""

    schema = _SCHEMA

    def add(self, fb: Feedback) -> None:
        with self.connection() as db:
            db.execute("INSERT INTO feedback (alert_id, anomaly_type, alert_ts, verdict, by, at, comment) "
                       "VALUES (?,?,?,?,?,?,?)",
                       (fb.alert_id, fb.anomaly_type, fb.alert_ts, fb.verdict, fb.by, fb.at, fb.comment))

    def of_alert(self, alert_id: str) -> list[Feedback]:
        """Every verdict given on ``alert_id``, oldest first (the last one counts)."""
        with self.connection() as db:
            rows = db.execute("SELECT alert_id, anomaly_type, alert_ts, verdict, by, at, comment FROM feedback "
                              "WHERE alert_id=? ORDER BY id", (alert_id,)).fetchall()
        return [Feedback(*r) for r in rows]

    def counts_by_type(self, start: int | None = None, end: int | None = None) -> dict[str, dict[str, int]]:
        """Per anomaly type, how many alerts raised in [start, end) have each verdict as their newest one."""
        where, args = [], []
        if start is not None:
            where.append("alert_ts >= ?")
            args.append(start)
        if end is not None:
            where.append("alert_ts < ?")
            args.append(end)
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        with self.connection() as db:
            rows = db.execute(
                "SELECT anomaly_type, verdict, COUNT(*) FROM feedback WHERE id IN "
                f"(SELECT MAX(id) FROM feedback{clause} GROUP BY alert_id) GROUP BY anomaly_type, verdict",
                args).fetchall()
        out: dict[str, dict[str, int]] = {}
        for anomaly_type, verdict, n in rows:
            out.setdefault(str(anomaly_type), dict.fromkeys(VERDICTS, 0))[str(verdict)] = int(n)
        return out

    def precision_by_type(self, start: int | None = None, end: int | None = None) -> dict[str, dict[str, Any]]:
        """``{type: {"true_positive": n, "false_positive": n, "unsure": n, "precision": p | None}}``."""
        return {t: {**c, "precision": precision(c)} for t, c in sorted(self.counts_by_type(start, end).items())}
