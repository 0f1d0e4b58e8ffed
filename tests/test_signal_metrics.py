"""The quality and security counts on /metrics: feedback and evaluation events received, security events
received, operators' approvals and rejections, and the calls the answer-quality detectors counted as hits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sentinel import wire
from sentinel.model import COLUMNS, FeatureBatch
from tests.conftest import serve
from tests.test_security_signals import Hook


def _calls(now_ns: int) -> FeatureBatch:
    """20 calls: 5 stopped by a content filter, 3 at the output limit, 4 empty answers at a normal latency."""
    rows = []
    for i in range(20):
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        reason = "content_filter" if i < 5 else "length" if i < 8 else "stop"
        row.update(time_unix_nano=now_ns - (20 - i) * 1_000_000, service="support", request_model="gpt-4o",
                   latency_ms=900.0, output_tokens=0.0 if 8 <= i < 12 else 200.0, input_tokens=100.0,
                   is_error=False, finish_reason=reason, trace_id=f"t{i}", span_id=f"s{i}")
        rows.append(tuple(row[c] for c in COLUMNS))
    return FeatureBatch.from_rows(rows)


async def _scrape(c: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = (await c.get("/metrics")).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_quality_and_security_counts_are_scraped(make_aggregator: Any) -> None:
    hook = Hook()
    async with serve(hook.app) as port:
        agg = await make_aggregator(grpc_listen="", tokens=["in"], operator_tokens=["op"], viewer_tokens=["v"],
                                    security={"action_webhook_url": f"http://127.0.0.1:{port}/block"})
        ingest, operator = {"Authorization": "Bearer in"}, {"Authorization": "Bearer op"}
        async with httpx.AsyncClient(base_url=agg.url, timeout=10) as c:
            before = await _scrape(c)
            assert before[("sentinel_aggregator_quality_events_total", (("kind", "feedback"),))] == 0
            assert before[("sentinel_aggregator_security_actions_total", (("decision", "approved"),))] == 0
            assert before[("sentinel_aggregator_answer_signals_total", (("signal", "content_filter"),))] == 0

            r = await c.post("/api/v1/feedback", headers=ingest, json={"feedback": [
                {"trace_id": "t1", "label": "thumbs_down", "service": "support"},
                {"trace_id": "t2", "rating": 5, "service": "support"}]})
            assert r.status_code == 202
            now = time.time_ns()
            events = [{"event_id": f"e{i}", "timestamp": now + i, "threat_type": "jailbreak", "severity": "high",
                       "service_name": "support", "user_id": "mallory", "confidence": 0.8,
                       "metadata": {"ip_address": "203.0.113.9"}} for i in range(11)]
            r = await c.post("/api/v1/security-events", headers=ingest, json=events)
            assert r.status_code == 202 and r.json()["accepted"] == 11
            pending = agg.security.actions.list("pending") if agg.security is not None else []
            assert len(pending) >= 2, [a.to_dict() for a in pending]
            r = await c.post(f"/api/v1/security/actions/{pending[0].action_id}/approve", headers=operator)
            assert r.status_code == 200
            r = await c.post(f"/api/v1/security/actions/{pending[1].action_id}/reject", headers=operator)
            assert r.status_code == 200
            body = wire.encode(_calls(now), sidecar="sc-signals", seq=1)
            r = await c.post("/v1/ingest", content=body, headers={**ingest, "Content-Type": wire.CONTENT_TYPE})
            assert r.status_code == 200, r.text

            async def analysed() -> bool:
                return (await _scrape(c)).get(
                    ("sentinel_aggregator_answer_signals_total", (("signal", "content_filter"),))) == 5

            deadline = time.monotonic() + 20
            while not await analysed():
                assert time.monotonic() < deadline, "the batch was not analysed"
                await asyncio.sleep(0.05)
            after = await _scrape(c)
        assert after[("sentinel_aggregator_quality_events_total", (("kind", "feedback"),))] == 2
        assert after[("sentinel_aggregator_quality_events_total", (("kind", "evaluation"),))] == 0
        assert after[("sentinel_aggregator_quality_events_joined_total", ())] == 2  # they name their service
        assert after[("sentinel_aggregator_security_events_total", ())] == 11
        assert after[("sentinel_aggregator_security_actions_total", (("decision", "approved"),))] == 1
        assert after[("sentinel_aggregator_security_actions_total", (("decision", "rejected"),))] == 1
        assert after[("sentinel_aggregator_answer_signals_total", (("signal", "finish_length"),))] == 3
        assert after[("sentinel_aggregator_answer_signals_total", (("signal", "empty_answer"),))] == 4
        assert len(hook.received) == 1  # the approved action only
