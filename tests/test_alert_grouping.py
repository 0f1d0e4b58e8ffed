"""Notification grouping (group_by, group_wait, group_interval, repeat_interval) on a real store
(SQLite and PostgreSQL) with a fake clock: one alert and one notification per group, the breakdown
in its members, pending notifications that survive a restart exactly once, the time scale."""

from __future__ import annotations

import dataclasses
import json

import pytest

from aggregator.alerting.grouping import group_key
from aggregator.alerting.hub import AlertFilter
from aggregator.alerting.silences import Matcher, Silence
from aggregator.alerting.store import AlertQuery, SQLiteAlertStore
from aggregator.analysis.detectors.candidate import Candidate
from sentinel.alerts import Alert, AlertDetails
from sentinel.config import ConfigError
from tests.test_alert_manager import T0, Clock, RecordingSink, _rows, all_alerts, cand, make

S = 1_000_000_000
MODELS = ("gpt-4o", "gpt-4o-mini", "claude")


def drop(model: str, value: float = 3.0, service: str = "chat") -> Candidate:
    return cand(anomaly_type="throughput_drop", service=service, model=model, metric="tokens_per_s", value=value,
                baseline=40.0, threshold=20.0, sigma=-5.0)


@pytest.fixture
def store(any_store: SQLiteAlertStore) -> SQLiteAlertStore:
    """Every test here on both backends."""
    return any_store


def sqlite_only(store: SQLiteAlertStore) -> None:
    if not isinstance(store, SQLiteAlertStore):
        pytest.skip("opens further stores beside it: SQLite files")


def payloads(store: SQLiteAlertStore, sink: str = "rec") -> list[dict[str, object]]:
    return [json.loads(i.payload) for i in store.outbox_pending(sink, 100)]


def test_one_incident_across_models_is_one_alert_and_one_notification(store: SQLiteAlertStore) -> None:
    clock = Clock()
    sink = RecordingSink()
    m = make(store, clock, [sink])
    m.emit([drop("gpt-4o", 2.0)])
    clock.advance(3)
    m.emit([drop("gpt-4o-mini", 5.0), drop("claude", 8.0)])
    [a] = all_alerts(store)
    assert [x.labels["model"] for x in a.members] == list(MODELS)
    assert a.model is None and a.service_name == "chat" and "model" not in a.labels
    assert a.count == 3 and a.details.value == 2.0  # the worst member (critical: a fifth of the baseline) leads
    assert "3 models (gpt-4o, gpt-4o-mini, claude)" in a.summary and "worst gpt-4o" in a.summary
    assert store.outbox_depth("rec") == 0  # group_wait is not over
    clock.advance(7)
    m.tick()
    [p] = payloads(store)
    members = p["members"]
    assert isinstance(members, list) and len(members) == 3 and all(x["notified"] for x in members)
    assert p["alert_id"] == a.alert_id and p["notifications"] == 1 and sink.wakes == 1
    m.tick()  # nothing new: nothing sent
    assert store.outbox_depth("rec") == 1
    # A repeat detection of a member updates it in place: no new member, no new notification.
    clock.advance(5)
    m.emit([drop("claude", 1.0)])
    m.tick()
    [a] = all_alerts(store)
    assert len(a.members) == 3 and a.members[2].count == 2 and a.members[2].peak_value == 1.0
    assert store.outbox_depth("rec") == 1


