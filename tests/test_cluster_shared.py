"""What the replicas of a cluster share beyond the partitions' rows (aggregator/cluster/): quality and
security analysis per partition, fed by sidecar batches, the API and the security queue; the services
and baselines every replica answers for the whole cluster; live settings that reach every replica.
Real PostgreSQL and RabbitMQ (cluster_settings of tests/test_cluster.py), two replicas in one process."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from aggregator.alerting.store import AlertQuery
from aggregator.analysis.baselines.store import BaselineConfig
from aggregator.analysis.detectors.consumer import DetectorConsumer
from aggregator.analysis.pipeline import innermost
from aggregator.analysis.quality.consumer import QualityConsumer
from aggregator.analysis.security.consumer import SecurityConsumer
from aggregator.app import Aggregator
from aggregator.cluster.partition import partition_of, quality_parts, split
from sentinel import wire
from sentinel.model import FeatureBatch
from sentinel.quality import QualityEvent
from tests.conftest import serve, wait_for
from tests.test_cluster import T0, _replica, cluster_settings  # noqa: F401  (the fixture)
from tests.test_event_time import MSGPACK, _rows
from tests.test_quality_detectors import NS
from tests.test_quality_detectors import T0 as Q0
from tests.test_quality_detectors import rows as quality_rows
from tests.test_security_signals import Hook, ev


def test_a_quality_event_goes_with_its_service_or_its_calls_or_to_every_partition() -> None:
    calls = quality_rows(0, 3, rng=np.random.default_rng(0))  # service "support", span ids s0-0..s0-2
    named = QualityEvent(kind="evaluation", name="x", time_unix_nano=1, score=0.1, service="chat")
    by_span = QualityEvent(kind="evaluation", name="x", time_unix_nano=1, score=0.1, span_id="s0-1")
    by_trace = QualityEvent(kind="feedback", name="thumbs", time_unix_nano=1, score=1.0, trace_id="t0-2")
    unknown = QualityEvent(kind="feedback", name="thumbs", time_unix_nano=1, score=1.0, trace_id="elsewhere")
    parts = quality_parts([named, by_span, by_trace, unknown], calls, 8)
    assert parts[partition_of("chat", 8)][0] is named
    assert [e for e in parts[partition_of("support", 8)] if e is not unknown] == [by_span, by_trace]
    assert all(unknown in events for events in parts.values()) and len(parts) == 8
    bodies = split(wire.WireBatch("s1", 1, calls, quality=[by_span]), 8)
    assert list(bodies) == [partition_of("support", 8)]  # the event and its call's row in one body


def _alerts(agg: Aggregator, anomaly_type: str) -> list[Any]:
    return [a for a in agg.alert_store.query(AlertQuery(anomaly_type=anomaly_type))[0]]


def _owner(replicas: list[Aggregator], service: str, partitions: int) -> Aggregator:
    p = partition_of(service, partitions)
    return next(r for r in replicas if r.cluster is not None and p in r.cluster.owned)


async def test_quality_and_security_run_in_the_partitions(
        tmp_path: Path, cluster_settings: dict[str, Any]) -> None:  # noqa: F811
    hook = Hook()
    async with serve(hook.app) as port:
        await _quality_and_security(tmp_path, cluster_settings, hook, f"http://127.0.0.1:{port}/block")


async def _quality_and_security(tmp_path: Path, base: dict[str, Any], hook: Hook, url: str) -> None:
    settings = {**base, "security": {"max_events": 2, "action_webhook_url": url},
                "quality": {"evaluations": {"min_events": 5, "warmup_buckets": 3}}}
    a = await _replica(tmp_path, "a", settings)
    b = await _replica(tmp_path, "b", settings)
    n = settings["cluster"].partitions
    try:
        await wait_for(lambda: len(a.cluster.owned) == 4 and len(b.cluster.owned) == 4,  # type: ignore[union-attr]
                       timeout=20, what="partitions spread 4/4")
        rng = np.random.default_rng(7)
        async with httpx.AsyncClient(timeout=30) as client:
            # Sidecar batches: calls of "support" and evaluations naming only their span (joined in the
            # partition of "support"), and guardrail events of one user of "chat".
            for m in range(12):
                mean = 0.1 if m < 8 else 0.6
                events = [QualityEvent(kind="evaluation", name="hallucination",
                                       score=float(np.clip(rng.normal(mean, 0.05), 0, 1)), span_id=f"s{m}-{i}",
                                       time_unix_nano=Q0 + m * 60 * NS + i * NS) for i in range(20)]
                body = wire.encode(quality_rows(m, 20, rng=rng), sidecar="s1", seq=m, quality=events,
                                   security=[ev(m, user="mallory")] if m < 3 else [])
                r = await client.post((a if m % 2 else b).url + "/v1/ingest", content=body, headers=MSGPACK)
                assert r.status_code == 200, r.text
            # The API and the replica that is not the service's owner: published to the partition.
            api_events = [{"event_id": f"e{i}", "timestamp": T0 / 1e9 + i, "threat_type": "prompt_injection",
                           "service_name": "search", "user_id": "trudy", "confidence": 0.8} for i in range(3)]
            other = next(r for r in (a, b) if r is not _owner([a, b], "search", n))
            r = await client.post(other.url + "/api/v1/security-events", json=api_events)
            assert r.status_code == 202 and r.json()["accepted"] == 3, r.text
            feedback = [{"trace_id": "t11-3", "score": 0.0, "name": "thumbs"}]  # joins only where its call is
            r = await client.post(other.url + "/api/v1/feedback", json={"feedback": feedback})
            assert r.status_code == 202, r.text
        # Both attacks (chat, search) and the regression: raised by different partitions, in any order.
        await wait_for(lambda: {(a.anomaly_type, a.service_name) for a in a.alert_store.query(AlertQuery())[0]}
                       >= {("coordinated_attack", "chat"), ("coordinated_attack", "search"),
                           ("quality_regression", "support")}, timeout=30,
                       what="quality and security alerts from the partitions")
        attacks = _alerts(a, "coordinated_attack")
        assert {x.service_name for x in attacks} == {"chat", "search"}
        regression = _alerts(a, "quality_regression")[0]
        assert (regression.service_name, regression.model) == ("support", "gpt-4o")
        owner = _owner([a, b], "support", n)
        quality = [c for p in owner.cluster.partitions() for c in p.consumers  # type: ignore[union-attr]
                   if isinstance(c, QualityConsumer) and c.received["evaluation"]]
        assert len(quality) == 1 and quality[0].joined >= 240
        await wait_for(lambda: quality[0].received["feedback"] == 1, timeout=10, what="the feedback joined")
        security = [c for r in (a, b) for p in r.cluster.partitions() for c in p.consumers  # type: ignore[union-attr]
                    if isinstance(c, SecurityConsumer) and c.received]
        assert sorted(c.received for c in security) == [3, 3]
        # The block requests of both attacks, pending at both replicas (PostgreSQL), whichever raised them;
        # approved at the replica that does not own "chat", sent once.
        async with httpx.AsyncClient(timeout=10) as client:
            pending = [r.security.actions.list for r in (a, b) if r.security is not None]
            await wait_for(lambda: all(len(p("pending")) == 2 for p in pending), timeout=10, what="both actions")
            listed = [(await client.get(r.url + "/api/v1/security/actions?status=pending")).json()["actions"]
                      for r in (a, b)]
            assert listed[0] == listed[1] and {x["subject"] for x in listed[0]} == {"mallory", "trudy"}, listed
            chat = next(x for x in listed[0] if x["subject"] == "mallory")
            other = next(r for r in (a, b) if r is not _owner([a, b], "chat", n))
            r = await client.post(other.url + f"/api/v1/security/actions/{chat['action_id']}/approve")
            assert r.status_code == 200 and r.json()["status"] == "sent", r.text
            owner_url = _owner([a, b], "chat", n).url
            r = await client.post(owner_url + f"/api/v1/security/actions/{chat['action_id']}/reject")
            assert r.status_code == 409 and "already decided by anonymous" in r.json()["error"], r.text
        assert [x["action_id"] for x in hook.received] == [chat["action_id"]]
    finally:
        await b.shutdown()
        await a.shutdown()
    await asyncio.sleep(0)


async def test_every_replica_answers_services_and_baselines_for_the_whole_cluster(
        tmp_path: Path, cluster_settings: dict[str, Any]) -> None:  # noqa: F811
    settings = {**cluster_settings, "baselines": BaselineConfig(seasonality=True)}
    a = await _replica(tmp_path, "a", settings)
    b = await _replica(tmp_path, "b", settings)
    try:
        await wait_for(lambda: len(a.cluster.owned) == 4 and len(b.cluster.owned) == 4,  # type: ignore[union-attr]
                       timeout=20, what="partitions spread 4/4")
        # Two services analysed by each replica.
        names = [f"svc-{i}" for i in range(50)]
        services = sorted([n for n in names if partition_of(n, 8) in a.cluster.owned][:2]  # type: ignore[union-attr]
                          + [n for n in names if partition_of(n, 8) in b.cluster.owned][:2])  # type: ignore[union-attr]
        async with httpx.AsyncClient(timeout=30) as client:
            for seq in range(10):
                rows = [r for s in services for r in _rows(s, T0 + seq * 10**9, 5, 1)]
                body = wire.encode(FeatureBatch.from_rows(rows), sidecar="s1", seq=seq)
                r = await client.post((a, b)[seq % 2].url + "/v1/ingest", content=body, headers=MSGPACK)
                assert r.status_code == 200, r.text

            async def listed(replica: Aggregator) -> dict[str, int]:
                doc = (await client.get(replica.url + "/api/v1/services")).json()
                return {s["service"]: s["calls"] for s in doc["services"]}

            for replica in (a, b):
                for _ in range(100):
                    if await listed(replica) == dict.fromkeys(services, 50):
                        break
                    await asyncio.sleep(0.1)
                assert await listed(replica) == dict.fromkeys(services, 50)
            docs = [(await client.get(r.url + "/api/v1/baselines?region=global")).json() for r in (a, b)]
            assert docs[0] == docs[1] and docs[0]["count"] == 4
            assert [i["service"] for i in docs[0]["baselines"]] == services
            assert all(i["calls"] == 50 and i["errors"] == 10 for i in docs[0]["baselines"])
            health = (await client.get(b.url + f"/api/v1/services/{services[0]}/health")).json()
            assert health["calls"] == 50 and health["baseline"]["latency_ms_p50"] is not None
            # Beyond the summaries: a range of the series, seasonal baselines, one metric's baselines.
            series = (await client.get(a.url + f"/api/v1/services/{services[-1]}/series?start={T0 // 10**9 - 60}"
                                                f"&end={T0 // 10**9 + 120}")).json()
            assert sum(p["calls"] for p in series["points"]) == 50
            hour = docs[0]["baselines"][0]
            seasonal = [(await client.get(r.url + "/api/v1/baselines?region=global&hour="
                                          f"{_hour_of_week(T0)}")).json() for r in (a, b)]
            assert seasonal[0] == seasonal[1] and seasonal[0]["count"] == 4, (hour, seasonal)
            latency = (await client.get(b.url + "/api/v1/baselines/latency_ms?region=global")).json()
            assert latency["count"] == 4 and {i["service"] for i in latency["baselines"]} == set(services)
    finally:
        await b.shutdown()
        await a.shutdown()


def _hour_of_week(t_ns: int) -> int:
    from aggregator.analysis.baselines.store import hour_of_week

    return int(hour_of_week(np.array([t_ns], dtype=np.int64))[0])


def _detector_configs(agg: Aggregator) -> list[Any]:
    """The budget settings each owned partition's detectors run with."""
    return [innermost(c)._configs["budget"] for p in agg.cluster.partitions()  # type: ignore[union-attr]
            for c in p.consumers if isinstance(innermost(c), DetectorConsumer)]


