"""The alert manager: detection candidates in, alerts out (stored, streamed, sent to sinks).

Every candidate — the aggregator detectors', the Isolation Forest's and the confirmed local
anomalies — goes through these stages, in order (aggregator/alerting/README.md has the details):

1. **confidence**: below ``min_confidence`` (or the type's ``min_confidence_by_type``) dropped (counted);
2. **persistence**: a detection about a single call (a confirmed local anomaly, a forest outlier)
   needs ``row_persistence`` detections of the same series within ``persistence_window_s`` before it
   becomes an alert; ``persistence`` sets the count per anomaly type instead;
3. **de-duplication and grouping**: a detection whose series fingerprint (type, service, model, metric,
   scope — for the per-row ``multivariate_outlier`` only type, service and model) matches a firing
   member of an unresolved alert seen within ``dedup_window_s`` updates it (``count``, ``last_seen``,
   ``peak_value``, example trace ids); a new series whose ``group_by`` labels (default service and
   anomaly type) match an unresolved alert joins it as a member (:mod:`aggregator.alerting.grouping`),
   and so does a symptom of another alert's incident (``fold_into`` on its service, ``fold_across``
   on its provider), as an ``explained_by`` member; a group that fires again within
   ``group_interval_s`` of resolving reopens its alert; anything else raises a new alert;
4. **enrichment**: severity by the rules of :mod:`sentinel.alert_rules`, root-cause hint,
   remediation, runbook URL from ``runbook_url_template``, a one-line summary;
5. **correlation and grouping**: other unresolved alerts of the same service seen within
   ``correlation_window_s`` are linked both ways in ``related_alerts``, share ``labels.group``
   (the first alert's id), and get one combined root-cause hint;
6. **silences**: a member matching an active silence is kept with ``silenced_by`` and left out of
   notifications; an alert whose members are all silenced is sent to no sink;
7. **notification timers**: a new alert is sent ``group_wait_s`` after it was raised (members that
   join meanwhile are in that one notification); members joining later are sent at most every
   ``group_interval_s``; a firing alert is sent again every ``repeat_interval_s``;
8. **storm rate limit**: beyond ``storm_max_alerts`` notifications within ``storm_window_s``, further
   ones are held back (``storm_id``) and, when the window ends, one ``alert_storm`` summary is sent.

The alert is written to the store before any watcher sees it, and a notification's outbox rows
are written in the same transaction as the alert's new notification state, so a restart during
``group_wait`` neither loses nor repeats it (``notify_due`` is stored). Resolution: a member
resolves once rows of its service have kept arriving for ``resolve_after_s`` past its last
detection without another one (the detectors only fire while the metric is outside its threshold,
so that is the metric back at its baseline); the alert resolves with its last member.

Every window is wall clock, divided by ``time_scale`` (a load test replaying event time 30x faster
sets 30, so de-duplication, persistence, resolution, grouping and the storm window shrink alike); so is
the aggregator's clock that calls :meth:`AlertManager.tick` (once a second: at 30x it sent a due
notification up to 30 s of event time late).
"""

from __future__ import annotations

import collections
import copy
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from aggregator.alerting.edge import edge_paged, reconcile
from aggregator.alerting.grouping import (
    DEFAULT_FOLD_ACROSS,
    DEFAULT_FOLD_INTO,
    DEFAULT_GROUP_ACROSS,
    DEFAULT_GROUP_BY,
    DEFAULT_GROUP_BY_TYPE,
    EXPLAINED_BY,
    explains,
    explains_across,
    group_by_for,
    group_key,
    joins_across,
    member_labels,
    refresh,
    validate_fold_across,
    validate_fold_into,
    validate_group_across,
    validate_group_by,
    validate_group_by_type,
)
from aggregator.alerting.hub import AlertHub
from aggregator.alerting.silences import Silence
from aggregator.alerting.sink import Sink
from aggregator.alerting.store import AlertStore
from aggregator.analysis.detectors.candidate import Candidate
from aggregator.analysis.state import StateFile
from sentinel.alert_rules import CAUSE, REMEDIATION, classify, correlated_cause
from sentinel.alerts import SEVERITIES, SEVERITY_RANK, Alert, AlertDetails, AlertMember, fingerprint
from sentinel.config import ConfigError, setting
from sentinel.edge_alerts import EdgeAlert
from sentinel.wire import WireBatch

__all__ = ["AlertManager", "AlertManagerConfig", "AlertStateError"]

log = logging.getLogger(__name__)

DEFAULT_DEDUP_WINDOW_S = 300.0
DEFAULT_ALERT_MIN_CONFIDENCE = 0.5
DEFAULT_PERSISTENCE: dict[str, int] = {}
#: Detections about one call (a confirmed local anomaly, an Isolation Forest outlier: their window is
#: a single row) need this many of the same series within the persistence window: one slow call in
#: a heavy-tailed distribution is not an incident, a run of them is.
DEFAULT_ROW_PERSISTENCE = 3
_ROW_WINDOW_NS = 1_000_000  # a detection window this short is about one row
# The Isolation Forest flags its contamination share (0.5 %) of clean rows by construction, so only
# its confident outliers may page: 0.8 is a row scored well past the decision threshold.
DEFAULT_MIN_CONFIDENCE_BY_TYPE = {"multivariate_outlier": 0.8}
# Types whose detections are per row rather than per series: one alert per (service, model).
_PER_KEY_TYPES = frozenset({"multivariate_outlier"})
DEFAULT_PERSISTENCE_WINDOW_S = 300.0
DEFAULT_CORRELATION_WINDOW_S = 300.0
DEFAULT_RESOLVE_AFTER_S = 300.0
DEFAULT_STORM_MAX_ALERTS = 20
DEFAULT_STORM_WINDOW_S = 60.0
DEFAULT_RETENTION_S = 365 * 86400.0
# Alertmanager's timers, shorter: detectors here already wait for windows or persistence, so 10 s
# is enough to collect the other models of one provider incident into the first notification.
DEFAULT_GROUP_WAIT_S = 10.0
DEFAULT_GROUP_INTERVAL_S = 60.0
DEFAULT_REPEAT_INTERVAL_S = 4 * 3600.0
DEFAULT_TIME_SCALE = 1.0
# Members listed in one alert: a group by service and type of a per-user detector could otherwise
# grow one entry per user without bound.
DEFAULT_GROUP_MAX_MEMBERS = 100
DEFAULT_METRIC_MAX_SERVICES = 2000
OTHER_SERVICE = "(other)"
DEFAULT_RUNBOOK_URL_TEMPLATE = "{public_url}/static/runbooks.html#{anomaly_type}"
MAX_TRACE_IDS = 5
MAX_STORM_RELATED = 100
#: Resolved alerts kept to explain a later symptom (``fold_into``) whose event-time window overlaps theirs.
MAX_RECENT = 256
_QUIET = "metric back within its threshold"  # the resolved_reason of a group whose series went quiet