def test_a_member_joining_later_is_sent_after_group_interval(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    m.emit([drop("gpt-4o")])
    clock.advance(10)
    m.tick()
    [first] = store.outbox_pending("rec", 10)
    clock.advance(20)
    m.emit([drop("claude")])  # joins the open alert: no new alert
    m.tick()
    assert len(all_alerts(store)) == 1 and store.outbox_depth("rec") == 1  # group_interval (60 s) not over
    clock.advance(40)
    m.tick()
    rows = store.outbox_pending("rec", 10)
    assert [r.alert_id for r in rows] == [first.alert_id, f"{first.alert_id}#2"]
    second = json.loads(rows[1].payload)
    assert second["notifications"] == 2 and [x["labels"]["model"] for x in second["members"]] == ["gpt-4o", "claude"]


def test_a_firing_alert_is_sent_again_after_repeat_interval(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()], repeat_interval_s=3600, dedup_window_s=7200)
    m.emit([drop("gpt-4o")])
    clock.advance(10)
    m.tick()
    clock.advance(3599)
    m.tick()
    assert store.outbox_depth("rec") == 1
    clock.advance(1)
    m.tick()
    assert store.outbox_depth("rec") == 2


def test_a_restart_during_group_wait_sends_the_notification_once(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    m.emit([drop("gpt-4o"), drop("claude")])
    del m  # the process dies during group_wait: the pending notification is in the store
    clock.advance(60)
    m2 = make(store, clock, [RecordingSink()])
    m2.emit([drop("gpt-4o-mini")])  # joins the restored alert
    m2.tick()
    [p] = payloads(store)
    assert len(p["members"]) == 3  # type: ignore[arg-type]
    m3 = make(store, clock, [RecordingSink()])  # a restart after the notification: not sent again
    clock.advance(30)
    m3.tick()
    assert store.outbox_depth("rec") == 1


def test_silenced_members_are_left_out_and_an_all_silenced_alert_is_not_sent(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    s = m.add_silence(Silence([Matcher("model", "claude")], starts_at=T0, ends_at=T0 + 3600 * S))
    m.emit([drop("claude")])
    clock.advance(10)
    m.tick()
    [a] = all_alerts(store)
    assert a.silenced_by == s.id and store.outbox_depth("rec") == 0
    m.emit([drop("gpt-4o")])  # an unsilenced member: the alert is sent, with the silenced one marked
    clock.advance(60)
    m.tick()
    [p] = payloads(store)
    assert p["silenced_by"] is None
    by_model = {x["labels"]["model"]: x for x in p["members"]}  # type: ignore[attr-defined]
    assert by_model["claude"]["silenced_by"] == s.id and not by_model["claude"]["notified"]
    assert by_model["gpt-4o"]["notified"]


def test_members_resolve_one_by_one_and_the_alert_with_the_last(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, resolve_after_s=120)
    m.emit([drop("gpt-4o"), drop("claude")])
    clock.advance(100)
    m.emit([drop("claude")])
    clock.advance(30)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    [a] = all_alerts(store)
    assert a.status == "open" and [x.status for x in a.members] == ["resolved", "firing"]
    assert a.details.metric == "tokens_per_s" and a.members[1].labels["model"] == "claude"
    clock.advance(100)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    [a] = all_alerts(store)
    assert a.status == "resolved" and all(x.status == "resolved" for x in a.members)


def test_group_by_choices(store: SQLiteAlertStore) -> None:
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, group_by=[])  # everything in one group
    m.emit([drop("gpt-4o"), cand(service="billing"), cand(anomaly_type="error_burst", metric="error_rate")])
    [a] = all_alerts(store)
    assert len(a.members) == 3 and a.service_name is None and "3 services (chat/throughput_drop" in a.summary
    by_region = make(SQLiteAlertStore(store.path + "-2"), clock, group_by=["service_name", "region"])
    by_region.emit([cand(region="eu"), cand(model="claude", region="eu"), cand(region="us")])
    assert sorted(len(x.members) for x in all_alerts(by_region.store)) == [1, 2]
    with pytest.raises(ConfigError, match=r"alerts\.group_by: unknown label 'pod'"):
        make(store, clock, group_by=["pod"])
    with pytest.raises(ConfigError, match=r"alerts\.group_by"):
        make(store, clock, group_by="service_name")
    with pytest.raises(ConfigError, match=r"alerts\.group_wait_s"):
        make(store, clock, group_wait_s=-1)
    with pytest.raises(ConfigError, match=r"alerts\.group_wait_s: must be shorter than alerts.dedup_window_s"):
        make(store, clock, group_wait_s=600)
    with pytest.raises(ConfigError, match=r"alerts\.time_scale"):
        make(store, clock, time_scale=0)
    # ["..."]: the series' own fingerprint, as without grouping.
    assert group_key(["..."], {"service_name": "x"}, "fp") == "fp"


def test_time_scale_divides_every_window(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, [RecordingSink()], time_scale=10)  # group_wait 1 s, dedup 30 s
    m.emit([drop("gpt-4o")])
    clock.advance(1)
    m.tick()
    assert store.outbox_depth("rec") == 1
    clock.advance(31)
    m.emit([drop("gpt-4o")])  # past the scaled de-duplication window: a new incident
    alerts = all_alerts(store)
    assert sorted(x.status for x in alerts) == ["open", "resolved"]


def test_the_api_filters_find_a_member_model(store: SQLiteAlertStore) -> None:
    m = make(store, Clock())
    m.emit([drop("gpt-4o"), drop("claude")])
    [a] = all_alerts(store)
    assert store.query(AlertQuery(model="claude"))[1] == 1
    assert store.query(AlertQuery(model="gemini"))[1] == 0
    assert AlertFilter(model="claude").matches(a.to_dict()) and not AlertFilter(model="gemini").matches(a.to_dict())


def test_an_alert_stored_before_grouping_is_restored_as_one_member(store: SQLiteAlertStore) -> None:
    clock = Clock()
    store.open()
    old = Alert(alert_id="old-1", timestamp=T0, severity="medium", anomaly_type="latency_spike", service_name="chat",
                model="gpt-4o", detection_method="z_score", confidence=0.9,
                details=AlertDetails("latency_ms", 4000.0, 1500.0, 3000.0, 4.0), fingerprint="series-fp",
                first_seen=T0, last_seen=T0, labels={"service_name": "chat", "model": "gpt-4o", "group": "old-1"})
    store.insert(old, ())
    m = make(store, clock, [RecordingSink()], resolve_after_s=60)
    clock.advance(61)
    m.tick()
    assert store.outbox_depth("rec") == 0  # it was sent when raised
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    restored = store.get("old-1")
    assert restored is not None and restored.status == "resolved" and len(restored.members) == 1


def test_a_full_group_counts_the_series_it_cannot_list(store: SQLiteAlertStore) -> None:
    clock = Clock()
    m = make(store, clock, group_max_members=2, resolve_after_s=60)
    m.emit([cand(user="u-1"), cand(user="u-2"), cand(user="u-3")])
    [a] = all_alerts(store)
    assert [x.labels["user"] for x in a.members] == ["u-1", "u-2"] and a.context["series_left_out"] == 1
    assert "user" not in a.labels and "users (u-1, u-2)" in a.summary
    clock.advance(30)
    m.emit([cand(user="u-2")])
    clock.advance(31)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)  # u-1 resolves: its place goes to the next new series
    m.emit([cand(user="u-4")])
    [a] = all_alerts(store)
    assert [x.labels["user"] for x in a.members] == ["u-2", "u-4"]
    with pytest.raises(ConfigError, match=r"alerts\.group_max_members"):
        make(store, clock, group_max_members=0)


