"""Bytes in flight across concurrent exports are bounded (issue 15, case 5), on a real in-process sidecar.

16 concurrent 19 MiB protobuf bodies took the sidecar to 488 MiB and one 49 KiB gzip body of
OTLP/JSON (20 MiB of tiny objects) to 429 MiB: each request was bounded, their sum was not.
"""

from __future__ import annotations

import asyncio
import gzip
import random

import grpc
import httpx

from loadtest.spans import build_trace_request
from sidecar.app import Sidecar
from tests.conftest import SidecarFactory

KiB = 1024
PB = {"Content-Type": "application/x-protobuf"}


def _in_flight(sc: Sidecar) -> float:
    return sc.metrics.registry.get_sample_value("sentinel_sidecar_receive_bytes_in_flight") or 0.0


async def _hold(port: int, length: int) -> asyncio.StreamWriter:
    """A request whose headers announce ``length`` bytes and whose body never completes."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
                 f"Content-Length: {length}\r\n\r\n".encode() + b"\0" * 10)
    await writer.drain()
    return writer


async def test_a_request_that_does_not_fit_beside_the_others_gets_503(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(receive_max_bytes_in_flight=1024 * KiB)
    http, grpc_port = sc.ports()["http"], sc.ports()["grpc"]
    body = build_trace_request(20, rng=random.Random(1)).SerializeToString()
    holder = await _hold(http, 900 * KiB)
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while _in_flight(sc) < 900 * KiB:
            assert asyncio.get_running_loop().time() < deadline, "the held request never reserved its bytes"
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient() as c:
            r = await c.post(f"http://127.0.0.1:{http}/v1/traces", content=body, headers=PB)
            assert r.status_code == 200, "a small export still fits beside it"
            big = build_trace_request(600, rng=random.Random(2)).SerializeToString()
            assert len(big) > 124 * KiB
            r = await c.post(f"http://127.0.0.1:{http}/v1/traces", content=big, headers=PB)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            try:
                await call(big)
                raise AssertionError("the gRPC export was taken beyond the budget")
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE and "receive_max_bytes_in_flight" in (e.details() or "")
    finally:
        holder.close()
    deadline = asyncio.get_running_loop().time() + 10
    while _in_flight(sc) != 0:
        assert asyncio.get_running_loop().time() < deadline, "the closed request's bytes were not given back"
        await asyncio.sleep(0.01)
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://127.0.0.1:{http}/v1/traces", content=big, headers=PB)
    assert r.status_code == 200, "accepted once the others are done"


async def test_a_small_gzip_json_body_of_tiny_objects_is_refused_before_decoding(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()  # the defaults: 64 MiB in flight, 20 MiB per body
    text = b'{"resourceSpans":[' + b"{}," * (3 * 1024 * 1024) + b"{}]}"  # 9 MiB of JSON, x8 to decode
    body = gzip.compress(text)
    assert len(body) < 100 * KiB
    async with httpx.AsyncClient() as c:
        r = await c.post(f"http://127.0.0.1:{sc.ports()['http']}/v1/traces", content=body,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    assert r.status_code == 413, r.text
    assert "receive_max_bytes_in_flight" in r.text
    assert _in_flight(sc) == 0
