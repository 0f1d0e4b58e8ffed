"""Alerts raised at the edge: how the alert manager reconciles them with its own (pure rules).

A sidecar that paged on its own while the aggregator was away (``sidecar/local_alerts.py``) sends
each such alert in the batch carrying its anomalies (:class:`sentinel.edge_alerts.EdgeAlert`). The
alert manager looks up the group the alert belongs to, exactly as for a detection of its own (same
series fingerprint, same ``group_by`` key), and:

1. **no open alert of that group**: one is raised from the edge alert, with
   ``context.raised_at_edge`` (sidecar, edge alert id, when it was raised, ``paged``, the edge's
   sinks). It is *not* sent to the aggregator's sinks when the edge paged (``paged: true``) or when
   it is late (its detection older than ``late_after_s``: a replay after a long outage does not page
   as current); otherwise — the edge had no sink but its log line — it is notified as any new alert;
2. **an open alert of that group** (the aggregator's own, or another sidecar's): the edge alert is
   folded into it (its series' count grows) and marked on it (``raised_at_edge``, or
   ``raised_at_edge.also`` for a second edge). When that alert has not been sent yet (still in
   ``group_wait``) and the edge paged, its pending notification is cancelled: the incident was paged
   once, at the edge. When it has been sent already both paged — neither knew of the other;
3. **the same edge alert again** (a batch replayed from an old spool copy): nothing changes;
   a record saying every edge sink failed (``delivery: failed``) re-arms the alert's notification
   if it was never sent, so somebody is paged after all;
4. **detections arriving later** (the forwarded anomalies confirmed, the windowed detectors catching
   up on the replayed rows): a detection of the same series folds into the alert as usual; a new
   series joining the group within ``dedup_window_s`` of the reconciliation is marked already
   notified instead of scheduling a notification — the edge's page covered that incident. After
   the window the usual timers apply.
"""

from __future__ import annotations

from typing import Any

from sentinel.alerts import Alert, iso_time
from sentinel.edge_alerts import EdgeAlert

__all__ = ["MAX_ALSO", "OUTCOMES", "edge_paged", "reconcile"]

#: ``sentinel_aggregator_edge_alerts_total{outcome}`` values.
OUTCOMES = ("raised", "merged", "duplicate", "updated")
#: Other edge alerts listed on one alert (``raised_at_edge.also``).
MAX_ALSO = 10


def _ids(mark: dict[str, Any]) -> set[str]:
    return {str(mark.get("alert_id")), *(str(o.get("alert_id")) for o in mark.get("also") or [])}


def edge_paged(alert: Alert, now: int, window_ns: int) -> bool:
    """Whether ``alert`` was paged at the edge and reconciled less than ``window_ns`` ago."""
    mark = alert.context.get("raised_at_edge")
    return (isinstance(mark, dict) and bool(mark.get("paged"))
            and now - int(mark.get("reconciled_unix_nano") or 0) <= window_ns)


def reconcile(alert: Alert, edge: EdgeAlert, *, new: bool, sidecar: str, late: bool, now: int,
              group_wait_ns: int) -> str:
    """Mark ``alert`` with ``edge`` and settle its notification (rules in the module docstring).

    Returns the outcome; the caller folds the series in for ``raised`` and ``merged``.
    """
    mark = alert.context.get("raised_at_edge")
    if isinstance(mark, dict) and edge.alert_id in _ids(mark):
        if edge.delivery == "failed" and mark.get("paged"):
            mark["paged"], mark["delivery"] = False, "failed"
            if alert.notifications == 0 and not late and alert.status != "resolved":
                alert.notify_due = now + group_wait_ns
                for m in alert.members:
                    m.notified = False
            return "updated"
        return "duplicate"
    entry = {"sidecar": sidecar, "alert_id": edge.alert_id, "raised_at": iso_time(edge.raised_unix_nano),
             "raised_unix_nano": edge.raised_unix_nano, "paged": edge.paged, "delivery": edge.delivery,
             "sinks": list(edge.sinks), "late": late, "reconciled_at": iso_time(now), "reconciled_unix_nano": now}
    if isinstance(mark, dict):
        also = mark.setdefault("also", [])
        if len(also) < MAX_ALSO:
            also.append({k: entry[k] for k in ("sidecar", "alert_id", "raised_at", "paged")})
        mark["paged"] = bool(mark.get("paged")) or edge.paged
    else:
        alert.context["raised_at_edge"] = entry
    if (edge.paged or late) and alert.notifications == 0:
        alert.notify_due = None  # paged once, at the edge (or too old to page as current)
        if edge.paged:
            alert.notified_at = now
        for m in alert.members:
            m.notified = True
    return "raised" if new else "merged"
