"""The alert manager: detection candidates in, alerts out (stored, streamed, sent to sinks).

Every candidate — the aggregator detectors', the Isolation Forest's and the confirmed local
anomalies — goes through these stages, in order (aggregator/alerting/README.md has the details):

1. **confidence**: below ``min_confidence`` (or the type's ``min_confidence_by_type``) dropped (counted);
2. **persistence**: a detection about a single call (a confirmed local anomaly, a forest outlier)
   needs ``row_persistence`` detections of the same series within ``persistence_window_s`` before it
   becomes an alert; ``persistence`` sets the count per anomaly type instead;
3. **de-duplication**: a detection whose fingerprint (type, service, model, metric, scope — for the
   per-row ``multivariate_outlier`` only type, service and model) matches
   an unresolved alert seen within ``dedup_window_s`` updates it (``count``, ``last_seen``,
   ``peak_value``, example trace ids) instead of raising a new one;
4. **enrichment**: severity by the rules of :mod:`aggregator.alerting.rules`, root-cause hint,
   remediation, runbook URL from ``runbook_url_template``, a one-line summary;
5. **correlation and grouping**: other unresolved alerts of the same service seen within
   ``correlation_window_s`` are linked both ways in ``related_alerts``, share ``labels.group``
   (the first alert's id), and get one combined root-cause hint;
6. **silences**: an alert matching an active silence is stored with ``silenced_by`` and sent to no sink;
7. **storm rate limit**: beyond ``storm_max_alerts`` alerts sent within ``storm_window_s``, further
   alerts are stored with ``storm_id`` and, when the window ends, one ``alert_storm`` summary is sent.

The alert is written to the store (with its sinks' outbox rows) before any sink or watcher sees
it. Resolution: an unresolved alert resolves once rows of its service have kept arriving for
``resolve_after_s`` past its last detection without another one (the detectors only fire while
the metric is outside its threshold, so that is the metric back at its baseline).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.model import SEVERITIES, SEVERITY_RANK, Alert, AlertDetails, fingerprint
from aggregator.alerting.rules import CAUSE, REMEDIATION, classify, correlated_cause
from aggregator.alerting.silences import Silence
from aggregator.alerting.sink import Sink
from aggregator.alerting.store import AlertStore
from aggregator.detectors.candidate import Candidate
from sentinel.config import ConfigError
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
DEFAULT_RUNBOOK_URL_TEMPLATE = "{public_url}/static/runbooks.html#{anomaly_type}"
MAX_TRACE_IDS = 5
MAX_STORM_RELATED = 100


class AlertStateError(ValueError):
    """The action does not apply to the alert in its current state (e.g. acknowledging a resolved one)."""


@dataclass
class AlertManagerConfig:
    dedup_window_s: float = DEFAULT_DEDUP_WINDOW_S
    min_confidence: float = DEFAULT_ALERT_MIN_CONFIDENCE
    min_confidence_by_type: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_CONFIDENCE_BY_TYPE))
    persistence: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PERSISTENCE))
    row_persistence: int = DEFAULT_ROW_PERSISTENCE
    persistence_window_s: float = DEFAULT_PERSISTENCE_WINDOW_S
    correlation_window_s: float = DEFAULT_CORRELATION_WINDOW_S
    resolve_after_s: float = DEFAULT_RESOLVE_AFTER_S
    storm_max_alerts: int = DEFAULT_STORM_MAX_ALERTS
    storm_window_s: float = DEFAULT_STORM_WINDOW_S
    retention_s: float = DEFAULT_RETENTION_S
    severity: dict[str, str] = field(default_factory=dict)
    runbook_url_template: str = DEFAULT_RUNBOOK_URL_TEMPLATE
    public_url: str = ""

    def validate(self) -> None:
        for key in ("dedup_window_s", "persistence_window_s", "correlation_window_s", "resolve_after_s",
                    "storm_window_s", "retention_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"alert_{key}: must be greater than 0")
        if not 0 <= self.min_confidence <= 1:
            raise ConfigError("alert_min_confidence: must be between 0 and 1")
        if not isinstance(self.min_confidence_by_type, dict):
            raise ConfigError("alert_min_confidence_by_type: must be a map of anomaly type to a confidence")
        for k, x in self.min_confidence_by_type.items():
            if not isinstance(x, int | float) or not 0 <= x <= 1:
                raise ConfigError(f"alert_min_confidence_by_type.{k}: must be a number between 0 and 1")
        if self.row_persistence < 1:
            raise ConfigError("alert_row_persistence: must be at least 1")
        if self.storm_max_alerts < 1:
            raise ConfigError("alert_storm_max_alerts: must be at least 1")
        if not isinstance(self.persistence, dict):
            raise ConfigError("alert_persistence: must be a map of anomaly type to a count")
        for k, n in self.persistence.items():
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"alert_persistence.{k}: must be an integer >= 1")
        if not isinstance(self.severity, dict):
            raise ConfigError("alert_severity: must be a map of anomaly type to a severity")
        for k, sev in self.severity.items():
            if sev not in SEVERITIES:
                raise ConfigError(f"alert_severity.{k}: {sev!r} is not one of {', '.join(SEVERITIES)}")
        try:
            self.runbook_url_template.format(public_url="", anomaly_type="x", service="s", model="m")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"alert_runbook_url_template: {e!r}: placeholders are {{public_url}}, "
                              "{anomaly_type}, {service} and {model}") from None


@dataclass
class _Storm:
    id: str
    started: int  # wall ns
    alerts: list[Alert] = field(default_factory=list)


class _Metrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.raised = Counter("sentinel_aggregator_alerts", "Alerts raised", ["severity", "anomaly_type"],
                              registry=registry)
        self.deduplicated = Counter("sentinel_aggregator_alerts_deduplicated",
                                    "Detections folded into an open alert with the same fingerprint", registry=registry)
        self.suppressed = Counter("sentinel_aggregator_alerts_suppressed",
                                  "Detections or alerts not sent, by reason (low_confidence, persistence, "
                                  "silenced, storm)", ["reason"], registry=registry)
        self.resolved = Counter("sentinel_aggregator_alerts_resolved", "Alerts resolved", registry=registry)
        self.open = Gauge("sentinel_aggregator_alerts_open", "Unresolved alerts", registry=registry)


class AlertManager:
    """Candidates to alerts. ``emit`` is thread-safe (the analysis thread calls it); so are the actions.

    It is also a :class:`aggregator.analysis.BatchConsumer`: the rows it sees advance event time
    per service, which is what resolves alerts.
    """

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
        self._open: dict[str, Alert] = {}  # fingerprint -> unresolved alert
        self._service_arrival: dict[str | None, int] = {}  # service -> when its rows last arrived
        self._pending: dict[str, collections.deque[int]] = {}  # fingerprint -> wall times (persistence)
        self._sent: collections.deque[int] = collections.deque()  # wall times of alerts sent (storm limit)
        self._storm: _Storm | None = None
        self._silences: list[Silence] = []
        self.metrics = _Metrics(registry)

    # --- lifecycle ----------------------------------------------------------------------------

    def restore(self) -> None:
        """Open the store and rebuild the unresolved alerts and silences (at start, before traffic)."""
        self.store.open()
        with self._lock:
            for alert in self.store.unresolved():
                self._open[alert.fingerprint] = alert
            self._silences = self.store.silences()
            self.metrics.open.set(len(self._open))

    def save(self) -> None:
        """Everything is written as it happens; retention runs here (with the periodic save)."""
        self.store.prune(self._clock() - int(self.config.retention_s * 1e9))

    # --- input --------------------------------------------------------------------------------

    def emit(self, candidates: Iterable[Candidate]) -> None:
        """Turn a batch of candidates into new or updated alerts; one store transaction per alert raised."""
        now = self._clock()
        raised: list[Alert] = []
        updated: dict[str, Alert] = {}
        with self._lock:
            self._expire(now)
            for c in candidates:
                self._one(c, now, raised, updated)
            for a in raised:
                updated.pop(a.alert_id, None)
            self.store.update(updated.values())
            self.metrics.open.set(len(self._open))
        for a in raised:
            self.hub.publish("alert", a.to_dict())
        for a in updated.values():
            self.hub.publish("update", a.to_dict())
        self._wake_sinks(raised)

    def _one(self, c: Candidate, now: int, raised: list[Alert], updated: dict[str, Alert]) -> None:
        cfg = self.config
        if c.confidence < max(cfg.min_confidence, cfg.min_confidence_by_type.get(c.anomaly_type, 0.0)):
            self.metrics.suppressed.labels("low_confidence").inc()
            return
        if c.anomaly_type in _PER_KEY_TYPES:
            fp = fingerprint(c.anomaly_type, c.service, c.model, "", {})
        else:
            fp = fingerprint(c.anomaly_type, c.service, c.model, c.metric, c.context)
        open_alert = self._open.get(fp)
        if open_alert is not None and now - open_alert.last_seen <= cfg.dedup_window_s * 1e9:
            self._fold(open_alert, c, now)
            updated[open_alert.alert_id] = open_alert
            self.metrics.deduplicated.inc()
            return
        if open_alert is not None:  # open but silent for longer than the window: a new incident
            self._resolve(open_alert, now, "no detection within the de-duplication window")
            updated[open_alert.alert_id] = open_alert
        # A sidecar's error rate is over its own window although the candidate carries the call's time.
        single_row = c.window_end - c.window_start <= _ROW_WINDOW_NS and c.metric != "error_rate"
        needed = cfg.persistence.get(c.anomaly_type, cfg.row_persistence if single_row else 1)
        if needed > 1:
            seen = self._pending.setdefault(fp, collections.deque())
            seen.append(now)
            while seen and now - seen[0] > cfg.persistence_window_s * 1e9:
                seen.popleft()
            if len(seen) < needed:
                self.metrics.suppressed.labels("persistence").inc()
                return
            del self._pending[fp]
        alert = self._new_alert(c, fp, now)
        if needed > 1:
            alert.count = needed  # the detections that made it persist
            alert.summary = _summary(alert)
        self._correlate(alert, now, updated)
        self._route(alert, now)
        self.store.insert(alert, self._sink_names(alert))
        self._open[fp] = alert
        raised.append(alert)
        self.metrics.raised.labels(alert.severity, alert.anomaly_type).inc()

    def _new_alert(self, c: Candidate, fp: str, now: int) -> Alert:
        cfg = self.config
        severity = classify(c.anomaly_type, value=c.value, baseline=c.baseline, deviation_sigma=c.deviation_sigma,
                            confidence=c.confidence, overrides=cfg.severity)
        context = dict(c.context)
        context["window_start"] = int(c.window_start)
        context["window_end"] = int(c.window_end)
        context["trace_ids"] = list(context.get("trace_ids") or [])[:MAX_TRACE_IDS]
        labels = {"service_name": c.service or "", "model": c.model or "", "anomaly_type": c.anomaly_type,
                  "severity": severity, "detection_method": c.detection_method}
        for key in ("region", "user"):
            if context.get(key):
                labels[key] = str(context[key])
        alert = Alert(
            alert_id=str(uuid.uuid4()), timestamp=now, severity=severity, anomaly_type=c.anomaly_type,
            service_name=c.service, model=c.model, detection_method=c.detection_method,
            confidence=float(c.confidence),
            details=AlertDetails(c.metric, c.value, c.baseline, c.threshold, c.deviation_sigma),
            context=context, root_cause=CAUSE.get(c.anomaly_type),
            remediation=list(REMEDIATION.get(c.anomaly_type, [])),
            runbook_url=cfg.runbook_url_template.format(public_url=cfg.public_url, anomaly_type=c.anomaly_type,
                                                        service=c.service or "", model=c.model or "") or None,
            fingerprint=fp, first_seen=now, last_seen=now, peak_value=_finite(c.value), labels=labels,
        )
        alert.summary = _summary(alert)
        return alert

    def _fold(self, alert: Alert, c: Candidate, now: int) -> None:
        """A repeat detection of an open alert: count, last seen, peak, a few more example traces."""
        alert.count += 1
        alert.last_seen = now
        alert.confidence = max(alert.confidence, float(c.confidence))
        value = _finite(c.value)
        if value is not None:
            alert.details.value = value
            if alert.peak_value is None or _worse(alert.anomaly_type, value, alert.peak_value):
                alert.peak_value = value
        ids = alert.context.setdefault("trace_ids", [])
        for t in c.context.get("trace_ids") or []:
            if len(ids) >= MAX_TRACE_IDS:
                break
            if t not in ids:
                ids.append(t)
        alert.context["window_end"] = max(int(alert.context.get("window_end") or 0), int(c.window_end))
        alert.summary = _summary(alert)

    def _correlate(self, alert: Alert, now: int, updated: dict[str, Alert]) -> None:
        if not alert.service_name:
            return
        window = self.config.correlation_window_s * 1e9
        related = [a for a in self._open.values()
                   if a.service_name == alert.service_name and now - a.last_seen <= window]
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

    def _route(self, alert: Alert, now: int) -> None:
        """Silences, then the storm limit: decide whether sinks are sent this alert."""
        for s in self._silences:
            if s.active(now) and s.matches(alert.labels):
                alert.silenced_by = s.id
                self.metrics.suppressed.labels("silenced").inc()
                return
        window = self.config.storm_window_s * 1e9
        while self._sent and now - self._sent[0] > window:
            self._sent.popleft()
        if self._storm is None and len(self._sent) < self.config.storm_max_alerts:
            self._sent.append(now)
            return
        if self._storm is None:
            self._storm = _Storm(id=str(uuid.uuid4()), started=now)
            log.warning("alert storm: more than %d alerts in %.0f s; summarising until the window ends",
                        self.config.storm_max_alerts, self.config.storm_window_s)
        alert.storm_id = self._storm.id
        self._storm.alerts.append(alert)
        self.metrics.suppressed.labels("storm").inc()

    def _sink_names(self, alert: Alert) -> list[str]:
        return [s.name for s in self.sinks if alert.notify and s.wants(alert)]

    def _wake_sinks(self, raised: Sequence[Alert]) -> None:
        if any(a.notify for a in raised):
            for s in self.sinks:
                s.wake()

    # --- time passing ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Close an alert storm whose window ended (called about once a second)."""
        now = self._clock()
        summary: Alert | None = None
        with self._lock:
            storm = self._storm
            if storm is not None and now - storm.started >= self.config.storm_window_s * 1e9:
                self._storm = None
                summary = self._storm_summary(storm, now)
                self.store.insert(summary, self._sink_names(summary))
                self._open[summary.fingerprint] = summary
                self.metrics.raised.labels(summary.severity, summary.anomaly_type).inc()
                self.metrics.open.set(len(self._open))
        if summary is not None:
            self.hub.publish("alert", summary.to_dict())
            self._wake_sinks([summary])
        self._resolve_quiet(now)

    def _storm_summary(self, storm: _Storm, now: int) -> Alert:
        by_type = collections.Counter(a.anomaly_type for a in storm.alerts)
        by_service = collections.Counter(a.service_name or "" for a in storm.alerts)
        severity = min((a.severity for a in storm.alerts), key=SEVERITY_RANK.__getitem__)
        n = len(storm.alerts)
        top = ", ".join(f"{t} x{k}" for t, k in by_type.most_common(3))
        alert = Alert(
            alert_id=storm.id, timestamp=now, severity=severity, anomaly_type="alert_storm", service_name=None,
            model=None, detection_method="rate_limit", confidence=1.0,
            details=AlertDetails("alerts", float(n), None, float(self.config.storm_max_alerts), None),
            context={"window_start": storm.started, "window_end": now, "by_type": dict(by_type),
                     "by_service": dict(by_service), "suppressed": n},
            root_cause=f"{n} alerts within {self.config.storm_window_s:.0f} s beyond the limit of "
                       f"{self.config.storm_max_alerts}; most common: {top}",
            remediation=list(REMEDIATION["alert_storm"]),
            related_alerts=[a.alert_id for a in storm.alerts[:MAX_STORM_RELATED]],
            runbook_url=self.config.runbook_url_template.format(
                public_url=self.config.public_url, anomaly_type="alert_storm", service="", model="") or None,
            fingerprint=f"storm-{storm.id}", first_seen=storm.started, last_seen=now, count=n,
            labels={"anomaly_type": "alert_storm", "severity": severity, "detection_method": "rate_limit"},
        )
        alert.summary = f"Alert storm: {n} alerts summarised ({top})"
        return alert

    def consume(self, batch: WireBatch, *, arrival_ns: int) -> None:
        """Note which services are sending; resolve alerts whose metric stayed quiet for ``resolve_after_s``."""
        services = batch.batch.strings.get("service")
        if not batch.batch.n or services is None:
            return
        now = self._clock()
        with self._lock:
            for s in set(services):
                self._service_arrival[s] = now
        self._resolve_quiet(now)

    def _resolve_quiet(self, now: int) -> None:
        """Resolve alerts with no detection for ``resolve_after_s`` while their service kept sending.

        Wall clock, not event time: rows of one batch span their calls' latencies (a slow call's
        row lies far ahead of a fast one's) and replayed history would resolve everything at once.
        """
        after = int(self.config.resolve_after_s * 1e9)
        resolved: list[Alert] = []
        with self._lock:
            for alert in list(self._open.values()):
                if alert.anomaly_type == "alert_storm":
                    continue
                arrived = self._service_arrival.get(alert.service_name)
                if arrived is not None and now - alert.last_seen >= after and arrived - alert.last_seen >= after:
                    self._resolve(alert, now, f"metric back within its threshold: no detection in "
                                              f"{self.config.resolve_after_s:.0f} s of traffic")
                    resolved.append(alert)
            if resolved:
                self.store.update(resolved)
                self.metrics.open.set(len(self._open))
        for a in resolved:
            self.hub.publish("resolved", a.to_dict())

    def _resolve(self, alert: Alert, now: int, reason: str) -> None:
        alert.status = "resolved"
        alert.resolved_at = now
        alert.resolved_reason = reason
        self._open.pop(alert.fingerprint, None)
        self.metrics.resolved.inc()

    def _expire(self, now: int) -> None:
        """Storm summaries resolve once their window has passed twice over (nothing else resolves them)."""
        for alert in list(self._open.values()):
            if alert.anomaly_type == "alert_storm" and now - alert.last_seen > 2 * self.config.storm_window_s * 1e9:
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


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _worse(anomaly_type: str, value: float, peak: float) -> bool:
    return value < peak if anomaly_type == "throughput_drop" else value > peak


def _fmt(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _summary(a: Alert) -> str:
    where = " / ".join(p for p in (a.service_name, a.model) if p) or "all services"
    d = a.details
    text = f"{a.anomaly_type.replace('_', ' ')} on {where}: {d.metric} {_fmt(d.value)} vs baseline {_fmt(d.baseline)}"
    if d.deviation_sigma is not None and math.isfinite(d.deviation_sigma):
        text += f" ({d.deviation_sigma:+.1f} sigma)"
    if a.count > 1:
        text += f", seen {a.count} times"
    return text
