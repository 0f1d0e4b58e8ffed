"""The alert manager's logic on a real store (SQLite and PostgreSQL): enrichment, dedup, persistence,
correlation, silences, acknowledgements, storm summarising, resolution and restart."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aggregator.alerting.hub import AlertHub
from aggregator.alerting.manager import AlertManager, AlertManagerConfig, AlertStateError
from aggregator.alerting.silences import Matcher, Silence, SilenceError
from aggregator.alerting.sink import severity_at_least
from aggregator.alerting.store import AlertQuery, SQLiteAlertStore
from aggregator.analysis.detectors.candidate import Candidate
from sentinel.alert_rules import classify
from sentinel.alerts import Alert
from sentinel.config import ConfigError
from sentinel.model import FeatureBatch
from sentinel.wire import WireBatch

S = 1_000_000_000
T0 = 1_800_000_000 * S


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * S)


class RecordingSink:
    def __init__(self, name: str = "rec", minimum: str = "low") -> None:
        self.name = name
        self.minimum = minimum
        self.wakes = 0

    def wants(self, alert: Alert) -> bool:
        return severity_at_least(alert.severity, self.minimum)

    def wake(self) -> None:
        self.wakes += 1

    async def start(self) -> None:
        pass

    async def shutdown(self) -> None:
        pass


def cand(anomaly_type: str = "latency_spike", *, service: str = "chat", model: str = "gpt-4o",
         metric: str = "latency_ms", value: float = 4500.0, baseline: float = 1500.0, threshold: float = 4000.0,
         sigma: float = 4.5, confidence: float = 0.95, t: int = T0, **context: Any) -> Candidate:
    context.setdefault("trace_ids", ["aa" * 16])
    return Candidate(anomaly_type=anomaly_type, service=service, model=model, detection_method="z_score",
                     confidence=confidence, metric=metric, value=value, baseline=baseline, threshold=threshold,
                     deviation_sigma=sigma, window_start=t, window_end=t + 60 * S, context=context)


@pytest.fixture
def store(any_store: SQLiteAlertStore) -> SQLiteAlertStore:
    """Every test here on both backends (the store interface is the same)."""
    return any_store


def make(store: SQLiteAlertStore, clock: Clock, sinks: list[RecordingSink] | None = None,
         **overrides: Any) -> AlertManager:
    cfg = AlertManagerConfig(public_url="http://sentinel.example", **overrides)
    m = AlertManager(cfg, store, AlertHub(), sinks=sinks or [], registry=CollectorRegistry(), clock=clock)
    m.restore()
    return m


def all_alerts(store: SQLiteAlertStore) -> list[Alert]:
    return store.query(AlertQuery(limit=1000))[0]


def test_candidate_becomes_an_enriched_alert(store: SQLiteAlertStore) -> None:
    sink = RecordingSink()
    clock = Clock()
    m = make(store, clock, [sink])
    m.emit([cand(region="eu-west-1", user="u-1")])
    [a] = all_alerts(store)
    d = a.to_dict()
    for key in ("alert_id", "timestamp", "severity", "anomaly_type", "service_name", "model", "detection_method",
                "confidence", "details", "context", "root_cause", "remediation", "related_alerts", "runbook_url"):
        assert key in d
    assert d["severity"] == "medium" and d["anomaly_type"] == "latency_spike"
    assert d["details"] == {"metric": "latency_ms", "value": 4500.0, "baseline": 1500.0, "threshold": 4000.0,
                            "deviation_sigma": 4.5}
    assert d["context"]["trace_ids"] == ["aa" * 16] and d["context"]["region"] == "eu-west-1"
    assert d["runbook_url"] == "http://sentinel.example/static/runbooks.html#latency_spike"
    assert d["remediation"] and d["root_cause"]
    assert d["timestamp"].endswith("Z") and d["status"] == "open"
    assert "latency spike on chat / gpt-4o" in d["summary"]
    assert a.labels["region"] == "eu-west-1" and a.labels["user"] == "u-1"
    [member] = a.members
    assert member.labels["model"] == "gpt-4o" and member.details.value == 4500.0 and member.status == "firing"
    # Stored and streamed at once; sent when group_wait (10 s) is over.
    assert store.outbox_pending("rec", 10) == [] and sink.wakes == 0
    clock.advance(10)
    m.tick()
    assert [i.alert_id for i in store.outbox_pending("rec", 10)] == [a.alert_id]
    assert sink.wakes == 1
    sent = store.get(a.alert_id)
    assert sent is not None and sent.notifications == 1 and sent.notified_at == clock.now


def test_duplicates_within_the_window_update_the_open_alert(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    m.emit([cand(value=6000.0)])
    clock.advance(60)
    m.emit([cand(value=12000.0, trace_ids=["bb" * 16])])
    clock.advance(60)
    m.emit([cand(value=7000.0)])
    [a] = all_alerts(store)
    assert a.count == 3 and a.peak_value == 12000.0 and a.details.value == 7000.0
    assert a.last_seen == clock.now and a.first_seen == T0
    assert a.context["trace_ids"] == ["aa" * 16, "bb" * 16]
    assert store.outbox_depth("rec") == 1  # sinks were sent it once
    # Silent for longer than the window: the next detection is a new incident.
    clock.advance(301)
    m.emit([cand()])
    alerts = all_alerts(store)
    assert len(alerts) == 2
    assert {x.status for x in alerts} == {"open", "resolved"}


def test_other_series_do_not_deduplicate(store: SQLiteAlertStore) -> None:
    # group_by ["..."]: one alert per series (no grouping); the default groups them (test_grouping_*).
    m = make(store, Clock(), group_by=["..."])
    m.emit([cand(), cand(model="claude"), cand(user="u-1"), cand(anomaly_type="token_spike", metric="output_tokens")])
    assert len(all_alerts(store)) == 4


def test_confidence_and_persistence_filters(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, persistence={"multivariate_outlier": 3})
    m.emit([cand(confidence=0.3)])
    assert all_alerts(store) == []
    outlier = cand(anomaly_type="multivariate_outlier", metric="iforest_score", detection_method="isolation_forest")
    m.emit([outlier])
    clock.advance(10)
    m.emit([outlier])
    assert all_alerts(store) == []
    clock.advance(10)
    m.emit([outlier])
    assert len(all_alerts(store)) == 1


def test_persistence_window_forgets_old_detections(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, persistence={"drift": 2}, persistence_window_s=60)
    m.emit([cand(anomaly_type="drift", metric="psi")])
    clock.advance(120)
    m.emit([cand(anomaly_type="drift", metric="psi")])
    assert all_alerts(store) == []


def test_latency_spike_and_error_burst_are_correlated(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock)
    m.emit([cand()])
    clock.advance(30)
    m.emit([cand(anomaly_type="error_burst", metric="error_rate", value=0.3, baseline=0.01, threshold=0.1)])
    m.emit([cand(service="other")])  # another service: not related
    by_type = {a.anomaly_type: a for a in all_alerts(store) if a.service_name == "chat"}
    spike, burst = by_type["latency_spike"], by_type["error_burst"]
    assert burst.related_alerts == [spike.alert_id] and spike.related_alerts == [burst.alert_id]
    assert spike.root_cause == burst.root_cause and "provider" in (burst.root_cause or "")
    assert spike.labels["group"] == burst.labels["group"] == spike.alert_id
    other = next(a for a in all_alerts(store) if a.service_name == "other")
    assert other.related_alerts == [] and other.labels["group"] == other.alert_id


def test_silences_mute_sinks_but_keep_the_alert(store: SQLiteAlertStore) -> None:
    clock = Clock()
    sink = RecordingSink()
    m = make(store, clock, [sink], group_wait_s=0)  # sent as raised
    s = m.add_silence(Silence([Matcher("service_name", "chat"), Matcher("model", "gpt-.*", "=~")],
                              starts_at=T0, ends_at=T0 + 600 * S))
    m.emit([cand()])
    [a] = all_alerts(store)
    assert a.silenced_by == s.id and store.outbox_depth("rec") == 0 and sink.wakes == 0
    m.emit([cand(service="billing")])
    assert store.outbox_depth("rec") == 1
    # Expired: the next alert of the silenced series is sent.
    assert m.expire_silence(s.id) is not None
    m.emit([cand(anomaly_type="token_spike", metric="output_tokens")])
    assert store.outbox_depth("rec") == 2
    assert m.delete_silence(s.id) and store.get_silence(s.id) is None


def test_silences_survive_a_restart(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    m.add_silence(Silence([Matcher("anomaly_type", "latency_spike")], starts_at=T0, ends_at=T0 + 600 * S))
    m2 = make(store, clock, [RecordingSink()])
    m2.emit([cand()])
    clock.advance(10)
    m2.tick()
    m2.emit([cand(anomaly_type="error_burst", metric="error_rate", value=0.3, baseline=0.01)])
    clock.advance(10)
    m2.tick()
    assert [i.alert_id for i in store.outbox_pending("rec", 10)] == [
        a.alert_id for a in all_alerts(store) if a.anomaly_type == "error_burst"]


def test_silence_requests_are_validated() -> None:
    with pytest.raises(SilenceError, match="matchers"):
        Silence.from_request({"matchers": [], "duration": 60}, now_ns=T0)
    with pytest.raises(SilenceError, match="unknown label 'pod'"):
        Silence.from_request({"matchers": [{"name": "pod", "value": "x"}], "duration": 60}, now_ns=T0)
    with pytest.raises(SilenceError, match="regex"):
        Silence.from_request({"matchers": [{"name": "model", "value": "(", "op": "=~"}], "duration": 60}, now_ns=T0)
    with pytest.raises(SilenceError, match="ends_at"):
        Silence.from_request({"matchers": [{"name": "model", "value": "x"}]}, now_ns=T0)
    s = Silence.from_request({"matchers": [{"name": "model", "value": "x"}], "duration": 60}, now_ns=T0)
    assert s.ends_at == T0 + 60 * S and s.to_dict(T0)["state"] == "active"


def test_acknowledgement(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock)
    m.emit([cand()])
    [a] = all_alerts(store)
    acked = m.acknowledge(a.alert_id, "alice", "looking")
    assert acked is not None and acked.status == "acknowledged"
    stored = store.get(a.alert_id)
    assert stored is not None and stored.acknowledged_by == "alice" and stored.acknowledged_at == clock.now
    m.emit([cand()])  # still de-duplicates into the acknowledged alert
    [a2] = all_alerts(store)
    assert a2.count == 2 and a2.status == "acknowledged"
    assert m.acknowledge("no-such-id", "alice") is None
    clock.advance(400)
    m.emit([cand()])  # resolves the stale one, raises a new one
    with pytest.raises(AlertStateError):
        m.acknowledge(a.alert_id, "alice")


def test_storm_is_summarised_into_one_alert(store: SQLiteAlertStore) -> None:
    clock = Clock()
    sink = RecordingSink()
    m = make(store, clock, [sink], storm_max_alerts=3, storm_window_s=60, group_wait_s=0)
    m.emit([cand(service=f"svc-{i}", anomaly_type="error_burst", metric="error_rate", value=0.2, baseline=0.1)
            for i in range(10)])
    assert store.outbox_depth("rec") == 3
    stormed = [a for a in all_alerts(store) if a.storm_id]
    assert len(stormed) == 7 and len({a.storm_id for a in stormed}) == 1
    m.tick()  # window not over yet
    assert store.outbox_depth("rec") == 3
    clock.advance(61)
    m.tick()
    summary = store.get(stormed[0].storm_id or "")
    assert summary is not None and summary.anomaly_type == "alert_storm"
    assert summary.count == 7 and summary.details.value == 7 and len(summary.related_alerts) == 7
    assert summary.context["by_type"] == {"error_burst": 7} and summary.severity == "high"
    assert store.outbox_depth("rec") == 4  # the three alerts, then one summary
    # After the storm, alerts are sent one by one again.
    clock.advance(61)
    m.emit([cand(service="after")])
    assert store.outbox_depth("rec") == 5


def _rows(service: str, t: int) -> WireBatch:
    fb = FeatureBatch(n=2, numeric={"time_unix_nano": np.array([t - S, t], dtype=np.int64)},
                      strings={"service": [service, service]})
    return WireBatch(sidecar="s", seq=1, batch=fb)


def test_alert_resolves_when_traffic_continues_without_detection(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, resolve_after_s=120)
    hub_events: list[str] = []
    m.hub.publish = lambda event, alert: hub_events.append(event)  # type: ignore[method-assign]
    m.emit([cand()])
    clock.advance(60)
    m.emit([cand()])  # still firing: last_seen moves on
    clock.advance(100)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    assert all_alerts(store)[0].status == "open"  # quiet for 100 s only
    clock.advance(30)
    m.consume(_rows("other", T0), arrival_ns=clock.now)  # another service's traffic does not count
    m.tick()
    assert all_alerts(store)[0].status == "open"
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    [a] = all_alerts(store)
    assert a.status == "resolved" and a.resolved_reason and "threshold" in a.resolved_reason
    assert hub_events == ["alert", "update", "resolved"]


def test_single_call_detections_need_a_run(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock)
    one_row = Candidate(anomaly_type="latency_spike", service="chat", model="gpt-4o",
                        detection_method="local_zscore+global_p99", confidence=0.9, metric="latency_ms",
                        value=20000.0, baseline=1500.0, threshold=9000.0, deviation_sigma=5.0,
                        window_start=T0, window_end=T0 + 1, context={"trace_ids": ["cc" * 16]})
    m.emit([one_row])
    clock.advance(5)
    m.emit([one_row])
    assert all_alerts(store) == []
    clock.advance(5)
    m.emit([one_row])
    assert len(all_alerts(store)) == 1


def test_restart_restores_open_alerts(store: SQLiteAlertStore) -> None:
    clock = Clock()
    make(store, clock).emit([cand()])
    m2 = make(store, clock)
    clock.advance(10)
    m2.emit([cand()])
    [a] = all_alerts(store)
    assert a.count == 2


@pytest.mark.parametrize(("anomaly_type", "value", "baseline", "sigma", "confidence", "expected"), [
    ("latency_spike", 3000, 1500, 4.0, 0.95, "medium"),
    ("latency_spike", 9000, 1500, 4.0, 0.95, "high"),  # 6x baseline
    ("latency_spike", 3000, 1500, 7.0, 0.95, "high"),  # 7 sigma
    ("latency_spike", 3000, 1500, 4.0, 0.6, "low"),  # low confidence
    ("error_burst", 0.2, 0.05, math.nan, 0.9, "high"),
    ("error_burst", 0.6, 0.05, math.nan, 0.9, "critical"),
    ("throughput_drop", 10, 100, math.nan, 0.9, "critical"),  # a tenth of the baseline
    ("throughput_drop", 60, 100, math.nan, 0.9, "high"),
    ("budget_exceeded", 110, 100, math.nan, 1.0, "critical"),
    ("multivariate_outlier", 0.7, 0.5, math.nan, 0.9, "low"),
    ("something_new", 1, 1, math.nan, 0.9, "medium"),
])
def test_severity_rules(anomaly_type: str, value: float, baseline: float, sigma: float, confidence: float,
                        expected: str) -> None:
    assert classify(anomaly_type, value=value, baseline=baseline, deviation_sigma=sigma,
                    confidence=confidence) == expected


def test_severity_override_and_config_errors(store: SQLiteAlertStore) -> None:
    assert classify("latency_spike", value=1, baseline=1, deviation_sigma=1, confidence=1,
                    overrides={"latency_spike": "critical"}) == "critical"
    with pytest.raises(ConfigError, match=r"alerts.severity\.latency_spike"):
        AlertManagerConfig(severity={"latency_spike": "urgent"}).validate()
    with pytest.raises(ConfigError, match=r"alerts\.runbook_url_template"):
        AlertManagerConfig(runbook_url_template="{nope}").validate()
    with pytest.raises(ConfigError, match=r"alerts.persistence\.drift"):
        AlertManagerConfig(persistence={"drift": 0}).validate()


def test_store_filters_pagination_and_retention(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, storm_max_alerts=1000, group_by=["..."])  # 25 alerts, one per series
    for i in range(25):
        clock.advance(1)
        m.emit([cand(service=f"s{i % 5}", model=f"m{i}", sigma=7.0 if i % 2 else 1.0)])
    page, total = store.query(AlertQuery(limit=10, offset=20))
    assert total == 25 and len(page) == 5
    high, n_high = store.query(AlertQuery(severity=("high",), service="s1"))
    assert n_high == len(high) > 0 and all(a.severity == "high" and a.service_name == "s1" for a in high)
    newest, _ = store.query(AlertQuery(limit=1))
    assert newest[0].timestamp == clock.now
    assert store.summary(None, None)["total"] == 25
    with pytest.raises(ValueError, match="severity"):
        store.query(AlertQuery(severity=("urgent",)))
    # Retention drops only resolved alerts older than the cut.
    clock.advance(400)
    m.emit([cand(service="s0", model="m0")])  # resolves the stale s0/m0 alert
    assert store.prune(clock.now) == 1


def test_alerts_metric_has_a_bounded_service_label(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, metric_max_services=2, group_wait_s=0)
    for service in ("chat", "search", "billing", "ads"):
        m.emit([cand(service=service)])
    registry = m.metrics.raised._labelnames, m.metrics.raised.collect()[0].samples
    counts = {s.labels["service"]: s.value for s in registry[1] if s.name.endswith("_total")}
    assert registry[0] == ("severity", "anomaly_type", "service")
    assert counts == {"chat": 1.0, "search": 1.0, "(other)": 2.0}


def test_metric_max_services_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"^baselines.max_keys:"):
        AlertManagerConfig(metric_max_services=0).validate()


def test_the_alert_clock_is_scaled_like_the_alert_windows() -> None:
    """Issue 13: at alerts.time_scale 30 a due notification waited for the next once-a-second tick, up to
    30 s of the replayed event time; the tick is divided by the scale too (not below 20 ms)."""
    from aggregator.app import tick_interval_s

    assert tick_interval_s(1.0) == 1.0 and tick_interval_s(30.0) == pytest.approx(1 / 30)
    assert tick_interval_s(1000.0) == 0.02
