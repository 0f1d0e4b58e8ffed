"""Local alerts: an edge sidecar pages on its own while the aggregator cannot.

The sidecar's local detections (:mod:`sidecar.detectors.local`) normally only travel to the
aggregator, which confirms them and pages. An edge node cut off from it would page nobody, so a
sidecar may have sinks of its own: a webhook receiving the aggregator's alert document
(``format: json``, :meth:`sentinel.alerts.Alert.to_dict`), a Slack incoming webhook (the same
message as the aggregator's, :func:`sentinel.slack.slack_body`), and always a log line and
``sentinel_sidecar_local_alerts_total``.

Which detections page (``local_alerts.mode`` setting):

* ``offline`` (default): only while the aggregator is unreachable — the forwarder's last attempt
  failed with a connection error or 502/503/504 (or no ``aggregator_url`` is set);
* ``always``: whatever the aggregator's state; ``off``: never.

A detection becomes an alert at ``local_alerts.min_severity`` or worse (severity by the aggregator's
rules, :func:`sentinel.alert_rules.classify`, confidence 1); a detection about one call (a
z-score, MAD, IQR or threshold anomaly) needs ``local_alerts.row_persistence`` of the same series
within ``local_alerts.dedup_s`` (one slow call is not an incident); an error-rate detection is over a
window already and pages at once. A series that paged is not paged again for
``local_alerts.dedup_s`` after its last detection (repeats are counted on the alert).

Each alert is also handed to the pipeline (:meth:`LocalAlerter.take`) to travel in the batch that
carries its anomalies — spooled with it while the aggregator is away — so the aggregator can show it
(``raised_at_edge``) and not page a second time (``aggregator/alerting/edge_alerts.py``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from sentinel.alert_rules import classify
from sentinel.alerts import SEVERITIES, SEVERITY_RANK, Alert, AlertDetails
from sentinel.config import ConfigError, setting
from sentinel.edge_alerts import LOCAL_ANOMALY_TYPES, MAX_TRACE_IDS, EdgeAlert
from sentinel.model import LocalAnomaly
from sentinel.retry import backoff_s
from sentinel.slack import slack_body

__all__ = ["LOCAL_ALERT_MODES", "LocalAlerter", "LocalAlertsConfig"]

log = logging.getLogger(__name__)

LOCAL_ALERT_MODES = ("off", "offline", "always")
DEFAULT_MIN_SEVERITY = "high"
DEFAULT_DEDUP_S = 300.0
DEFAULT_ROW_PERSISTENCE = 3
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 3
#: Alerts waiting for a batch to travel in; beyond it the oldest are forgotten (counted).
MAX_PENDING = 1000
_MAX_SERIES = 10_000


@dataclass(kw_only=True)
class LocalAlertsConfig:
    """The sidecar's ``local_alerts:`` section (:class:`sidecar.config.SidecarConfig`)."""

    mode: str = setting("offline", "when the sidecar pages its own sinks for local detections: offline (while "
                        "the aggregator is unreachable), always, or off (see sidecar/README.md, Local alerts)")
    min_severity: str = setting(DEFAULT_MIN_SEVERITY, "least severity of a local detection that pages locally "
                                "(critical, high, medium, low)")
    webhook_url: str = setting("", "webhook receiving local alerts as the aggregator's alert JSON document "
                               "(empty: none)")
    slack_url: str = setting("", "Slack incoming webhook receiving local alerts (empty: none)")
    dedup_s: float = setting(DEFAULT_DEDUP_S, "a series that paged locally is not paged again until this long "
                             "after its last detection")
    row_persistence: int = setting(DEFAULT_ROW_PERSISTENCE, "detections about single calls of one series, within "
                                   "dedup_s, before they page locally")
    timeout_s: float = setting(DEFAULT_TIMEOUT_S, "timeout of one local alert POST")
    attempts: int = setting(DEFAULT_ATTEMPTS, "tries per local alert sink before it counts as failed")
    headers: dict[str, str] = setting(None, "headers of the local alert POSTs", factory=dict, config=False)

    def validate(self) -> None:
        if self.mode not in LOCAL_ALERT_MODES:
            raise ConfigError(f"local_alerts.mode: {self.mode!r} is not one of {', '.join(LOCAL_ALERT_MODES)}")
        if self.min_severity not in SEVERITIES:
            raise ConfigError(f"local_alerts.min_severity: {self.min_severity!r} is not one of {', '.join(SEVERITIES)}")
        for key in ("webhook_url", "slack_url"):
            url = getattr(self, key)
            if url and not url.startswith(("http://", "https://")):
                raise ConfigError(f"local_alerts.{key}: {url!r} must start with http:// or https://")
        for key in ("dedup_s", "timeout_s"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"local_alerts.{key}: must be greater than 0")
        for key in ("row_persistence", "attempts"):
            if getattr(self, key) < 1:
                raise ConfigError(f"local_alerts.{key}: must be at least 1")


