"""sentinel.v1.AlertService: a real grpc.aio client through the generated stub against AlertGrpcServer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio
import pytest

from aggregator.alerting.grpc_service import AlertGrpcServer, alert_from_proto, alert_to_proto
from aggregator.alerting.hub import AlertHub
from aggregator.alerting.store import SQLiteAlertStore
from sentinel.alerts import Alert, AlertDetails, AlertMember
from sentinel.v1 import alerts_pb2, alerts_pb2_grpc

T0 = 1_762_432_501_234_000_000  # 2025-11-06T12:35:01.234Z


def make_alert(alert_id: str = "a-1", *, severity: str = "critical", service: str | None = "chat",
               ts: int = T0, **kw: Any) -> Alert:
    return Alert(
        alert_id=alert_id, timestamp=ts, severity=severity, anomaly_type="latency_spike", service_name=service,
        model="gpt-4o", detection_method="ewma_zscore", confidence=0.93,
        details=AlertDetails("latency_ms_p95", 812.5, 240.25, None, 6.1),
        context={"trace_ids": ["t1", "t2"], "region": "eu", "calls": 42, "ratio": 0.5, "nested": {"k": [1, "x"]}},
        remediation=["scale out"], runbook_url="https://runbooks/latency", summary="p95 latency 3.4x baseline",
        fingerprint="fp1", first_seen=ts, last_seen=ts + 60_000_000_000, peak_value=900.0,
        labels={"team": "ml"}, **kw)


Factory = Callable[..., Any]


@pytest.fixture
async def serve(store: SQLiteAlertStore) -> AsyncIterator[Factory]:
    """Start a server (optionally with tokens) and return (hub, stub)."""
    started: list[tuple[AlertGrpcServer, grpc.aio.Channel, AlertHub]] = []

    async def make(tokens: Callable[[str], str | None] | None = None) -> tuple[AlertHub, Any]:
        hub = AlertHub()
        hub.bind(asyncio.get_running_loop())
        server = AlertGrpcServer("127.0.0.1:0", hub, store, tokens)
        await server.start()
        assert server.port > 0
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        started.append((server, channel, hub))
        return hub, alerts_pb2_grpc.AlertServiceStub(channel)

    yield make
    for server, channel, hub in started:
        hub.close()
        await channel.close()
        await server.shutdown()
        await server.shutdown()  # idempotent


async def _until_subscribed(hub: AlertHub, n: int = 1) -> None:
    for _ in range(200):
        if hub.subscribers >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the Watch call never subscribed to the hub")


def test_conversion_round_trip() -> None:
    d = make_alert(acknowledged_by="ann", acknowledged_at=T0 + 5_000_000_000).to_dict()
    msg = alert_to_proto(d)
    # JSON null stays unset, not zero.
    assert not msg.details.HasField("threshold")
    assert msg.details.HasField("value") and msg.details.value == 812.5
    assert not msg.HasField("root_cause") and not msg.HasField("resolved_at")
    assert msg.timestamp.seconds == T0 // 10**9 and msg.timestamp.nanos == 234_000_000
    assert msg.context["trace_ids"][1] == "t2"
    assert msg.labels["team"] == "ml" and list(msg.remediation) == ["scale out"]
    assert alert_from_proto(alerts_pb2.Alert.FromString(msg.SerializeToString())) == d


def test_conversion_of_a_grouped_alert() -> None:
    members = [AlertMember(key=f"fp-{m}", labels={"model": m, "metric": "latency_ms_p95"}, severity=sev,
                           confidence=0.9, details=AlertDetails("latency_ms_p95", 812.5, 240.25, None, None),
                           count=2, first_seen=T0, last_seen=T0 + 1_000_000_000, peak_value=None, status=status,
                           resolved_at=T0 + 2_000_000_000 if status == "resolved" else None,
                           silenced_by="s-1" if m == "claude" else None, notified=m != "claude",
                           trace_ids=["t1"])
               for m, sev, status in (("gpt-4o", "critical", "firing"), ("claude", "high", "resolved"))]
    d = make_alert(members=members, notifications=2, notified_at=T0 + 10_000_000_000,
                   notify_due=T0 + 70_000_000_000).to_dict()
    msg = alert_to_proto(d)
    assert len(msg.members) == 2 and msg.members[1].silenced_by == "s-1" and not msg.members[0].HasField("peak_value")
    assert alert_from_proto(alerts_pb2.Alert.FromString(msg.SerializeToString())) == d


def test_conversion_of_a_sparse_alert() -> None:
    d = make_alert(service=None).to_dict()
    d["details"] = {"metric": "error_rate", "value": None, "baseline": None, "threshold": None,
                    "deviation_sigma": None}
    d["peak_value"] = None
    msg = alert_to_proto(d)
    assert not msg.HasField("service_name") and not msg.HasField("peak_value")
    assert not any(msg.details.HasField(k) for k in ("value", "baseline", "threshold", "deviation_sigma"))
    assert alert_from_proto(msg) == d


async def test_watch_streams_matching_events_only(serve: Factory) -> None:
    hub, stub = await serve()
    call = stub.Watch(alerts_pb2.WatchRequest(severity=["critical", "high"], service="chat"))
    await _until_subscribed(hub)
    hub.publish("alert", make_alert("low-1", severity="low").to_dict())           # severity filtered out
    hub.publish("alert", make_alert("other-1", service="search").to_dict())       # service filtered out
    hub.publish("alert", make_alert("a-1").to_dict())
    hub.publish("resolved", make_alert("a-1", status="resolved", resolved_at=T0 + 1).to_dict())
    first = await asyncio.wait_for(call.read(), 5)
    second = await asyncio.wait_for(call.read(), 5)
    assert (first.event, first.alert.alert_id, first.lagged) == ("alert", "a-1", 0)
    assert (second.event, second.alert.status) == ("resolved", "resolved")
    a = first.alert
    assert a.details.metric == "latency_ms_p95" and not a.details.HasField("threshold")
    assert a.context["region"] == "eu" and a.context["calls"] == 42
    assert a.timestamp.ToNanoseconds() == T0
    call.cancel()
    for _ in range(200):  # the cancelled stream gives its subscription back
        if hub.subscribers == 0:
            break
        await asyncio.sleep(0.01)
    assert hub.subscribers == 0


async def test_watch_ends_when_the_hub_closes(serve: Factory) -> None:
    hub, stub = await serve()
    call = stub.Watch(alerts_pb2.WatchRequest())
    await _until_subscribed(hub)
    hub.close()
    assert await asyncio.wait_for(call.read(), 5) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_shutdown_ends_open_watch_streams(store: SQLiteAlertStore) -> None:
    hub = AlertHub()
    server = AlertGrpcServer("127.0.0.1:0", hub, store, grace_s=0.2)
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = alerts_pb2_grpc.AlertServiceStub(channel).Watch(alerts_pb2.WatchRequest())
        await _until_subscribed(hub)
        await asyncio.wait_for(server.shutdown(), 5)  # the hub is not closed: the grace runs out
        with pytest.raises(grpc.aio.AioRpcError):
            await asyncio.wait_for(call.read(), 5)
    assert hub.subscribers == 0


async def test_invalid_filters_name_the_field(serve: Factory) -> None:
    _, stub = await serve()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ListAlerts(alerts_pb2.ListAlertsRequest(severity=["urgent"]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "severity" in (e.value.details() or "")
    call = stub.Watch(alerts_pb2.WatchRequest(status=["closed"]))
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "status" in (e.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ListAlerts(alerts_pb2.ListAlertsRequest(limit=5000))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in (e.value.details() or "")


async def test_get_and_list_alerts(serve: Factory, store: SQLiteAlertStore) -> None:
    _, stub = await serve()
    for i, sev in enumerate(["critical", "high", "low"]):
        store.insert(make_alert(f"a-{i}", severity=sev, ts=T0 + i * 10**9), sinks=[])
    got = await stub.GetAlert(alerts_pb2.GetAlertRequest(alert_id="a-1"))
    stored = store.get("a-1")
    assert stored is not None and alert_from_proto(got) == stored.to_dict()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.GetAlert(alerts_pb2.GetAlertRequest(alert_id="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND

    page = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(severity=["critical,high"], limit=1))
    assert page.total == 2 and [a.alert_id for a in page.alerts] == ["a-1"]  # newest first
    page = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(severity=["critical", "high"], limit=1, offset=1))
    assert [a.alert_id for a in page.alerts] == ["a-0"]
    everything = await stub.ListAlerts(alerts_pb2.ListAlertsRequest())
    assert everything.total == 3 and len(everything.alerts) == 3
    start = alerts_pb2.ListAlertsRequest().start
    start.FromNanoseconds(T0 + 2 * 10**9)
    later = await stub.ListAlerts(alerts_pb2.ListAlertsRequest(start=start))
    assert [a.alert_id for a in later.alerts] == ["a-2"]


async def test_auth(serve: Factory) -> None:
    roles = {"view-token": "viewer", "ops-token": "operator", "ingest-token": "ingest"}
    hub, stub = await serve(tokens=roles.get)

    def bearer(t: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {t}"),)

    for metadata in ((), bearer("wrong"), (("authorization", "Basic dmlldy10b2tlbg=="),)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ListAlerts(alerts_pb2.ListAlertsRequest(), metadata=metadata)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ListAlerts(alerts_pb2.ListAlertsRequest(), metadata=bearer("ingest-token"))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    call = stub.Watch(alerts_pb2.WatchRequest())
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await call.read()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert hub.subscribers == 0

    assert (await stub.ListAlerts(alerts_pb2.ListAlertsRequest(), metadata=bearer("view-token"))).total == 0
    call = stub.Watch(alerts_pb2.WatchRequest(), metadata=bearer("ops-token"))
    await _until_subscribed(hub)
    hub.publish("alert", make_alert().to_dict())
    assert (await asyncio.wait_for(call.read(), 5)).alert.alert_id == "a-1"
    call.cancel()


async def test_a_port_in_use_is_an_error(serve: Factory, store: SQLiteAlertStore) -> None:
    first = AlertGrpcServer("127.0.0.1:0", AlertHub(), store)
    await first.start()
    try:
        with pytest.raises(OSError, match="cannot listen"):
            await AlertGrpcServer(f"127.0.0.1:{first.port}", AlertHub(), store).start()
    finally:
        await first.shutdown()