def storm(service: str, provider: str | None = "anthropic", model: str = "claude") -> Candidate:
    extra = {"provider": provider} if provider else {}
    return cand(anomaly_type="error_burst", service=service, model=model, metric="error_rate", value=0.3,
                baseline=0.01, threshold=0.1, sigma=9.0, **extra)


def test_a_provider_wide_error_storm_is_one_alert_with_the_services_inside(store: SQLiteAlertStore) -> None:
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    services = ("chat", "search", "summarize", "review")
    m.emit([storm(s) for s in services])
    m.emit([storm("ledger", provider="openai", model="gpt-4o")])  # another provider: its own alert
    m.emit([storm("x", provider=None), storm("y", provider=None)])  # no provider named: per service
    m.emit([cand(service="chat"), cand(service="search")])  # other types keep per-service groups
    alerts = all_alerts(store)
    bursts = [a for a in alerts if a.anomaly_type == "error_burst"]
    [anthropic] = [a for a in bursts if a.labels.get("provider") == "anthropic"]
    assert sorted(x.labels["service_name"] for x in anthropic.members) == sorted(services)
    assert anthropic.service_name is None and anthropic.model == "claude"
    assert "4 services (chat, search, summarize, review)" in anthropic.summary
    assert sorted(a.service_name or "" for a in bursts if a is not anthropic) == ["ledger", "x", "y"]
    assert sorted(a.service_name or "" for a in alerts if a.anomaly_type == "latency_spike") == ["chat", "search"]
    clock.advance(10)
    m.tick()
    assert store.outbox_depth("rec") == len(alerts) == 6  # one notification for the storm
    # a burst of one service across its providers is one alert too (its series share the service)
    wide = make(SQLiteAlertStore(store.path + "-w"), clock)
    wide.emit([storm("billing", provider="openai", model="gpt-4o"), storm("billing")])
    [one] = all_alerts(wide.store)
    assert one.service_name == "billing" and len(one.members) == 2
    # per service again when the operator says so
    per_service = make(SQLiteAlertStore(store.path + "-2"), clock, group_across={})
    per_service.emit([storm(s) for s in services])
    assert len(all_alerts(per_service.store)) == 4
    # a route per type: group_by_type
    by_provider = make(SQLiteAlertStore(store.path + "-3"), clock, group_by_type={"error_burst": ["provider"]})
    by_provider.emit([storm("a"), storm("b"), storm("c", provider=None)])
    assert sorted(len(a.members) for a in all_alerts(by_provider.store)) == [1, 2]
    with pytest.raises(ConfigError, match=r"alerts.group_by_type\.error_burst: unknown label 'pod'"):
        make(store, clock, group_by_type={"error_burst": ["pod"]})
    with pytest.raises(ConfigError, match=r"alerts\.group_by_type: must be a map"):
        make(store, clock, group_by_type=["provider"])
    with pytest.raises(ConfigError, match=r"alerts.group_across\.error_burst: must name at least one label"):
        make(store, clock, group_across={"error_burst": []})