class AlertStateError(ValueError):
    """The action does not apply to the alert in its current state (e.g. acknowledging a resolved one)."""


@dataclass
class AlertManagerConfig:
    """The alert manager's settings: the aggregator's ``alerts:`` section (``alerts.<field>``)."""

    dedup_window_s: float = setting(DEFAULT_DEDUP_WINDOW_S, "a detection with the fingerprint of an unresolved "
                                    "alert seen within this window updates it")
    min_confidence: float = setting(DEFAULT_ALERT_MIN_CONFIDENCE, "detections below this confidence raise no alert")
    min_confidence_by_type: dict[str, float] = setting(None, "a higher confidence floor per anomaly type",
                                                       flag=False, factory=lambda: dict(DEFAULT_MIN_CONFIDENCE_BY_TYPE))
    persistence: dict[str, int] = setting(None, "detections of one series needed within persistence_window_s "
                                          "before an alert, per anomaly type", flag=False,
                                          factory=lambda: dict(DEFAULT_PERSISTENCE))
    row_persistence: int = setting(DEFAULT_ROW_PERSISTENCE, "detections of one series needed within "
                                   "persistence_window_s when each is about a single call (confirmed local "
                                   "anomalies, forest outliers)")
    persistence_window_s: float = setting(DEFAULT_PERSISTENCE_WINDOW_S, "window of persistence")
    correlation_window_s: float = setting(DEFAULT_CORRELATION_WINDOW_S, "unresolved alerts of one service seen "
                                          "within this window are linked as related")
    resolve_after_s: float = setting(DEFAULT_RESOLVE_AFTER_S, "an alert resolves after this long (wall clock) "
                                     "without a detection while its service keeps sending")
    storm_max_alerts: int = setting(DEFAULT_STORM_MAX_ALERTS, "alerts sent within storm_window_s before the rest "
                                    "are summarised into one alert_storm alert")
    storm_window_s: float = setting(DEFAULT_STORM_WINDOW_S, "window of the storm rate limit")
    retention_s: float = setting(DEFAULT_RETENTION_S, "how long resolved alerts are kept")
    severity: dict[str, str] = setting(None, "base severity per anomaly type, overriding the rules' table",
                                       flag=False, factory=dict)
    runbook_url_template: str = setting(DEFAULT_RUNBOOK_URL_TEMPLATE, "runbook_url of alerts; placeholders "
                                        "{public_url}, {anomaly_type}, {service}, {model}")
    #: The aggregator's public_url (or its listener's URL): set by the aggregator, not a setting here.
    public_url: str = setting("", "the aggregator's public_url", config=False)
    group_by: list[str] = setting(None, "labels whose values make one alert (one notification) of several series, "
                                  "comma-separated in env: service_name, anomaly_type, model, region, user, "
                                  "provider, detection_method, severity; '...' alone: one alert per series",
                                  factory=lambda: list(DEFAULT_GROUP_BY))
    group_by_type: dict[str, list[str]] = setting(None, "group_by per anomaly type (a series without every label "
                                                  "named uses group_by)", flag=False,
                                                  factory=lambda: {k: list(v)
                                                                   for k, v in DEFAULT_GROUP_BY_TYPE.items()})
    group_across: dict[str, list[str]] = setting(None, "per anomaly type, labels a series may share with a firing "
                                                 "member of an open alert of its type to join it across groups (a "
                                                 "provider's storm on several services: one alert)", flag=False,
                                                 factory=lambda: {k: list(v) for k, v in DEFAULT_GROUP_ACROSS.items()})
    fold_into: dict[str, list[str]] = setting(None, "per secondary anomaly type, the primary types whose open alert "
                                              "on the same service explains it: its series joins that alert as an "
                                              "explained_by member instead of raising its own (a tokens/s drop "
                                              "during a latency spike)", flag=False,
                                              factory=lambda: {k: list(v) for k, v in DEFAULT_FOLD_INTO.items()})
    fold_across: dict[str, list[str]] = setting(None, "per secondary anomaly type, the primary types whose open "
                                                "alert explains it on any service when a firing member shares "
                                                "the primary's group_across labels (a provider outage's latency "
                                                "spikes inside its error burst)", flag=False,
                                                factory=lambda: {k: list(v) for k, v in DEFAULT_FOLD_ACROSS.items()})
    group_wait_s: float = setting(DEFAULT_GROUP_WAIT_S, "a new alert's first notification waits this long to "
                                  "collect the other series of its group")
    group_interval_s: float = setting(DEFAULT_GROUP_INTERVAL_S, "series joining an alert already sent are sent at "
                                      "most this often")
    repeat_interval_s: float = setting(DEFAULT_REPEAT_INTERVAL_S, "a firing alert is sent again after this long")
    time_scale: float = setting(DEFAULT_TIME_SCALE, "every alert window (de-duplication, persistence, correlation, "
                                "resolution, grouping, storm) is divided by this: event time replayed N times "
                                "faster sets N")
    group_max_members: int = setting(DEFAULT_GROUP_MAX_MEMBERS, "series listed in one alert; more firing ones are "
                                     "counted in context.series_left_out")
    #: Distinct ``service`` label values of ``sentinel_aggregator_alerts_total``; later services count as
    #: ``(other)``, so a flood of service names cannot grow the metrics without bound. The aggregator
    #: sets it to baselines.max_keys.
    metric_max_services: int = setting(DEFAULT_METRIC_MAX_SERVICES, "services of the alert metrics "
                                       "(baselines.max_keys)", config=False)

    def validate(self) -> None:
        for key in ("dedup_window_s", "persistence_window_s", "correlation_window_s", "resolve_after_s",
                    "storm_window_s", "retention_s", "group_interval_s", "repeat_interval_s", "time_scale"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"alerts.{key}: must be greater than 0")
        if not self.group_wait_s >= 0:
            raise ConfigError("alerts.group_wait_s: must not be negative")
        if not self.group_wait_s < min(self.dedup_window_s, self.resolve_after_s):
            # An alert that resolves before its group_wait is over would never be sent.
            raise ConfigError("alerts.group_wait_s: must be shorter than alerts.dedup_window_s and "
                              "alerts.resolve_after_s")
        validate_group_by(self.group_by)
        validate_group_by_type(self.group_by_type)
        validate_group_across(self.group_across)
        validate_fold_into(self.fold_into)
        validate_fold_across(self.fold_across)
        if self.metric_max_services < 1:
            raise ConfigError("baselines.max_keys: must be greater than 0")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError("alerts.min_confidence: must be between 0 and 1")
        if not isinstance(self.min_confidence_by_type, dict):
            raise ConfigError("alerts.min_confidence_by_type: must be a map of anomaly type to a confidence")
        for k, x in self.min_confidence_by_type.items():
            if not isinstance(x, int | float) or not 0 <= x <= 1:
                raise ConfigError(f"alerts.min_confidence_by_type.{k}: must be a number between 0 and 1")
        if self.row_persistence < 1:
            raise ConfigError("alerts.row_persistence: must be at least 1")
        if self.group_max_members < 1:
            raise ConfigError("alerts.group_max_members: must be at least 1")
        if self.storm_max_alerts < 1:
            raise ConfigError("alerts.storm_max_alerts: must be at least 1")
        if not isinstance(self.persistence, dict):
            raise ConfigError("alerts.persistence: must be a map of anomaly type to a count")
        for k, n in self.persistence.items():
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"alerts.persistence.{k}: must be an integer >= 1")
        if not isinstance(self.severity, dict):
            raise ConfigError("alerts.severity: must be a map of anomaly type to a severity")
        for k, sev in self.severity.items():
            if sev not in SEVERITIES:
                raise ConfigError(f"alerts.severity.{k}: {sev!r} is not one of {', '.join(SEVERITIES)}")
        try:
            self.runbook_url_template.format(public_url="", anomaly_type="x", service="s", model="m")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"alerts.runbook_url_template: {e!r}: placeholders are {{public_url}}, "
                              "{anomaly_type}, {service} and {model}") from None

    def window_ns(self, key: str) -> int:
        """A window setting (``dedup_window_s``, ...) in wall nanoseconds, divided by ``time_scale``."""
        return int(float(getattr(self, key)) / self.time_scale * 1e9)