@dataclass
class _Series:
    alert: EdgeAlert | None = None
    last_seen: float = 0.0  # monotonic s of the last detection
    seen: collections.deque[float] = field(default_factory=collections.deque)  # persistence


class LocalAlerter:
    """Local anomalies in (:meth:`observe`, from the pipeline), pages out, edge alerts to forward.

    ``offline()`` tells whether the aggregator is unreachable now (the forwarder knows).
    """

    def __init__(self, config: LocalAlertsConfig, *, sidecar_id: str, offline: Callable[[], bool],
                 registry: CollectorRegistry,
                 clock: Callable[[], int] = time.time_ns) -> None:
        config.validate()
        self.config = config
        self._sidecar = sidecar_id
        self._offline = offline
        self._clock = clock
        self._series: dict[tuple[Any, ...], _Series] = {}
        self._pending: collections.deque[EdgeAlert] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: aiohttp.ClientSession | None = None
        self.alerts = Counter("sentinel_sidecar_local_alerts", "Alerts the sidecar raised itself, by severity, "
                              "anomaly type and whether the aggregator was unreachable",
                              ["severity", "anomaly_type", "offline"], registry=registry)
        self.deliveries = Counter("sentinel_sidecar_local_alert_deliveries", "Local alerts sent to the "
                                  "sidecar's own sinks, by sink and outcome (delivered, failed)",
                                  ["sink", "outcome"], registry=registry)
        self.forgotten = Counter("sentinel_sidecar_local_alerts_unforwarded", "Local alerts dropped before a "
                                 "batch could carry them to the aggregator (more than 1000 waiting)",
                                 registry=registry)

    @property
    def sinks(self) -> list[tuple[str, str]]:
        out = []
        if self.config.webhook_url:
            out.append(("webhook", self.config.webhook_url))
        if self.config.slack_url:
            out.append(("slack", self.config.slack_url))
        return out

    async def start(self) -> None:
        if self.sinks:
            # aiohttp's client, already loaded for the receivers (no httpx in the sidecar: issue 16).
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s), trust_env=True,
                headers={"User-Agent": "llm-sentinel-sidecar", **self.config.headers})

    async def shutdown(self) -> None:
        """Wait briefly for pages in flight, then close; idempotent."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.timeout_s)
        for t in list(self._tasks):
            t.cancel()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # --- detections -------------------------------------------------------------------------------

    def active(self) -> bool:
        mode = self.config.mode
        return mode == "always" or (mode == "offline" and self._offline())

    def observe(self, anomalies: Sequence[LocalAnomaly]) -> list[EdgeAlert]:
        """Raise alerts for what deserves one now; returns the new ones (already being paged)."""
        if not anomalies or not self.active():
            return []
        now = time.monotonic()
        raised = []
        for a in anomalies:
            alert = self._one(a, now)
            if alert is not None:
                raised.append(alert)
        return raised

    def _one(self, a: LocalAnomaly, now: float) -> EdgeAlert | None:
        cfg = self.config
        anomaly_type = LOCAL_ANOMALY_TYPES.get(a.metric)
        if anomaly_type is None:
            return None
        severity = classify(anomaly_type, value=a.value, baseline=a.baseline, deviation_sigma=a.sigma, confidence=1.0)
        if SEVERITY_RANK[severity] > SEVERITY_RANK[cfg.min_severity]:
            return None
        key = (anomaly_type, a.service, a.model, a.metric)
        s = self._series.get(key)
        if s is None:
            if len(self._series) >= _MAX_SERIES:
                self._series.clear()  # forget rather than grow: at worst a series pages again
            s = self._series[key] = _Series()
        if s.alert is not None and now - s.last_seen <= cfg.dedup_s:
            s.alert.count += 1  # a repeat: counted, not paged again
            s.last_seen = now
            return None
        s.alert = None
        if a.method != "error_rate":
            s.seen.append(now)
            while s.seen and now - s.seen[0] > cfg.dedup_s:
                s.seen.popleft()
            if len(s.seen) < cfg.row_persistence:
                return None
        s.seen.clear()
        s.last_seen = now
        sinks = [name for name, _ in self.sinks]
        alert = EdgeAlert(
            alert_id=str(uuid.uuid4()), anomaly_type=anomaly_type, severity=severity, service=a.service,
            model=a.model, operation=a.operation, metric=a.metric, value=a.value, baseline=a.baseline,
            threshold=a.threshold, sigma=a.sigma, method=a.method, time_unix_nano=a.time_unix_nano,
            raised_unix_nano=self._clock(), trace_ids=[a.trace_id] if a.trace_id else [],
            paged=bool(sinks), delivery="pending" if sinks else "none", sinks=sinks)
        s.alert = alert
        offline = self._offline()
        self.alerts.labels(severity, anomaly_type, "true" if offline else "false").inc()
        log.warning("local alert %s: [%s] %s on %s/%s: %s=%.4g (baseline %.4g, %s)%s", alert.alert_id,
                    severity, anomaly_type, a.service, a.model, a.metric, a.value, a.baseline, a.method,
                    " while the aggregator is unreachable" if offline else "")
        self._queue(alert)
        if sinks:
            task = asyncio.get_running_loop().create_task(self._page(alert), name="local-alert")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return alert

    def _queue(self, alert: EdgeAlert) -> None:
        if len(self._pending) >= MAX_PENDING:
            self._pending.popleft()
            self.forgotten.inc()
        # A copy: the record sent is the alert as raised (a later count is the aggregator's to keep).
        self._pending.append(EdgeAlert.from_wire(alert.to_wire()))

    def take(self) -> list[EdgeAlert]:
        """The edge alerts not yet handed to a batch (the pipeline calls this when it seals one)."""
        out = list(self._pending)
        self._pending.clear()
        return out

    # --- paging -----------------------------------------------------------------------------------

    def document(self, alert: EdgeAlert) -> dict[str, Any]:
        """The aggregator's alert document for ``alert`` (what ``format: json`` webhooks receive)."""
        context: dict[str, Any] = {
            "trace_ids": list(alert.trace_ids[:MAX_TRACE_IDS]), "sidecar": self._sidecar,
            "operation": alert.operation, "window_start": alert.time_unix_nano,
            "window_end": alert.time_unix_nano + 1,
            "raised_at_edge": {"sidecar": self._sidecar, "alert_id": alert.alert_id, "offline": self._offline()},
        }
        doc = Alert(
            alert_id=alert.alert_id, timestamp=alert.raised_unix_nano, severity=alert.severity,
            anomaly_type=alert.anomaly_type, service_name=alert.service, model=alert.model,
            detection_method=f"local_{alert.method}", confidence=1.0,
            details=AlertDetails(alert.metric, alert.value, alert.baseline, alert.threshold, alert.sigma),
            context=context, first_seen=alert.raised_unix_nano, last_seen=alert.raised_unix_nano,
            peak_value=alert.value, fingerprint=alert.alert_id,
            summary=f"{alert.anomaly_type} on {alert.service or '?'} / {alert.model or '?'}: {alert.metric} "
                    f"{alert.value:.4g} vs baseline {alert.baseline:.4g} (raised at the edge by {self._sidecar})",
            labels={"service_name": alert.service or "", "model": alert.model or "",
                    "anomaly_type": alert.anomaly_type, "severity": alert.severity, "raised_at_edge": "true"},
        ).to_dict()
        return doc

    async def _page(self, alert: EdgeAlert) -> None:
        doc = self.document(alert)
        delivered = []
        for name, url in self.sinks:
            body: dict[str, Any] = doc
            if name == "slack":
                body = slack_body(doc)
            if await self._post(name, url, body):
                delivered.append(name)
        if delivered:
            return
        # Nobody was paged: tell the aggregator, so it pages itself once the record reaches it.
        alert.paged, alert.delivery = False, "failed"
        self._queue(alert)
        log.error("local alert %s reached none of its sinks (%s)", alert.alert_id,
                  ", ".join(n for n, _ in self.sinks))

    async def _post(self, name: str, url: str, body: dict[str, Any]) -> bool:
        assert self._client is not None
        for attempt in range(self.config.attempts):
            status = 0
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._client.post(url, json=body) as r:
                    status = r.status
                    await r.read()
            if 200 <= status < 300:
                self.deliveries.labels(name, "delivered").inc()
                return True
            if 400 <= status < 500 and status not in (408, 429):
                break  # the receiver refuses this alert: retrying would not help
            if attempt + 1 < self.config.attempts:
                await asyncio.sleep(backoff_s(attempt, 5.0, base_s=0.5))
        self.deliveries.labels(name, "failed").inc()
        log.warning("local alert sink %s: could not deliver after %d attempts", name, self.config.attempts)
        return False