def test_a_symptom_folds_into_the_alert_that_explains_it(store: SQLiteAlertStore) -> None:
    """fold_into: a tokens/s drop during a latency spike of its service, and a drift during a truncation
    surge, are members of the explaining alert (labelled explained_by), not pages of their own."""
    sqlite_only(store)
    clock = Clock()
    sink = RecordingSink()
    m = make(store, clock, [sink])
    m.emit([cand(model="gpt-4o"), cand(model="claude")])  # latency_spike on chat
    clock.advance(3)
    m.emit([drop("gpt-4o", 2.0), drop("claude", 3.0)])  # critical on their own (a fifth of the baseline)
    m.emit([drop("gpt-4o", 2.0, service="search")])  # another service: nothing explains it
    alerts = all_alerts(store)
    [spike] = [a for a in alerts if a.service_name == "chat"]
    assert spike.anomaly_type == "latency_spike" and spike.severity != "critical"  # the primary leads
    assert [x.labels.get("explained_by") for x in spike.members] == [None, None, "latency_spike", "latency_spike"]
    assert "2 models (gpt-4o, claude)" in spike.summary and "explains throughput drop (2 series)" in spike.summary
    assert spike.labels["anomaly_type"] == "latency_spike"
    assert [a.anomaly_type for a in alerts if a.service_name == "search"] == ["throughput_drop"]
    clock.advance(10)
    m.tick()
    assert [json.loads(i.payload)["anomaly_type"] for i in store.outbox_pending("rec", 10)] == [
        "latency_spike", "throughput_drop"]
    # joining after the notification: context for the next one, no page of its own
    clock.advance(5)
    m.emit([cand("drift", model="gpt-4o", metric="output_tokens", sigma=2.0)])
    clock.advance(120)
    m.tick()
    [spike] = [a for a in all_alerts(store) if a.service_name == "chat"]
    assert spike.members[-1].labels["explained_by"] == "latency_spike" and spike.notifications == 1
    # the other order: a symptom raised first and not sent yet is folded into the primary when it comes
    other = make(SQLiteAlertStore(store.path + "-o"), clock, [RecordingSink()])
    other.emit([drop("gpt-4o", 2.0)])
    clock.advance(2)
    other.emit([cand(model="gpt-4o")])
    alerts = all_alerts(other.store)
    [folded] = [a for a in alerts if a.anomaly_type == "throughput_drop"]
    [primary] = [a for a in alerts if a.anomaly_type == "latency_spike"]
    assert folded.status == "resolved" and folded.notifications == 0 and "folded into" in (folded.resolved_reason or "")
    assert [x.labels.get("explained_by") for x in primary.members] == [None, "latency_spike"]
    assert primary.members[1].status == "firing" and folded.alert_id not in primary.related_alerts
    clock.advance(10)
    other.tick()
    assert [i.alert_id for i in other.store.outbox_pending("rec", 10)] == [primary.alert_id]
    # off when the operator says so
    plain = make(SQLiteAlertStore(store.path + "-p"), clock, fold_into={})
    plain.emit([cand(), drop("gpt-4o")])
    assert len(all_alerts(plain.store)) == 2
    with pytest.raises(ConfigError, match=r"alerts.fold_into\.drift: a type cannot explain itself"):
        make(store, clock, fold_into={"drift": ["drift"]})