@dataclass
class _Storm:
    id: str
    started: int  # wall ns
    alerts: list[Alert] = field(default_factory=list)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None, max_services: int = DEFAULT_METRIC_MAX_SERVICES) -> None:
        self.raised = Counter("sentinel_aggregator_alerts", "Alerts raised", ["severity", "anomaly_type", "service"],
                              registry=registry)
        self._services: set[str] = set()
        self._max_services = max_services
        self.deduplicated = Counter("sentinel_aggregator_alerts_deduplicated",
                                    "Detections folded into an open alert with the same fingerprint", registry=registry)
        self.suppressed = Counter("sentinel_aggregator_alerts_suppressed",
                                  "Detections or notifications not sent, by reason (low_confidence, persistence, "
                                  "silenced, storm, group_full)", ["reason"], registry=registry)
        self.grouped = Counter("sentinel_aggregator_alerts_grouped",
                               "New series that joined an open alert of their group instead of raising one",
                               registry=registry)
        self.notifications = Counter("sentinel_aggregator_alert_notifications",
                                     "Notifications written to the sinks' outbox (one per alert group and "
                                     "timer: group_wait, group_interval, repeat_interval)", registry=registry)
        self.resolved = Counter("sentinel_aggregator_alerts_resolved", "Alerts resolved", registry=registry)
        self.open = Gauge("sentinel_aggregator_alerts_open", "Unresolved alerts", registry=registry)

    def count_raised(self, alert: Alert) -> None:
        service = alert.service_name or ""
        if service not in self._services:
            if len(self._services) >= self._max_services:
                service = OTHER_SERVICE
            else:
                self._services.add(service)
        self.raised.labels(alert.severity, alert.anomaly_type, service).inc()