async def test_a_live_change_at_one_replica_reaches_every_replica_and_their_partitions(
        tmp_path: Path, cluster_settings: dict[str, Any]) -> None:  # noqa: F811
    a = await _replica(tmp_path, "a", cluster_settings)
    b = await _replica(tmp_path, "b", cluster_settings)
    c: Aggregator | None = None
    try:
        await wait_for(lambda: len(a.cluster.owned) == 4 and len(b.cluster.owned) == 4,  # type: ignore[union-attr]
                       timeout=20, what="partitions spread 4/4")
        assert a.config_version == b.config_version == 1  # the first replica's start; b took it over
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.put(a.url + "/api/v1/config", json={"settings": {
                "alerts": {"min_confidence": 0.8},
                "detectors": {"budget": {"limits": {"service": {"hour": 2.5}}}}}, "comment": "tighter"})
            assert r.status_code == 200 and r.json()["version"] == 2, r.text
            await wait_for(lambda: b.config_version == 2, timeout=10, what="b follows version 2")
            for replica in (a, b):
                doc = (await client.get(replica.url + "/api/v1/config")).json()
                assert doc["version"] == 2 and doc["settings"]["alerts.min_confidence"] == 0.8
                assert replica.alerts.config.min_confidence == 0.8
                budgets = _detector_configs(replica)
                assert len(budgets) == 4 and {str(x.limits) for x in budgets} == {str(budgets[0].limits)}
                assert "2.5" in str(budgets[0].limits)
            history = (await client.get(b.url + "/api/v1/config/history")).json()
            assert [v["version"] for v in history["versions"]] == [2, 1]  # followed, not versioned again
            # A replica starting with the old settings file takes the cluster's version, and does not undo it.
            c = await _replica(tmp_path, "c", cluster_settings)
            assert c.config_version == 2 and c.alerts.config.min_confidence == 0.8
            assert (await client.get(c.url + "/api/v1/config/history")).json()["versions"][0]["version"] == 2
            # A rollback at the new replica: a version the others follow.
            r = await client.post(c.url + "/api/v1/config/rollback", json={"version": 1})
            assert r.status_code == 200 and r.json()["version"] == 3, r.text
            await wait_for(lambda: a.config_version == b.config_version == 3, timeout=10, what="all at version 3")
            assert a.alerts.config.min_confidence == b.alerts.config.min_confidence == 0.5
    finally:
        for x in (c, b, a):
            if x is not None:
                await x.shutdown()