def test_a_cause_takes_over_its_symptom_already_sent_and_explains_a_later_drift(store: SQLiteAlertStore) -> None:
    """Empty answers counted after the tokens/s drop they cause was sent: the drop's alert becomes the
    empty_answer alert (one alert, its next notification under the right type). A 15-minute drift whose
    window overlaps a truncation surge alerted and resolved inside it joins that alert, resolved."""
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()], resolve_after_s=60)
    m.emit([drop("gpt-4o", 2.0)])
    clock.advance(10)
    m.tick()  # the drop is sent
    clock.advance(20)
    m.emit([cand("empty_answer", metric="empty_answer_share", value=0.7, baseline=0.01, threshold=0.05, sigma=40.0)])
    m.emit([drop("claude", 2.0)])  # more of the symptom: the same alert
    [a] = all_alerts(store)
    assert a.anomaly_type == "empty_answer" and a.labels["anomaly_type"] == "empty_answer"
    assert [x.labels.get("explained_by") for x in a.members] == ["empty_answer", None, "empty_answer"]
    assert "explains throughput drop (2 series)" in a.summary and "almost no output" in (a.root_cause or "")
    clock.advance(60)
    m.tick()
    sent = [json.loads(i.payload) for i in store.outbox_pending("rec", 10)]
    assert [(p["alert_id"], p["anomaly_type"]) for p in sent] == [(a.alert_id, "throughput_drop"),
                                                                   (a.alert_id, "empty_answer")]
    # a truncation surge alerted at minute 5 and resolved; the drift of minutes 0-15 comes after it
    other = make(SQLiteAlertStore(store.path + "-d"), clock, [RecordingSink()], resolve_after_s=60)
    other.emit([cand("finish_length", metric="finish_length_share", value=0.4, baseline=0.04, threshold=0.1,
                     sigma=20.0, t=T0 + 5 * 60 * S)])
    clock.advance(10)
    other.tick()
    clock.advance(70)
    other.consume(_rows("chat", T0), arrival_ns=clock.now)
    [surge] = all_alerts(other.store)
    assert surge.status == "resolved"
    drift = cand("drift", metric="output_tokens", value=0.3, baseline=0.0, threshold=0.2, sigma=float("nan"))
    other.emit([dataclasses.replace(drift, window_end=T0 + 15 * 60 * S)])
    other.emit([cand("drift", service="search", metric="output_tokens", t=T0)])  # nothing explains it
    clock.advance(10)
    other.tick()
    alerts = all_alerts(other.store)
    [surge] = [a for a in alerts if a.service_name == "chat"]
    assert len(alerts) == 2 and surge.status == "resolved" and surge.notifications == 1
    assert surge.members[-1].labels == {**surge.members[-1].labels, "explained_by": "finish_length",
                                        "anomaly_type": "drift"} and surge.members[-1].status == "resolved"


