"""Several real sidecars forward to a real aggregator: injected incidents become the right
candidates, and the same traffic without incidents produces none.

Traffic is 18 minutes of event time for five (service, model) keys at 4 calls/s each, built as
OTLP spans with exact timestamps and sent over OTLP/HTTP to three sidecars in 5-second rounds (so
every sidecar's rows reach the aggregator in event-time order, well within the detectors'
allowed lateness). Detector windows are shortened (10 s buckets) so the test runs in seconds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from aggregator.app import Aggregator
from sidecar.app import Sidecar
from tests.conftest import AggregatorFactory, SidecarFactory

# Minutes of event time through three sidecars and an aggregator (the system tier, `make test-system`).
pytestmark = pytest.mark.system

S = 10**9
T0 = 1_780_000_000 * S
MINUTES = 18
RATE = 4  # calls per second per key
INCIDENT_AT = 12 * 60  # seconds after T0
ROUND_S = 5

DETECTORS: dict[str, Any] = {
    "cost_cusum": {"bucket_s": 10, "lateness_s": 30, "warmup_buckets": 20},
    "error_burst": {"window_s": 10, "lateness_s": 30},
    "throughput_drop": {"bucket_s": 10, "lateness_s": 30, "warmup_buckets": 20},
    "drift": {"window_s": 120, "lateness_s": 30, "reference_size": 600, "min_count": 200},
    "model_swap": {"min_calls": 50},
}


@dataclass(frozen=True)
class Key:
    sidecar: int
    service: str
    model: str
    response_model: str
    incident: str  # what happens to this key at INCIDENT_AT when incidents are on


KEYS = (
    Key(0, "chat", "gpt-4o", "gpt-4o-2024-08-06", "latency_spike"),
    Key(0, "billing", "gpt-4o", "gpt-4o-2024-08-06", "cost_runaway"),
    Key(1, "search", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "error_burst"),
    Key(1, "summarize", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "throughput_drop"),
    Key(2, "agent", "claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022", "model_swap"),
)

#: The candidate each incident must produce: (anomaly_type, service).
EXPECTED = {
    "latency_spike": "latency_spike",
    "cost_runaway": "cost_anomaly",
    "error_burst": "error_burst",
    "throughput_drop": "throughput_drop",
    "model_swap": "model_swap",
}


def _calls(key: Key, t_from: int, t_to: int, rng: random.Random, incidents: bool) -> list[dict[str, Any]]:
    out = []
    for second in range(t_from, t_to):
        live = incidents and second >= INCIDENT_AT
        n = RATE
        if live and key.incident == "throughput_drop" and second < INCIDENT_AT + 240:
            n = 1 if second % 3 == 0 else 0  # a twelfth of the usual rate
        for i in range(n):
            start = T0 + second * S + i * (S // RATE) + rng.randrange(S // (2 * RATE))
            inp = int(rng.lognormvariate(6.0, 0.3))
            out_tokens = int(rng.lognormvariate(4.5, 0.3))
            latency_ms = (500 + 10 * out_tokens) * rng.lognormvariate(0, 0.1)
            response_model, error = key.response_model, False
            if live and key.incident == "latency_spike" and second < INCIDENT_AT + 60:
                latency_ms *= 20
            if live and key.incident == "cost_runaway" and second < INCIDENT_AT + 180:
                inp *= 15
            if live and key.incident == "error_burst" and second < INCIDENT_AT + 60:
                error = rng.random() < 0.6
            if live and key.incident == "model_swap":
                response_model = "claude-3-haiku-20240307"
                out_tokens *= 3
            out.append({"start": start, "latency_ms": latency_ms, "input": inp, "output": out_tokens,
                        "response_model": response_model, "error": error})
    return out


def _request(key: Key, calls: list[dict[str, Any]], rng: random.Random) -> bytes:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = key.service
    spans = rs.scope_spans.add().spans
    for c in calls:
        span = spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name=f"chat {key.model}",
                         start_time_unix_nano=c["start"],
                         end_time_unix_nano=c["start"] + int(c["latency_ms"] * 1e6))
        for k, v in (("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                     ("gen_ai.request.model", key.model), ("gen_ai.response.model", c["response_model"])):
            span.attributes.add(key=k).value.string_value = v
        if c["error"]:
            span.status.code = Status.STATUS_CODE_ERROR
            span.attributes.add(key="error.type").value.string_value = "APITimeoutError"
        else:
            span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = c["input"]
            span.attributes.add(key="gen_ai.usage.output_tokens").value.int_value = c["output"]
    return req.SerializeToString()


async def _play(agg: Aggregator, sidecars: list[Sidecar], *, incidents: bool) -> list[dict[str, Any]]:
    rng = random.Random(7)
    async with httpx.AsyncClient() as client:
        for t in range(0, MINUTES * 60, ROUND_S):
            for key in KEYS:
                calls = _calls(key, t, t + ROUND_S, rng, incidents)
                if not calls:
                    continue
                sc = sidecars[key.sidecar]
                r = await client.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/traces",
                                      content=_request(key, calls, rng),
                                      headers={"Content-Type": "application/x-protobuf"})
                assert r.status_code == 200, r.text
            for sc in sidecars:
                assert sc.pipeline is not None
                await sc.pipeline.flush()
            for sc in sidecars:
                assert sc.forwarder is not None
                assert await sc.forwarder.drain(10.0)
            await agg.analysis.drain()
    return agg.candidates.recent(limit=10_000)


async def _setup(make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory) -> tuple[Aggregator, list[Sidecar]]:
    # Fixed historic event times (T0) keep the scenario reproducible; they are not "late" for this test.
    agg = await make_aggregator(detectors=DETECTORS, forest={"enabled": False}, late_after_s=10 * 365 * 86400.0)
    sidecars = [await make_sidecar(aggregator_url=agg.url, sidecar_id=f"pod-{i}", batch_max_rows=100_000)
                for i in range(3)]
    return agg, sidecars


@pytest.mark.timeout(240)
async def test_injected_incidents_become_the_right_candidates(
    make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory
) -> None:
    agg, sidecars = await _setup(make_aggregator, make_sidecar)
    found = await _play(agg, sidecars, incidents=True)
    by_service: dict[str, set[str]] = {}
    for c in found:
        by_service.setdefault(c["service"], set()).add(c["anomaly_type"])
    for key in KEYS:
        expected = EXPECTED.get(key.incident)
        if expected is not None:
            assert expected in by_service.get(key.service, set()), (key, by_service)
    # The model swap also shows as drift of the output-token distribution.
    assert "drift" in by_service["agent"]
    # Incidents raise candidates after they start, in event time.
    assert all(c["window_end"] > T0 + INCIDENT_AT * S for c in found), found


@pytest.mark.timeout(240)
async def test_clean_traffic_produces_no_candidate(
    make_aggregator: AggregatorFactory, make_sidecar: SidecarFactory
) -> None:
    agg, sidecars = await _setup(make_aggregator, make_sidecar)
    found = await _play(agg, sidecars, incidents=False)
    assert found == []
    rows = agg.metrics.registry.get_sample_value("sentinel_aggregator_rows_ingested_total")
    assert rows == len(KEYS) * RATE * MINUTES * 60
