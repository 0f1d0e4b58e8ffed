"""Feedback put to use: a type whose measured precision is too low gets its confidence floor raised.

After each verdict (:class:`aggregator.api.feedback_api.FeedbackApi`), the type's precision is
measured over the newest verdicts on its alerts raised within ``window_s`` and after its last raise
(so the alerts that caused one raise cannot cause the next). With at least ``min_verdicts`` true or
false positives and a precision under ``min_precision``, the type's floor goes up by ``step`` from
its current one (the configured ``alerts.min_confidence_by_type`` or ``alerts.min_confidence``), at most
to ``max_floor``. The raise is stored in ``alerts.db`` (table ``confidence_floors``, so it survives a
restart), logged, written to the audit log, and applied to the alert manager at once; an admin
reverses it with ``DELETE /api/v1/feedback/floors/{anomaly_type}`` (the configured floor applies again).
``min_precision`` 0 (the default) turns this off.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aggregator.alerting.audit import AuditEntry, AuditLog
from aggregator.alerting.feedback import FeedbackLog, precision
from aggregator.alerting.store import SideTable
from sentinel.alerts import iso_time
from sentinel.config import ConfigError, setting

__all__ = ["FloorRaise", "PrecisionGuard", "PrecisionGuardConfig"]

log = logging.getLogger(__name__)

DEFAULT_MIN_VERDICTS = 20
DEFAULT_STEP = 0.05
DEFAULT_MAX_FLOOR = 0.95
DEFAULT_WINDOW_S = 7 * 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS confidence_floors (
    anomaly_type TEXT PRIMARY KEY,
    floor REAL NOT NULL,
    at INTEGER NOT NULL,
    precision REAL NOT NULL,
    verdicts INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class PrecisionGuardConfig:
    """The precision guard's settings: the aggregator's ``feedback:`` section (``feedback.<field>``)."""

    min_precision: float = setting(0.0, "an anomaly type whose precision from operators' feedback falls under this "
                                   "gets its confidence floor raised (logged, audited, reversible); 0: off, "
                                   "precision is only measured")
    min_verdicts: int = setting(DEFAULT_MIN_VERDICTS, "true and false positive verdicts a type needs (since its "
                                "last raise) before its precision counts")
    floor_step: float = setting(DEFAULT_STEP, "how much one raise adds to a type's confidence floor")
    max_floor: float = setting(DEFAULT_MAX_FLOOR, "the highest floor raises reach")
    window_s: float = setting(DEFAULT_WINDOW_S, "verdicts on alerts raised within this long count towards the "
                              "precision")

    def validate(self) -> None:
        if not 0 <= self.min_precision <= 1:
            raise ConfigError("feedback.min_precision: must be between 0 and 1")
        if self.min_verdicts < 1:
            raise ConfigError("feedback.min_verdicts: must be at least 1")
        if not 0 < self.floor_step <= 1:
            raise ConfigError("feedback.floor_step: must be greater than 0 and at most 1")
        if not 0 < self.max_floor <= 1:
            raise ConfigError("feedback.max_floor: must be greater than 0 and at most 1")
        if not self.window_s > 0:
            raise ConfigError("feedback.window_s: must be greater than 0")


@dataclass(frozen=True)
class FloorRaise:
    anomaly_type: str
    floor: float
    at: int
    precision: float
    verdicts: int

    def to_dict(self) -> dict[str, Any]:
        return {"anomaly_type": self.anomaly_type, "floor": self.floor, "at": iso_time(self.at),
                "precision": self.precision, "verdicts": self.verdicts}


class _Floors(SideTable):
    schema = _SCHEMA


class PrecisionGuard:
    """Raises and resets per-type confidence floors; thread-safe (the API calls it in threads).

    ``base_floor(type)`` is the configured floor of a type; ``apply(floors)`` hands the raised floors
    (type -> floor) to the alert manager (the aggregator merges them over its configured ones).
    """

    def __init__(self, config: PrecisionGuardConfig, feedback: FeedbackLog, audit: AuditLog, *,
                 base_floor: Callable[[str], float], apply: Callable[[dict[str, float]], None],
                 clock: Callable[[], int]) -> None:
        config.validate()
        self.config = config
        self.feedback = feedback
        self.audit = audit
        self._table = _Floors(feedback.store)
        self._base_floor = base_floor
        self._apply = apply
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.config.min_precision > 0

    def raises(self) -> dict[str, FloorRaise]:
        with self._table.connection() as db:
            rows = db.execute("SELECT anomaly_type, floor, at, precision, verdicts FROM confidence_floors").fetchall()
        return {r[0]: FloorRaise(str(r[0]), float(r[1]), int(r[2]), float(r[3]), int(r[4])) for r in rows}

    def floors(self) -> dict[str, float]:
        """The raised floors, type -> floor (what the alert manager applies over its configured ones)."""
        return {t: r.floor for t, r in self.raises().items()}

    def observe(self, anomaly_type: str) -> FloorRaise | None:
        """After a verdict on an alert of ``anomaly_type``: raise its floor if its precision is too low."""
        if not self.enabled:
            return None
        with self._lock:
            now = self._clock()
            current = self.raises().get(anomaly_type)
            start = now - int(self.config.window_s * 1e9)
            if current is not None:
                start = max(start, current.at)
            counts = self.feedback.counts_by_type(start, None).get(anomaly_type, {})
            p = precision(counts)
            verdicts = counts.get("true_positive", 0) + counts.get("false_positive", 0)
            if p is None or verdicts < self.config.min_verdicts or p >= self.config.min_precision:
                return None
            floor_now = current.floor if current is not None else self._base_floor(anomaly_type)
            new_floor = round(min(self.config.max_floor, floor_now + self.config.floor_step), 6)
            if new_floor <= floor_now:
                return None  # already at max_floor
            raised = FloorRaise(anomaly_type, new_floor, now, p, verdicts)
            with self._table.connection() as db:
                db.execute("INSERT INTO confidence_floors (anomaly_type, floor, at, precision, verdicts) "
                           "VALUES (?,?,?,?,?) ON CONFLICT (anomaly_type) DO UPDATE SET floor=excluded.floor, "
                           "at=excluded.at, precision=excluded.precision, verdicts=excluded.verdicts",
                           (anomaly_type, new_floor, now, p, verdicts))
            self._apply(self.floors())
        log.warning("precision of %s is %.2f over %d verdicts (under %.2f): its confidence floor is raised from "
                    "%.2f to %.2f (DELETE /api/v1/feedback/floors/%s reverses it)", anomaly_type, p, verdicts,
                    self.config.min_precision, floor_now, new_floor, anomaly_type)
        self.audit.append(AuditEntry(at=now, who="feedback", role="process", action="confidence_floor.raise",
                                     target=anomaly_type, detail={"from": floor_now, "to": new_floor,
                                                                  "precision": p, "verdicts": verdicts}))
        return raised

    def reset(self, anomaly_type: str) -> FloorRaise | None:
        """Undo a type's raise (the configured floor applies again); the raise undone, or ``None``."""
        with self._lock:
            current = self.raises().get(anomaly_type)
            if current is None:
                return None
            with self._table.connection() as db:
                db.execute("DELETE FROM confidence_floors WHERE anomaly_type=?", (anomaly_type,))
            self._apply(self.floors())
        log.warning("the raised confidence floor of %s (%.2f) is reset to the configured %.2f", anomaly_type,
                    current.floor, self._base_floor(anomaly_type))
        return current