def test_a_provider_outage_is_one_alert_with_every_service_latency_inside(store: SQLiteAlertStore) -> None:
    """fold_across: an outage times out a provider's calls on every service; their latency spikes are
    members of the provider-wide error burst (explained_by), raised before it (folded in while not
    sent), after it (joining), or sent just before it (taken over); another provider's stays its own."""
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    slow = {s: cand(service=s, model="claude", provider="anthropic") for s in ("chat", "search", "review", "ops")}
    m.emit([slow["chat"], slow["search"]])  # the latency spikes come first
    clock.advance(1)
    m.emit([storm("chat"), storm("search")])  # the burst: folds them in before they are sent
    clock.advance(1)
    m.emit([slow["review"], cand(service="ledger", model="gpt-4o", provider="openai"),
            cand(service="billing", model="claude")])  # the provider's: joins; another provider's, none: their own
    alerts = all_alerts(store)
    [burst] = [a for a in alerts if a.anomaly_type == "error_burst"]
    assert burst.service_name is None and burst.severity == "critical"
    assert sorted((x.labels["service_name"], x.labels["anomaly_type"], x.labels.get("explained_by"))
                  for x in burst.members) == [
        ("chat", "error_burst", None), ("chat", "latency_spike", "error_burst"), ("review", "latency_spike",
                                                                                   "error_burst"),
        ("search", "error_burst", None), ("search", "latency_spike", "error_burst")]
    assert "explains latency spike (3 series)" in burst.summary
    folded = [a for a in alerts if a.anomaly_type == "latency_spike" and a.status == "resolved"]
    assert sorted(a.service_name or "" for a in folded) == ["chat", "search"]
    assert all(a.notifications == 0 for a in folded)
    assert sorted(a.service_name or "" for a in alerts if a.status != "resolved" and a is not burst) == [
        "billing", "ledger"]
    clock.advance(10)
    m.tick()
    sent = [json.loads(i.payload) for i in store.outbox_pending("rec", 10)]
    assert sorted(p["service_name"] or "" for p in sent) == ["", "billing", "ledger"]  # one page for the outage
    clock.advance(5)
    m.emit([slow["review"], slow["chat"]])  # repeats: the members they are
    m.emit([slow["ops"]])  # another service later: rides along, no page of its own
    [burst] = [a for a in all_alerts(store) if a.anomaly_type == "error_burst"]
    assert burst.members[-1].labels["service_name"] == "ops" and len(burst.members) == 6
    assert {x.labels["service_name"]: x.count for x in burst.members if x.labels["anomaly_type"] == "latency_spike"
            } == {"chat": 2, "search": 1, "review": 2, "ops": 1}
    # a latency spike sent just before the burst is raised: the burst takes its alert over (one alert)
    early = make(SQLiteAlertStore(store.path + "-e"), clock, [RecordingSink()])
    early.emit([slow["chat"]])
    clock.advance(10)
    early.tick()
    clock.advance(2)
    early.emit([storm("chat"), storm("search")])
    [one] = all_alerts(early.store)
    assert one.anomaly_type == "error_burst" and len(one.members) == 3
    # off when the operator says so
    plain = make(SQLiteAlertStore(store.path + "-p"), clock, fold_across={})
    plain.emit([storm("chat"), slow["search"]])
    assert len(all_alerts(plain.store)) == 2
    with pytest.raises(ConfigError, match=r"alerts.fold_across\.latency_spike: must be a list"):
        make(store, clock, fold_across={"latency_spike": "error_burst"})