class AlertManager:
    """Candidates to alerts. ``emit`` is thread-safe (the analysis thread calls it); so are the actions.

    It is also a :class:`aggregator.analysis.pipeline.Consumer`, the last: the rows it sees tell
    which services are sending, which is what resolves alerts. Its state is the alert store.
    """

    state_file: StateFile | None = None  # everything is in the alert store, written as it happens

    def __init__(self, config: AlertManagerConfig, store: AlertStore, hub: AlertHub, *,
                 sinks: Sequence[Sink] = (), registry: CollectorRegistry | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        config.validate()
        self.config = config
        self.store = store
        self.hub = hub
        self.sinks = list(sinks)
        self._clock = clock
        self._lock = threading.RLock()
        self._open: dict[str, Alert] = {}  # group fingerprint -> unresolved alert
        self._service_arrival: dict[str | None, int] = {}  # service -> when its rows last arrived
        self._pending: dict[str, collections.deque[int]] = {}  # fingerprint -> wall times (persistence)
        self._sent: collections.deque[int] = collections.deque()  # wall times of alerts sent (storm limit)
        self._storm: _Storm | None = None
        self._silences: list[Silence] = []
        self._recent: collections.deque[Alert] = collections.deque(maxlen=MAX_RECENT)  # resolved, newest last
        self.metrics = _Metrics(registry, config.metric_max_services)

    # --- lifecycle ----------------------------------------------------------------------------

    def restore(self, state: object = None) -> None:
        """Open the store and rebuild the unresolved alerts and silences (at start, before traffic)."""
        self.store.open()
        with self._lock:
            for alert in self.store.unresolved():
                if not alert.members and alert.anomaly_type != "alert_storm":
                    alert.members = [_legacy_member(alert)]  # stored before grouping: already sent
                self._open[alert.fingerprint] = alert
            self._silences = self.store.silences()
            self.metrics.open.set(len(self._open))

    def snapshot(self) -> None:
        """Nothing to keep: everything is written as it happens; retention runs here (with the periodic save)."""
        self.store.prune(self._clock() - int(self.config.retention_s * 1e9))

    def shutdown(self) -> None:
        """Nothing to stop (the sinks and the store are the process's)."""

    # --- input --------------------------------------------------------------------------------

    def emit(self, candidates: Iterable[Candidate]) -> None:
        """Turn a batch of candidates into new or updated alerts; send the notifications that are due."""
        now = self._clock()
        raised: list[Alert] = []
        updated: dict[str, Alert] = {}
        with self._lock:
            self._expire(now)
            for c in candidates:
                self._one(c, now, raised, updated)
            sent = self._flush(now, updated)
            self.store.update(updated.values())  # raised ones too: members may have joined after the insert
            self.metrics.open.set(len(self._open))
        self._publish(raised, updated)
        self._wake_sinks(sent)

    def _publish(self, raised: list[Alert], updated: dict[str, Alert]) -> None:
        """Stream what changed: raised alerts as ``alert``, the others as ``update``."""
        for a in raised:
            self.hub.publish("alert", a.to_dict())
            updated.pop(a.alert_id, None)
        for a in updated.values():
            self.hub.publish("update", a.to_dict())

    def _one(self, c: Candidate, now: int, raised: list[Alert], updated: dict[str, Alert]) -> None:
        cfg = self.config
        if c.confidence < max(cfg.min_confidence, cfg.min_confidence_by_type.get(c.anomaly_type, 0.0)):
            self.metrics.suppressed.labels("low_confidence").inc()
            return
        fp, severity, labels, gk = self._series(c)
        group = self._open.get(gk)
        dedup = cfg.window_ns("dedup_window_s")
        across = cfg.group_across.get(c.anomaly_type)
        if (group is None or now - group.last_seen > dedup) and across:
            # e.g. a provider's storm on another service: it joins the alert already open for it
            group = next((a for a in self._open.values() if a.anomaly_type == c.anomaly_type and a is not group
                          and now - a.last_seen <= dedup and joins_across(across, labels, a)), group)
        explained_by = None
        primaries = (*cfg.fold_into.get(c.anomaly_type, ()), *cfg.fold_across.get(c.anomaly_type, ()))
        if (group is None or now - group.last_seen > dedup) and primaries:
            # a symptom of an open incident on its service (tokens/s down while latency is up) or of its
            # provider (latency up during its error burst): context of that alert, not a page of its own
            primary = self._explaining(c, labels, group, now)
            if primary is not None:
                group, explained_by = primary, primary.anomaly_type
        elif group is not None and primaries and group.anomaly_type in primaries:
            explained_by = group.anomaly_type  # its own group's alert was taken over by its cause (_adopter)
        member = group.member(fp) if group is not None else None
        if group is not None and member is not None and member.status == "firing" and now - member.last_seen <= dedup:
            self._fold(group, member, c, now)
            updated[group.alert_id] = group
            self.metrics.deduplicated.inc()
            return
        if group is not None and now - group.last_seen > dedup and explained_by is None:  # a new incident
            self._resolve(group, now, "no detection within the de-duplication window")
            updated[group.alert_id] = group
            if self.store.shared:  # resolved there before the new incident's alert takes its fingerprint
                self.store.update([group])
            group = None
        # A sidecar's error rate is over its own window although the candidate carries the call's time.
        # A confirmed local level shift is one report of a run of values (context.sustained).
        single_row = (c.window_end - c.window_start <= _ROW_WINDOW_NS and c.metric != "error_rate"
                      and not c.context.get("sustained"))
        needed = cfg.persistence.get(c.anomaly_type, cfg.row_persistence if single_row else 1)
        if needed > 1:
            seen = self._pending.setdefault(fp, collections.deque())
            seen.append(now)
            while seen and now - seen[0] > cfg.window_ns("persistence_window_s"):
                seen.popleft()
            if len(seen) < needed:
                self.metrics.suppressed.labels("persistence").inc()
                return
            del self._pending[fp]
        if group is None:
            group = self._reopened(gk, now) or self._adopter(c, labels, gk, now)
        new = self._member(c, fp, severity, labels, now, needed)
        if explained_by is not None:
            new.labels[EXPLAINED_BY] = explained_by
            if group is not None and group.status == "resolved":  # explains what was: context, resolved too
                new.status, new.resolved_at = "resolved", now
        if new.silenced_by:
            self.metrics.suppressed.labels("silenced").inc()
        if group is not None:  # a new series of an open group (or one that fired again): a member
            members = [m for m in group.members if m.key != fp]
            while len(members) >= cfg.group_max_members and any(m.status == "resolved" for m in members):
                members.remove(next(m for m in members if m.status == "resolved"))  # the oldest resolved
            if len(members) >= cfg.group_max_members:  # full of firing members: counted, not listed
                group.context["series_left_out"] = int(group.context.get("series_left_out") or 0) + 1
                group.last_seen = max(group.last_seen, now)
                updated[group.alert_id] = group
                self.metrics.suppressed.labels("group_full").inc()
                return
            group.members = [*members, new]
            self._add_trace_ids(group, new.trace_ids)
            if explained_by is None:  # the incident's event-time window is its own series' (a symptom's may be wider)
                self._widen(group, c)
            refresh(group)
            if edge_paged(group, now, dedup):
                new.notified = True  # the edge's page covered this incident (aggregator/alerting/edge_alerts.py)
            elif group.status != "resolved" and (explained_by is None or group.notified_at is None):
                self._schedule(group)  # a folded symptom rides along with the next notification: no page of its own
            if explained_by is None and group.status != "resolved":
                self._absorb(group, now, raised, updated)  # e.g. the burst reached another service: its latency spike
            self._combined_cause(group)
            updated[group.alert_id] = group
            self.metrics.grouped.inc()
            return
        alert = self._new_alert(c, gk, new, now)
        self._absorb(alert, now, raised, updated)
        self._correlate(alert, now, updated)
        stored = self.store.insert(alert, ())  # its notification follows group_wait later (_flush)
        if stored is not None:  # another replica raised it first (a shared store): the detection joins that one
            self._uncorrelate(alert, updated.values())
            self._open[gk] = stored
            self._join(stored, new, c, now, updated)
            return
        self._open[gk] = alert
        raised.append(alert)
        self.metrics.count_raised(alert)

    def _join(self, alert: Alert, new: AlertMember, c: Candidate, now: int, updated: dict[str, Alert]) -> None:
        """A detection of an alert another replica raised: folded into its firing member, or a member."""
        member = alert.member(new.key)
        if member is not None and member.status == "firing":
            self._fold(alert, member, c, now)
        else:
            alert.members = [*(m for m in alert.members if m.key != new.key), new]
            self._add_trace_ids(alert, new.trace_ids)
            refresh(alert)
            self._schedule(alert)
        updated[alert.alert_id] = alert
        self.metrics.deduplicated.inc()

    @staticmethod
    def _uncorrelate(alert: Alert, others: Iterable[Alert]) -> None:
        """Undo the links :meth:`_correlate` made to an alert that is not stored, or folded into another."""
        for other in others:
            if alert.alert_id in other.related_alerts:
                other.related_alerts.remove(alert.alert_id)

    def _runbook(self, anomaly_type: str, service: str | None, model: str | None) -> str | None:
        cfg = self.config
        return cfg.runbook_url_template.format(public_url=cfg.public_url, anomaly_type=anomaly_type,
                                               service=service or "", model=model or "") or None

    def _explaining(self, c: Candidate, labels: dict[str, str], own: Alert | None, now: int) -> Alert | None:
        """The alert that explains ``c``: of one of its ``fold_into`` primaries on ``c``'s service, an open one
        seen within the de-duplication window, else one (open or recently resolved) whose event-time window
        overlaps ``c``'s (a 15-minute drift window that saw a truncation surge alerted and resolved inside
        it); else an open one of its ``fold_across`` primaries whose firing member shares the primary's
        ``group_across`` labels (its provider's error burst)."""
        cfg = self.config
        dedup = cfg.window_ns("dedup_window_s")
        primaries = cfg.fold_into.get(c.anomaly_type, ())
        fits = [a for a in [*self._open.values(), *reversed(self._recent)]
                if a is not own and a.anomaly_type in primaries and explains(a, c.service)]
        # An alert keeps firing resolve_after_s past its last detection: in event time too (unscaled),
        # so a truncation surge detected once in its first minute still covers the drift of the next ones.
        firing_after = int(cfg.resolve_after_s * 1e9)
        same_service = next((a for a in fits if a.status != "resolved" and now - a.last_seen <= dedup),
                            next((a for a in fits if _overlaps(a, c, firing_after)), None))
        if same_service is not None:
            return same_service
        across = cfg.fold_across.get(c.anomaly_type, ())
        return next((a for a in self._open.values() if a is not own and a.anomaly_type in across
                     and a.status != "resolved" and now - a.last_seen <= dedup
                     and explains_across(a, cfg.group_across.get(a.anomaly_type, ()), labels)), None)

    def _explains_all(self, alert: Alert, other: Alert) -> bool:
        """Whether ``alert`` explains every firing series of ``other``: on their service (``fold_into``), or
        sharing its ``group_across`` labels (``fold_across``)."""
        cfg = self.config
        live = [m for m in other.members if m.status == "firing"]
        if not live or alert is other:
            return False
        if alert.anomaly_type in cfg.fold_into.get(other.anomaly_type, ()) and all(
                explains(alert, m.labels.get("service_name")) for m in other.members):
            return True
        names = cfg.group_across.get(alert.anomaly_type, ())
        return alert.anomaly_type in cfg.fold_across.get(other.anomaly_type, ()) and all(
            explains_across(alert, names, m.labels) for m in live)

    def _reopened(self, gk: str, now: int) -> Alert | None:
        """The group's alert resolved less than ``group_interval_s`` ago, firing again: as in Alertmanager, a
        group lives until its next flush after its last series resolved, so a series firing meanwhile (a
        slow drift whose first series went quiet just before the next one crossed) is the same alert, its
        next notification, not a new page. With a shared store another replica may have raised the group
        anew meanwhile: not there."""
        window = self.config.window_ns("group_interval_s")
        alert = next((a for a in reversed(self._recent) if a.fingerprint == gk), None)
        if (alert is None or self.store.shared or alert.resolved_at is None or now - alert.resolved_at > window
                or not (alert.resolved_reason or "").startswith(_QUIET)):  # not one resolved as a new incident began
            return None
        self._recent.remove(alert)
        alert.status = "acknowledged" if alert.acknowledged_by else "open"
        alert.resolved_at, alert.resolved_reason = None, None
        self._open[gk] = alert
        return alert

    def _adopter(self, c: Candidate, labels: dict[str, str], gk: str, now: int) -> Alert | None:
        """An open alert already sent whose every series ``c``'s type explains (``fold_into`` on ``c``'s
        service, ``fold_across`` by ``c``'s ``group_across`` labels), e.g. a tokens/s drop sent before the
        empty answers that cause it were counted, or a latency spike sent just before its provider's error
        burst: it becomes ``c``'s alert (its series ``explained_by`` ``c``'s type, keyed on ``c``'s group),
        so the incident stays one alert, its next notification under the right type."""
        cfg = self.config
        names = cfg.group_across.get(c.anomaly_type, ())

        def explained(a: Alert) -> bool:
            if c.anomaly_type in cfg.fold_into.get(a.anomaly_type, ()) and all(
                    m.labels.get("service_name") == c.service for m in a.members):
                return True
            live = [m for m in a.members if m.status == "firing"]
            return bool(names and live) and c.anomaly_type in cfg.fold_across.get(a.anomaly_type, ()) and all(
                labels.get(k) and m.labels.get(k) == labels[k] for m in live for k in names)

        target = next((a for a in self._open.values()
                       if a.notified_at is not None and a.storm_id is None and a.anomaly_type != c.anomaly_type
                       and now - a.last_seen <= cfg.window_ns("dedup_window_s") and explained(a)), None)
        if target is None:
            return None
        for m in target.members:
            m.labels.setdefault(EXPLAINED_BY, c.anomaly_type)
        del self._open[target.fingerprint]
        target.fingerprint = gk
        self._open[gk] = target
        target.root_cause = CAUSE.get(c.anomaly_type)
        target.remediation = list(REMEDIATION.get(c.anomaly_type, []))
        target.runbook_url = self._runbook(c.anomaly_type, c.service, c.model)
        return target

    def _absorb(self, alert: Alert, now: int, raised: list[Alert], updated: dict[str, Alert]) -> None:
        """A new alert (or one a new series joined) folds in the open, not yet sent alerts it explains
        (``fold_into`` on its services, ``fold_across`` by its ``group_across`` labels): their series
        become its members, and they resolve without ever being sent."""
        cfg = self.config
        for other in list(self._open.values()):
            if other.notified_at is not None or other.storm_id is not None or not self._explains_all(alert, other):
                continue
            room = cfg.group_max_members - len(alert.members)
            # copies: resolving the folded alert below must not resolve its series in this one
            moved = [copy.deepcopy(m) for m in other.members if m.status == "firing"][:max(0, room)]
            for m in moved:
                m.labels[EXPLAINED_BY] = alert.anomaly_type
            alert.members = [*alert.members, *moved]
            self._add_trace_ids(alert, [t for m in moved for t in m.trace_ids])
            refresh(alert)
            self._combined_cause(alert)
            self._resolve(other, now, f"folded into alert {alert.alert_id} ({alert.anomaly_type}), which explains it")
            self._uncorrelate(other, self._open.values())
            if other in raised:  # raised in this same batch: announced as an update (resolved), not an alert
                raised.remove(other)
            updated[other.alert_id] = other

    @staticmethod
    def _combined_cause(alert: Alert) -> None:
        """An alert with folded symptoms gets the one root-cause hint of its types together, if a rule has it."""
        cause = correlated_cause({m.labels.get("anomaly_type", "") for m in alert.members} - {""})
        if cause:
            alert.root_cause = cause

    def _series(self, c: Candidate) -> tuple[str, str, dict[str, str], str]:
        """The candidate's series fingerprint, severity, labels and group key."""
        cfg = self.config
        if c.anomaly_type in _PER_KEY_TYPES:
            fp = fingerprint(c.anomaly_type, c.service, c.model, "", {})
        else:
            fp = fingerprint(c.anomaly_type, c.service, c.model, c.metric, c.context)
        severity = classify(c.anomaly_type, value=c.value, baseline=c.baseline, deviation_sigma=c.deviation_sigma,
                            confidence=c.confidence, overrides=cfg.severity)
        labels = _labels(c, severity)
        return fp, severity, labels, group_key(group_by_for(cfg.group_by, cfg.group_by_type, labels), labels, fp)

    def _member(self, c: Candidate, fp: str, severity: str, labels: dict[str, str], now: int,
                count: int) -> AlertMember:
        """A new firing series of an alert, from its first detection."""
        member = AlertMember(key=fp, labels=member_labels(labels, c.context, c.metric), severity=severity,
                             confidence=float(c.confidence),
                             details=AlertDetails(c.metric, c.value, c.baseline, c.threshold, c.deviation_sigma),
                             count=count, first_seen=now, last_seen=now, peak_value=_finite(c.value),
                             silenced_by=self._silenced(labels, now),
                             trace_ids=list(c.context.get("trace_ids") or [])[:MAX_TRACE_IDS])
        return member

    def _new_alert(self, c: Candidate, gk: str, member: AlertMember, now: int) -> Alert:
        cfg = self.config
        context = dict(c.context)
        context["window_start"] = int(c.window_start)
        context["window_end"] = int(c.window_end)
        context["trace_ids"] = list(member.trace_ids)
        alert = Alert(
            alert_id=str(uuid.uuid4()), timestamp=now, severity=member.severity, anomaly_type=c.anomaly_type,
            service_name=c.service, model=c.model, detection_method=c.detection_method,
            confidence=float(c.confidence), details=member.details, context=context,
            root_cause=CAUSE.get(c.anomaly_type), remediation=list(REMEDIATION.get(c.anomaly_type, [])),
            runbook_url=self._runbook(c.anomaly_type, c.service, c.model),
            fingerprint=gk, first_seen=now, last_seen=now, members=[member],
            notify_due=now + cfg.window_ns("group_wait_s"),
        )
        refresh(alert)
        return alert

    def _fold(self, alert: Alert, member: AlertMember, c: Candidate, now: int) -> None:
        """A repeat detection of a firing member: count, last seen, peak, a few more example traces."""
        member.count += 1
        member.last_seen = now
        member.confidence = max(member.confidence, float(c.confidence))
        value = _finite(c.value)
        if value is not None:
            member.details.value = value
            if member.peak_value is None or _worse(alert.anomaly_type, value, member.peak_value):
                member.peak_value = value
        for t in c.context.get("trace_ids") or []:
            if len(member.trace_ids) < MAX_TRACE_IDS and t not in member.trace_ids:
                member.trace_ids.append(t)
        self._add_trace_ids(alert, c.context.get("trace_ids") or [])
        if EXPLAINED_BY not in member.labels:
            self._widen(alert, c)
        refresh(alert)

    @staticmethod
    def _widen(alert: Alert, c: Candidate) -> None:
        """The alert's event-time window spans its detections' (what a later symptom's window must overlap)."""
        start = alert.context.get("window_start")
        alert.context["window_start"] = min(int(start), int(c.window_start)) if isinstance(start, int) else int(
            c.window_start)
        alert.context["window_end"] = max(int(alert.context.get("window_end") or 0), int(c.window_end))

    @staticmethod
    def _add_trace_ids(alert: Alert, trace_ids: Iterable[str]) -> None:
        ids = alert.context.setdefault("trace_ids", [])
        for t in trace_ids:
            if len(ids) >= MAX_TRACE_IDS:
                break
            if t not in ids:
                ids.append(t)

    def _correlate(self, alert: Alert, now: int, updated: dict[str, Alert]) -> None:
        # an alert across services (a provider's burst) relates to the alerts of each service it is on
        services = {alert.service_name} if alert.service_name else {
            m.labels.get("service_name") for m in alert.members} - {None, ""}
        if not services:
            return
        window = self.config.window_ns("correlation_window_s")
        related = [a for a in self._open.values() if now - a.last_seen <= window and (
            a.service_name in services if a.service_name else any(
                m.labels.get("service_name") in services for m in a.members))]
        if not related:
            alert.labels["group"] = alert.alert_id
            return
        related.sort(key=lambda a: a.first_seen)
        group = related[0].labels.get("group") or related[0].alert_id
        alert.labels["group"] = group
        cause = correlated_cause({alert.anomaly_type, *(a.anomaly_type for a in related)})
        if cause:
            alert.root_cause = cause
        for other in related:
            alert.related_alerts.append(other.alert_id)
            if alert.alert_id not in other.related_alerts:
                other.related_alerts.append(alert.alert_id)
            if cause:
                other.root_cause = cause
            updated[other.alert_id] = other

    def _silenced(self, labels: dict[str, str], now: int) -> str | None:
        return next((s.id for s in self._silences if s.active(now) and s.matches(labels)), None)

    def reconcile_edge(self, c: Candidate, edge: EdgeAlert, *, sidecar: str, late: bool) -> str:
        """Take an alert a sidecar raised (and maybe paged) itself; returns the outcome (``raised``,
        ``merged``, ``duplicate``, ``updated``). Rules: :mod:`aggregator.alerting.edge`."""
        now = self._clock()
        raised: list[Alert] = []
        updated: dict[str, Alert] = {}
        with self._lock:
            fp, severity, labels, gk = self._series(c)
            group = self._open.get(gk)
            if group is None:
                fresh = self._new_alert(c, gk, self._member(c, fp, severity, labels, now, edge.count), now)
                self._correlate(fresh, now, updated)
                outcome = reconcile(fresh, edge, new=True, sidecar=sidecar, late=late, now=now,
                                    group_wait_ns=self.config.window_ns("group_wait_s"))
                group = self.store.insert(fresh, ())
                if group is None:
                    self._open[gk] = fresh
                    raised.append(fresh)
                    self.metrics.count_raised(fresh)
                else:  # raised by another replica meanwhile (a shared store): the edge's alert is taken by that one
                    self._uncorrelate(fresh, updated.values())
                    self._open[gk] = group
            if group is not None:
                existing = group.member(fp)
                outcome = reconcile(group, edge, new=False, sidecar=sidecar, late=late, now=now,
                                    group_wait_ns=self.config.window_ns("group_wait_s"))
                if outcome == "merged":
                    if existing is not None and existing.status == "firing":
                        self._fold(group, existing, c, now)
                    else:
                        group.members = [m for m in group.members if m.key != fp]
                        member = self._member(c, fp, severity, labels, now, edge.count)
                        member.notified = edge.paged
                        group.members.append(member)
                        refresh(group)
                if outcome != "duplicate":
                    updated[group.alert_id] = group
            self.store.update(updated.values())
            self.metrics.open.set(len(self._open))
        self._publish(raised, updated)
        return outcome

    # --- notifications ----------------------------------------------------------------------------

    def _schedule(self, alert: Alert) -> None:
        """A member joined: notify at the end of group_wait (never sent yet) or group_interval after the last."""
        cfg = self.config
        if alert.notified_at is None:
            due = alert.timestamp + cfg.window_ns("group_wait_s")
        else:
            due = alert.notified_at + cfg.window_ns("group_interval_s")
        alert.notify_due = due if alert.notify_due is None else min(alert.notify_due, due)

    def _flush(self, now: int, updated: dict[str, Alert]) -> bool:
        """Send every notification that is due; whether any was written to an outbox."""
        sent = False
        for alert in list(self._open.values()):
            if alert.notify_due is not None and alert.notify_due <= now and alert.anomaly_type != "alert_storm":
                sent = self._notify(alert, now) or sent
                updated[alert.alert_id] = alert
        return sent

    def _notify(self, alert: Alert, now: int) -> bool:
        """One notification of the group: its outbox rows and its new state in one store transaction."""
        fresh = [m for m in alert.members if m.status == "firing" and m.silenced_by is None]
        if not fresh:  # all silenced (or resolved): nothing to send until a member joins
            alert.notify_due = None
            return False
        for m in fresh:
            m.notified = True
        alert.notify_due = now + self.config.window_ns("repeat_interval_s")
        if self._storm_holds(alert, now):
            return False
        alert.storm_id = None
        alert.notifications += 1
        alert.notified_at = now
        # The first notification's outbox key is the alert id (what consumers de-duplicate on); later
        # ones (new members, repeats) are new messages: <alert_id>#<n>.
        key = alert.alert_id if alert.notifications == 1 else f"{alert.alert_id}#{alert.notifications}"
        self.store.notify(alert, self._sink_names(alert), key)
        self.metrics.notifications.inc()
        return alert.notify

    def _storm_holds(self, alert: Alert, now: int) -> bool:
        """The storm limit over notifications: whether this one is held back for the storm's summary."""
        window = self.config.window_ns("storm_window_s")
        while self._sent and now - self._sent[0] > window:
            self._sent.popleft()
        everyone = self.store.notifications_since(now - window) if self.store.shared else None  # all replicas'
        sent = len(self._sent) if everyone is None else everyone
        if self._storm is None and sent < self.config.storm_max_alerts:
            self._sent.append(now)
            return False
        if self._storm is None:
            self._storm = _Storm(id=str(uuid.uuid4()), started=now)
            log.warning("alert storm: more than %d notifications in %.0f s; summarising until the window ends",
                        self.config.storm_max_alerts, self.config.storm_window_s / self.config.time_scale)
        alert.storm_id = self._storm.id
        if alert not in self._storm.alerts:
            self._storm.alerts.append(alert)
        self.metrics.suppressed.labels("storm").inc()
        return True

    def _sink_names(self, alert: Alert) -> list[str]:
        return [s.name for s in self.sinks if alert.notify and s.wants(alert)]

    def _wake_sinks(self, sent: bool) -> None:
        if sent:
            for s in self.sinks:
                s.wake()

    # --- time passing ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Send the notifications that are due, close an alert storm whose window ended (about once a second)."""
        now = self._clock()
        summary: Alert | None = None
        updated: dict[str, Alert] = {}
        with self._lock:
            sent = self._flush(now, updated)
            self.store.update(updated.values())
            storm = self._storm
            if storm is not None and now - storm.started >= self.config.window_ns("storm_window_s"):
                self._storm = None
                summary = self._storm_summary(storm, now)
                self.store.insert(summary, self._sink_names(summary))
                self._open[summary.fingerprint] = summary
                self.metrics.count_raised(summary)
                self.metrics.notifications.inc()
                self.metrics.open.set(len(self._open))
        for a in updated.values():
            self.hub.publish("update", a.to_dict())
        if summary is not None:
            self.hub.publish("alert", summary.to_dict())
        self._wake_sinks(sent or (summary is not None and summary.notify))
        self._resolve_quiet(now)

    def _storm_summary(self, storm: _Storm, now: int) -> Alert:
        by_type = collections.Counter(a.anomaly_type for a in storm.alerts)
        by_service = collections.Counter(a.service_name or "" for a in storm.alerts)
        severity = min((a.severity for a in storm.alerts), key=SEVERITY_RANK.__getitem__)
        n = len(storm.alerts)
        top = ", ".join(f"{t} x{k}" for t, k in by_type.most_common(3))
        window_s = self.config.storm_window_s / self.config.time_scale
        alert = Alert(
            alert_id=storm.id, timestamp=now, severity=severity, anomaly_type="alert_storm", service_name=None,
            model=None, detection_method="rate_limit", confidence=1.0,
            details=AlertDetails("alerts", float(n), None, float(self.config.storm_max_alerts), None),
            context={"window_start": storm.started, "window_end": now, "by_type": dict(by_type),
                     "by_service": dict(by_service), "suppressed": n},
            root_cause=f"{n} alerts within {window_s:.0f} s beyond the limit of "
                       f"{self.config.storm_max_alerts}; most common: {top}",
            remediation=list(REMEDIATION["alert_storm"]),
            related_alerts=[a.alert_id for a in storm.alerts[:MAX_STORM_RELATED]],
            runbook_url=self._runbook("alert_storm", None, None),
            fingerprint=f"storm-{storm.id}", first_seen=storm.started, last_seen=now, count=n,
            labels={"anomaly_type": "alert_storm", "severity": severity, "detection_method": "rate_limit"},
            notifications=1, notified_at=now,
        )
        alert.summary = f"Alert storm: {n} alerts summarised ({top})"
        return alert

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> list[Candidate]:
        """Note which services are sending; resolve members whose metric stayed quiet for ``resolve_after_s``."""
        services = batch.batch.strings.get("service")
        if not batch.batch.n or services is None:
            return []
        now = self._clock()
        with self._lock:
            for s in set(services):
                self._service_arrival[s] = now
        self._resolve_quiet(now)
        return []

    def _resolve_quiet(self, now: int) -> None:
        """Resolve members with no detection for ``resolve_after_s`` while their service kept sending;
        an alert resolves with its last firing member.

        Wall clock, not event time: rows of one batch span their calls' latencies (a slow call's
        row lies far ahead of a fast one's) and replayed history would resolve everything at once.
        """
        after = self.config.window_ns("resolve_after_s")
        reason = (f"{_QUIET}: no detection in "
                  f"{self.config.resolve_after_s / self.config.time_scale:.0f} s of traffic")
        events: list[tuple[str, Alert]] = []
        with self._lock:
            for alert in list(self._open.values()):
                if alert.anomaly_type == "alert_storm":
                    continue
                quiet = [m for m in alert.members if m.status == "firing" and self._quiet(m, now, after)]
                if not quiet:
                    continue
                for m in quiet:
                    m.status, m.resolved_at = "resolved", now
                if all(m.status == "resolved" for m in alert.members):
                    self._resolve(alert, now, reason)
                    events.append(("resolved", alert))
                else:
                    refresh(alert)
                    events.append(("update", alert))
            if events:
                self.store.update(a for _, a in events)
                self.metrics.open.set(len(self._open))
        for event, a in events:
            self.hub.publish(event, a.to_dict())

    def _quiet(self, m: AlertMember, now: int, after: int) -> bool:
        arrived = self._service_arrival.get(m.labels.get("service_name") or None)
        return arrived is not None and now - m.last_seen >= after and arrived - m.last_seen >= after

    def _resolve(self, alert: Alert, now: int, reason: str) -> None:
        alert.status = "resolved"
        alert.resolved_at = now
        alert.resolved_reason = reason
        alert.notify_due = None
        for m in alert.members:
            if m.status == "firing":
                m.status, m.resolved_at = "resolved", now
        self._open.pop(alert.fingerprint, None)
        if alert.anomaly_type != "alert_storm" and not reason.startswith("folded into"):
            self._recent.append(alert)  # may still explain a slower detector's symptom (_explaining)
        self.metrics.resolved.inc()

    def _expire(self, now: int) -> None:
        """Storm summaries resolve once their window has passed twice over (nothing else resolves them)."""
        for alert in list(self._open.values()):
            if alert.anomaly_type == "alert_storm" and now - alert.last_seen > 2 * self.config.window_ns(
                    "storm_window_s"):
                self._resolve(alert, now, "storm over")
                self.store.update([alert])

    def reconfigure(self, config: AlertManagerConfig) -> None:
        """Replace the settings (a reload): validated first, swapped under the lock so no candidate sees a mix."""
        config.validate()
        with self._lock:
            self.config = config

    # --- actions (API) --------------------------------------------------------------------------

    def acknowledge(self, alert_id: str, by: str, comment: str = "") -> Alert | None:
        now = self._clock()
        with self._lock:
            alert = next((a for a in self._open.values() if a.alert_id == alert_id), None) or self.store.get(alert_id)
            if alert is None:
                return None
            if alert.status == "resolved":
                raise AlertStateError(f"alert {alert_id} is resolved")
            alert.status = "acknowledged"
            alert.acknowledged_by = by or "unknown"
            alert.acknowledged_at = now
            if comment:
                alert.context["ack_comment"] = comment
            self.store.update([alert])
        self.hub.publish("update", alert.to_dict())
        return alert

    def add_silence(self, silence: Silence) -> Silence:
        with self._lock:
            self.store.put_silence(silence)
            self._silences = [s for s in self._silences if s.id != silence.id] + [silence]
        log.info("silence %s added until %s", silence.id, silence.to_dict()["ends_at"])
        return silence

    def expire_silence(self, silence_id: str) -> Silence | None:
        now = self._clock()
        with self._lock:
            silence = self.store.get_silence(silence_id)
            if silence is None:
                return None
            silence.ends_at = min(silence.ends_at, now)
            silence.starts_at = min(silence.starts_at, silence.ends_at)
            self.store.put_silence(silence)
            self._silences = [s for s in self._silences if s.id != silence_id] + [silence]
        return silence

    def delete_silence(self, silence_id: str) -> bool:
        with self._lock:
            self._silences = [s for s in self._silences if s.id != silence_id]
            return self.store.delete_silence(silence_id)

    # --- other replicas (a shared store) ---------------------------------------------------------

    def reload_silences(self) -> None:
        """Another replica changed the silences: read them again."""
        silences = self.store.silences()
        with self._lock:
            self._silences = silences

    def remote_change(self, alert: Alert) -> None:
        """An alert another replica raised or changed (read back from the shared store): this one's copy
        follows it, so its next write does not undo an acknowledgement, a resolution or a notification,
        and its next detection of the incident joins that alert."""
        with self._lock:
            local = self._open.get(alert.fingerprint)
            if local is None or local.alert_id != alert.alert_id:
                if alert.status != "resolved" and local is None and alert.anomaly_type != "alert_storm":
                    self._open[alert.fingerprint] = alert
                    self.metrics.open.set(len(self._open))
                return
            if alert.status == "resolved":
                self._open.pop(alert.fingerprint, None)
                self.metrics.open.set(len(self._open))
                return
            if alert.status == "acknowledged" and local.status != "acknowledged":
                local.status, local.acknowledged_by, local.acknowledged_at = ("acknowledged", alert.acknowledged_by,
                                                                             alert.acknowledged_at)
                if "ack_comment" in alert.context:
                    local.context["ack_comment"] = alert.context["ack_comment"]
            if alert.notifications > local.notifications:  # it sent a notification: not again from here
                local.notifications, local.notified_at, local.notify_due = (alert.notifications, alert.notified_at,
                                                                            alert.notify_due)
                sent = {m.key for m in alert.members if m.notified}
                for m in local.members:
                    m.notified = m.notified or m.key in sent


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _overlaps(alert: Alert, c: Candidate, after_ns: int = 0) -> bool:
    """Whether the alert's event-time window (first detection's start to the latest's end, ``after_ns``
    more) overlaps ``c``'s."""
    start, end = alert.context.get("window_start"), alert.context.get("window_end")
    return (isinstance(start, int) and isinstance(end, int) and c.window_start <= end + after_ns
            and start <= c.window_end)


def _worse(anomaly_type: str, value: float, peak: float) -> bool:
    return value < peak if anomaly_type == "throughput_drop" else value > peak


def _labels(c: Candidate, severity: str) -> dict[str, str]:
    """The labels of a detection's series (what silences match and ``group_by`` names)."""
    labels = {"service_name": c.service or "", "model": c.model or "", "anomaly_type": c.anomaly_type,
              "severity": severity, "detection_method": c.detection_method}
    for key in ("region", "user", "provider"):
        if c.context.get(key):
            labels[key] = str(c.context[key])
    return labels


def _legacy_member(alert: Alert) -> AlertMember:
    """An alert stored before grouping, as the one member it stands for (it was sent when raised)."""
    labels = {k: v for k, v in alert.labels.items() if k != "group"}
    labels["metric"] = alert.details.metric
    return AlertMember(key=alert.fingerprint, labels=labels, severity=alert.severity, confidence=alert.confidence,
                       details=AlertDetails(**alert.details.to_dict()), count=alert.count,
                       first_seen=alert.first_seen, last_seen=alert.last_seen, peak_value=alert.peak_value,
                       silenced_by=alert.silenced_by, notified=True,
                       trace_ids=list(alert.context.get("trace_ids") or [])[:MAX_TRACE_IDS])
