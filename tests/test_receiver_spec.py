"""The receivers answer as the OTLP specification says, over real gRPC and HTTP connections."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from loadtest.recorder import RecordingAggregator
from loadtest.spans import build_trace_request
from sidecar.app import Sidecar
from tests.conftest import SidecarFactory

DATA = Path(__file__).resolve().parents[1] / "testdata" / "otlp"
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PB = {"Content-Type": "application/x-protobuf"}


def _request_bytes(n: int = 10, seed: int = 1) -> bytes:
    return build_trace_request(n, rng=random.Random(seed)).SerializeToString()


async def _grpc_call(sc: Sidecar, body: bytes, method: str = TRACES) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.ports()['grpc']}") as ch:
        result: bytes = await ch.unary_unary(method)(body, timeout=10)
        return result


def _http(sc: Sidecar) -> str:
    return f"http://127.0.0.1:{sc.ports()['http']}"


async def test_grpc_empty_request_succeeds(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    assert ExportTraceServiceResponse.FromString(await _grpc_call(sc, b"")) == ExportTraceServiceResponse()


async def test_grpc_malformed_is_invalid_argument(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _grpc_call(sc, b"\x0a\xff\xff\xff\xff\x0f garbage")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed ExportTraceServiceRequest" in (e.value.details() or "")


async def test_grpc_truncated_is_invalid_argument(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    body = _request_bytes(5)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _grpc_call(sc, body[: len(body) // 2])
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_grpc_oversized_is_resource_exhausted(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(grpc_max_recv_bytes=64 * 1024)
    body = _request_bytes(400)
    assert len(body) > 64 * 1024
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _grpc_call(sc, body)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_grpc_metrics_and_logs_accepted(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    assert await _grpc_call(sc, b"", "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export") == b""
    assert await _grpc_call(sc, b"", "/opentelemetry.proto.collector.logs.v1.LogsService/Export") == b""


@pytest.mark.parametrize(("path", "name"), [
    ("/v1/traces", "trace.json"), ("/v1/metrics", "metrics.json"),
    ("/v1/logs", "logs.json"), ("/v1/logs", "events.json"),
])
async def test_http_accepts_reference_json_examples(make_sidecar: SidecarFactory, path: str, name: str) -> None:
    sc = await make_sidecar()
    async with httpx.AsyncClient() as c:
        r = await c.post(_http(sc) + path, content=(DATA / name).read_bytes(),
                         headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert isinstance(r.json(), dict)


async def test_http_protobuf_gzip_and_empty(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    async with httpx.AsyncClient() as c:
        r = await c.post(_http(sc) + "/v1/traces", content=gzip.compress(_request_bytes(10)),
                         headers={**PB, "Content-Encoding": "gzip"})
        assert r.status_code == 200
        assert ExportTraceServiceResponse.FromString(r.content) == ExportTraceServiceResponse()
        r = await c.post(_http(sc) + "/v1/traces", content=b"", headers=PB)
        assert r.status_code == 200
    assert sc.metrics.llm_calls._value.get() == 10


@pytest.mark.parametrize(("body", "headers", "status", "needle"), [
    (b"\x0a\xff\xff\xff\xff\x0f garbage", PB, 400, "invalid protobuf"),
    (b"{not json", {"Content-Type": "application/json"}, 400, "invalid JSON"),
    (json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}).encode(),
     {"Content-Type": "application/json"}, 400, "traceId"),
    (b"[" * 100_000 + b"]" * 100_000, {"Content-Type": "application/json"}, 400, "JSON"),
    (gzip.compress(b"abc", mtime=0)[:-6], {**PB, "Content-Encoding": "gzip"}, 400, "truncated"),
    (b"abc", {"Content-Type": "text/plain"}, 415, "Content-Type"),
    (b"abc", {**PB, "Content-Encoding": "br"}, 415, "Content-Encoding"),
])
async def test_http_bad_requests_get_spec_status(
    make_sidecar: SidecarFactory, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    sc = await make_sidecar()
    async with httpx.AsyncClient() as c:
        r = await c.post(_http(sc) + "/v1/traces", content=body, headers=headers)
    assert r.status_code == status, r.text
    ct = r.headers["Content-Type"]
    st = status_pb2.Status()
    if ct.startswith("application/json"):
        st.message = r.json()["message"]
    else:
        st.ParseFromString(r.content)
    assert needle in st.message


async def test_http_oversized_and_decompression_bomb_are_413(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(http_max_body_bytes=1024 * 1024)
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 MiB of zeros in ~50 KiB
    async with httpx.AsyncClient() as c:
        r = await c.post(_http(sc) + "/v1/traces", content=bomb, headers={**PB, "Content-Encoding": "gzip"})
        assert r.status_code == 413
        r = await c.post(_http(sc) + "/v1/traces", content=b"\0" * (2 * 1024 * 1024), headers=PB)
        assert r.status_code == 413
    assert sc.metrics.requests.labels("traces", "http", "too_large")._value.get() == 2


async def test_overload_gets_unavailable_with_retry_hint(
    recorder: RecordingAggregator, make_sidecar: SidecarFactory
) -> None:
    # The aggregator refuses everything, the memory queue holds one batch and there is no spool:
    # the sidecar must refuse new exports rather than grow.
    recorder.status = 503
    recorder.retry_after = "5"
    sc = await make_sidecar(aggregator_url=recorder.url, queue_max_batches=1, batch_max_rows=5)
    async with httpx.AsyncClient() as c:
        first = await c.post(_http(sc) + "/v1/traces", content=_request_bytes(10, seed=0), headers=PB)
        assert sc.queue is not None
        for _ in range(200):  # processing is asynchronous: wait for the batch to be queued
            if sc.queue.memory_batches == 1:
                break
            await asyncio.sleep(0.01)
        responses = [first] + [
            await c.post(_http(sc) + "/v1/traces", content=_request_bytes(10, seed=i), headers=PB)
            for i in (1, 2)
        ]
    assert [r.status_code for r in responses] == [200, 503, 503]
    assert responses[1].headers["Retry-After"].isdigit()
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await _grpc_call(sc, _request_bytes(10))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(e.value)  # type: ignore[arg-type]
    assert status is not None and status.code == code_pb2.UNAVAILABLE
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.seconds >= 1
    # Once the aggregator is back, the queued batch drains and exports are accepted again.
    recorder.status = 200
    assert await recorder.wait_rows(5, timeout_s=10) >= 5
    await _grpc_call(sc, _request_bytes(3))