def test_an_abuser_a_campaign_and_a_budget_are_one_alert_each(store: SQLiteAlertStore) -> None:
    """The default fold_into beyond throughput and drift: the token, cost and prompt-size signals of one
    abuser are one alert, taken over by the token abuse that explains them; a campaign's per-user
    bursts ride inside the campaign; a budget's warning inside its being exceeded."""
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    spike = cand("token_spike", model="", metric="total_tokens", value=9e4, baseline=2e3, threshold=1e4, sigma=9.0)
    cost = cand("cost_anomaly", model="", metric="cost_usd", value=9.0, baseline=0.2, threshold=1.0, sigma=9.0)
    m.emit([cost, spike])  # the cost first in the batch: folded into the spike before either is sent
    m.emit([dataclasses.replace(cost, service="search")])  # another service: nothing explains it
    clock.advance(10)
    m.tick()
    clock.advance(2)
    m.emit([cand("expensive_prompt", model="", metric="input_tokens", value=4e5, baseline=2e3, threshold=1e4)])
    m.emit([cand("token_abuse", model="", metric="tokens", value=2e7, baseline=7e4, threshold=1e6, user="u-1")])
    alerts = [a for a in all_alerts(store) if a.status != "resolved"]
    [abuse] = [a for a in alerts if a.service_name == "chat"]
    assert abuse.anomaly_type == "token_abuse" and abuse.notifications == 1
    assert sorted((x.labels["anomaly_type"], x.labels.get("explained_by") or "") for x in abuse.members) == [
        ("cost_anomaly", "token_spike"), ("expensive_prompt", "token_spike"), ("token_abuse", ""),
        ("token_spike", "token_abuse")]
    assert [a.anomaly_type for a in alerts if a.service_name == "search"] == ["cost_anomaly"]
    m.emit([cand("ttft_regression", metric="ttft_ms", region="eu-west-1"), cand()])  # long prompts: slow calls
    [abuse] = [a for a in all_alerts(store) if a.service_name == "chat" and a.status != "resolved"]
    assert [x.labels["explained_by"] for x in abuse.members[-2:]] == ["token_abuse", "token_abuse"]
    assert abuse.anomaly_type == "token_abuse" and abuse.root_cause
    # a campaign, its users' bursts after it; a budget exceeded, its warning after it
    sec = make(SQLiteAlertStore(store.path + "-s"), clock, [RecordingSink()])
    sec.emit([cand("attack_campaign", model="", metric="attack_users", value=5, baseline=0, threshold=3,
                   scope="attack_signature", scope_value="sig")])
    clock.advance(10)
    sec.tick()
    sec.emit([cand("coordinated_attack", model="", metric="security_events", value=11, baseline=0, threshold=5,
                   scope="user", scope_value=f"user-{i}", user=f"user-{i}") for i in range(3)])
    sec.emit([cand("budget_exceeded", model="", metric="cost_usd", value=18, baseline=float("nan"), threshold=15)])
    clock.advance(10)
    sec.tick()
    sec.emit([cand("budget_warning", model="", metric="cost_usd", value=15, baseline=float("nan"), threshold=12)])
    [campaign, budget] = sorted(all_alerts(sec.store), key=lambda a: a.anomaly_type)
    assert campaign.anomaly_type == "attack_campaign" and len(campaign.members) == 4
    assert budget.anomaly_type == "budget_exceeded" and budget.members[-1].labels["explained_by"] == "budget_exceeded"


def test_a_group_firing_again_before_its_next_flush_is_the_same_alert(store: SQLiteAlertStore) -> None:
    """As in Alertmanager, a group lives until group_interval after its last series resolved: a slow drift
    whose first series went quiet just before the next crossed is one alert, its next notification."""
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()], resolve_after_s=60)
    m.emit([cand(model="claude", metric="ttft_ms")])
    clock.advance(10)
    m.tick()
    clock.advance(60)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)  # quiet for resolve_after_s: resolved
    [a] = all_alerts(store)
    assert a.status == "resolved"
    clock.advance(20)
    m.emit([cand(model="gpt-4o-mini")])  # the same group 20 s later: the same alert, open again
    clock.advance(60)
    m.tick()
    [a] = all_alerts(store)
    assert a.status == "open" and a.resolved_at is None and len(a.members) == 2 and a.notifications == 2
    assert [i.alert_id for i in store.outbox_pending("rec", 10)] == [a.alert_id, f"{a.alert_id}#2"]
    # quiet for longer than group_interval after resolving: a new incident, a new alert
    clock.advance(60)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    clock.advance(61)
    m.emit([cand(model="gpt-4o")])
    assert sorted(x.status for x in all_alerts(store)) == ["open", "resolved"]


def test_a_quality_regression_takes_over_the_model_swap_that_brought_it(store: SQLiteAlertStore) -> None:
    """A new model answers worse: the swap (low) was sent first; the regression (high, what users get)
    takes its alert over, the swap inside, the combined root cause; the users' ratings falling then
    ride along."""
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()])
    m.emit([cand("model_swap", metric="response_model", value=28, baseline=0, threshold=1, sigma=float("nan"))])
    clock.advance(10)
    m.tick()
    clock.advance(100)
    m.emit([cand("quality_regression", metric="eval.hallucination", value=0.45, baseline=0.1, threshold=0.2,
                 sigma=50.0)])
    m.emit([cand("satisfaction_drop", metric="satisfaction_rate", value=0.6, baseline=0.9, threshold=0.8,
                 sigma=-6.0)])
    [a] = all_alerts(store)
    assert a.anomaly_type == "quality_regression" and a.severity == "high"
    assert [(x.labels["anomaly_type"], x.labels.get("explained_by")) for x in a.members] == [
        ("model_swap", "quality_regression"), ("quality_regression", None),
        ("satisfaction_drop", "quality_regression")]
    assert "change of model" in (a.root_cause or "")


def test_a_drift_after_a_surge_detected_once_is_inside_it_for_resolve_after_s(store: SQLiteAlertStore) -> None:
    """An alert fires resolve_after_s past its last detection: a drift window opening within that time
    after a once-detected truncation surge is that surge's, one opening later is its own alert."""
    sqlite_only(store)
    clock = Clock()
    m = make(store, clock, [RecordingSink()], resolve_after_s=60)
    m.emit([cand("finish_length", metric="finish_length_share", value=0.4, baseline=0.04, threshold=0.1,
                 sigma=20.0, t=T0 + 5 * 60 * S)])  # event time minutes 5-6
    clock.advance(10)
    m.tick()
    clock.advance(70)
    m.consume(_rows("chat", T0), arrival_ns=clock.now)
    drift = cand("drift", metric="finish_reason", value=0.06, baseline=0.0, threshold=0.05, sigma=float("nan"))
    m.emit([dataclasses.replace(drift, window_start=T0 + 390 * S, window_end=T0 + 1290 * S)])  # from 6.5 min
    [surge] = all_alerts(store)
    assert surge.status == "resolved" and surge.members[-1].labels["anomaly_type"] == "drift"
    later = make(SQLiteAlertStore(store.path + "-l"), clock, resolve_after_s=60)
    later.emit([cand("finish_length", metric="finish_length_share", value=0.4, baseline=0.04, threshold=0.1,
                     sigma=20.0, t=T0 + 5 * 60 * S)])
    clock.advance(70)
    later.consume(_rows("chat", T0), arrival_ns=clock.now)
    later.emit([dataclasses.replace(drift, window_start=T0 + 480 * S, window_end=T0 + 1380 * S)])  # from 8 min
    assert sorted(a.anomaly_type for a in all_alerts(later.store)) == ["drift", "finish_length"]
