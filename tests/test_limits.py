"""Every limit holds: too-large, too-deep, too-many and too-slow input is refused with the documented
status, within bounded memory and time.

In-process servers on loopback (the ``make_sidecar``/``make_aggregator`` fixtures, a plain-HTTP
webhook); memory is the tracemalloc peak of the exchange (Python allocations of client and server,
which is where a body would be buffered). gRPC buffers in C, out of tracemalloc's sight: those tests
check the status and that the call never reached the pipeline.

Already covered elsewhere, not repeated: a 50 MiB gzip bomb and a 2 MiB body to the sidecar's
OTLP/HTTP (tests/test_receiver_spec.py), an oversized and a chunked ingest body (test_aggregator_ingest.py),
100,000-deep JSON arrays as an OTLP/JSON body (test_receiver_spec.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
import grpc.aio
import httpx
import msgpack
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sentinel import service, wire
from sentinel.model import FeatureBatch
from sidecar import extract
from sidecar.app import Sidecar
from sidecar.extract import ExtractConfig, Extractor
from sidecar.otlp_lite import parse_traces
from tests.conftest import AggregatorFactory, SidecarFactory, wait_for
from webhook_injector.server import WebhookServer
from webhook_injector.settings import InjectorSettings

MiB = 1024 * 1024
TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
PB = {"Content-Type": "application/x-protobuf"}
JSON_CT = {"Content-Type": "application/json"}
INGEST, ADMIN = "ingest-token", "admin-token"
MSGPACK = {"Content-Type": wire.CONTENT_TYPE, "Authorization": f"Bearer {INGEST}"}
API = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN}"}
#: ~64 KiB that inflates to 64 MiB of spaces (valid as leading JSON whitespace, too).
GZIP_BOMB = gzip.compress(b" " * (64 * MiB), 9)


@contextlib.contextmanager
def peak_mib() -> Iterator[Callable[[], float]]:
    """Traces Python allocations in the block; the callable gives their peak above the start, in MiB."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        peak = [0.0]
        yield lambda: peak[0]
        peak[0] = (tracemalloc.get_traced_memory()[1] - base) / MiB
    finally:
        tracemalloc.stop()


async def chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """``total`` bytes of zeros, streamed (no Content-Length, so the server cannot refuse up front)."""
    block = b"\0" * size
    for _ in range(total // size):
        yield block


def _http(sc: Sidecar) -> str:
    return f"http://127.0.0.1:{sc.ports()['http']}"


async def _aggregator(make_aggregator: AggregatorFactory, **overrides: Any) -> Any:
    return await make_aggregator(tokens=[INGEST], admin_tokens=[ADMIN], **overrides)


def _span_request(attributes: int, *, wanted: bool = False) -> bytes:
    """One LLM-call span with ``attributes`` extra attributes (all distinct; with ``wanted``, all of them
    ``gen_ai.request.model``, a key the extractor decodes)."""
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_500_000_000)
    span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    span.attributes.add(key="gen_ai.usage.output_tokens").value.int_value = 10
    for i in range(attributes):
        kv = span.attributes.add(key="gen_ai.request.model" if wanted else f"app.attribute.{i}")
        kv.value.string_value = f"value-{i}"
    return req.SerializeToString()


# --- oversized bodies -----------------------------------------------------------------------------


async def test_sidecar_http_streamed_body_over_the_limit_is_413_in_bounded_memory(
        make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(http_max_body_bytes=MiB)
    async with httpx.AsyncClient(timeout=30) as c:
        with peak_mib() as peak:
            r = await c.post(_http(sc) + "/v1/traces", content=chunks(64 * MiB), headers=PB)
    assert r.status_code == 413
    assert peak() < 4, peak()  # the 1 MiB limit and a few chunks, not 64 MiB


async def test_sidecar_grpc_message_over_the_default_limit_is_resource_exhausted(
        make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()  # grpc_max_recv_bytes: 4 MiB
    body = _span_request(250_000)
    assert len(body) > 4 * MiB
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.ports()['grpc']}",
                                         options=[("grpc.max_send_message_length", -1)]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary(TRACES)(body, timeout=30)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert sc.metrics.spans_received._value.get() == 0  # never reached the pipeline


async def test_aggregator_ingest_refuses_streamed_oversize_and_compressed_bodies(
        make_aggregator: AggregatorFactory) -> None:
    agg = await _aggregator(make_aggregator, max_body_bytes=MiB)
    deflate_bomb = zlib.compress(b"\0" * (64 * MiB), 9)
    async with httpx.AsyncClient(base_url=agg.url, timeout=30) as c:
        with peak_mib() as peak:
            streamed = await c.post("/v1/ingest", content=chunks(64 * MiB), headers=MSGPACK)
            inflated = await c.post("/v1/ingest", content=GZIP_BOMB, headers={**MSGPACK, "Content-Encoding": "gzip"})
            deflated = await c.post("/v1/ingest", content=deflate_bomb,
                                    headers={**MSGPACK, "Content-Encoding": "deflate"})
    assert streamed.status_code == 413 and "max_body_bytes" in streamed.json()["error"]
    # Bodies are never inflated (aiohttp's inflation would buffer ~10x the limit first): 415.
    for r in (inflated, deflated):
        assert r.status_code == 415, r.text
        assert "Content-Encoding" in r.json()["error"]
    assert peak() < 4, peak()
    assert agg.metrics.batches_received.labels("unsupported")._value.get() == 2


async def test_api_json_bodies_are_at_most_1_mib(make_aggregator: AggregatorFactory) -> None:
    agg = await _aggregator(make_aggregator)  # max_body_bytes stays 32 MiB: the API's own bound is smaller
    silence = {"matchers": [{"name": "service_name", "value": "x" * 100}] * 12_000, "duration": 60}
    body = json.dumps(silence).encode()
    assert MiB < len(body) < 2 * MiB
    async with httpx.AsyncClient(base_url=agg.url, timeout=30) as c:
        with peak_mib() as peak:
            sized = await c.post("/api/v1/silences", content=body, headers=API)
            streamed = await c.post("/api/v1/silences", content=chunks(64 * MiB), headers=API)
            bomb = await c.post("/api/v1/alerts/x/ack", content=GZIP_BOMB, headers={**API, "Content-Encoding": "gzip"})
            streamed_ack = await c.post("/api/v1/alerts/x/ack", content=chunks(64 * MiB), headers=API)
        small = await c.post("/api/v1/silences", content=json.dumps({**silence, "matchers": silence["matchers"][:5]}),
                             headers=API)
    for r in (sized, streamed, streamed_ack):
        assert r.status_code == 413, r.text
        assert r.json() == {"status": "error", "error": f"body: larger than {MiB} bytes"}
    assert bomb.status_code == 415 and bomb.json()["status"] == "error"
    assert peak() < 6, peak()
    assert small.status_code == 201


async def test_webhook_bodies_are_bounded_and_never_inflated() -> None:
    async with _webhook() as url, httpx.AsyncClient(timeout=30) as c:
        with peak_mib() as peak:
            bomb = await c.post(url + "/mutate", content=GZIP_BOMB, headers={**JSON_CT, "Content-Encoding": "gzip"})
            streamed = await c.post(url + "/mutate", content=chunks(64 * MiB), headers=JSON_CT)
    # Compressed: not JSON to the webhook, so the pod is allowed unchanged (fail open).
    assert bomb.status_code == 200 and bomb.json()["response"]["allowed"] is True
    assert streamed.status_code == 413  # over its 8 MiB limit (an AdmissionReview is at most ~1.5 MiB)
    assert peak() < 20, peak()


# --- decompression bombs the existing tests do not cover ------------------------------------------


async def test_sidecar_deflate_and_multi_member_gzip_bombs_are_413(make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar(http_max_body_bytes=MiB)
    deflate_bomb = zlib.compress(b"\0" * (64 * MiB), 9)
    members = gzip.compress(b"\0" * (MiB // 2)) * 8  # each member is under the limit, together they are not
    nested_bomb = gzip.compress(GZIP_BOMB)
    async with httpx.AsyncClient(timeout=30) as c:
        with peak_mib() as peak:
            deflate = await c.post(_http(sc) + "/v1/traces", content=deflate_bomb,
                                   headers={**PB, "Content-Encoding": "deflate"})
            multi = await c.post(_http(sc) + "/v1/traces", content=members, headers={**PB, "Content-Encoding": "gzip"})
        nested = await c.post(_http(sc) + "/v1/traces", content=nested_bomb, headers={**PB, "Content-Encoding": "gzip"})
    assert (deflate.status_code, multi.status_code) == (413, 413)
    assert peak() < 8, peak()
    # A gzip inside the gzip is inflated once only, and the rest is not protobuf.
    assert nested.status_code == 400


# --- deeply nested input --------------------------------------------------------------------------


def _nested_otlp_json(depth: int, kind: str) -> bytes:
    """An OTLP/JSON trace whose gen_ai.request.model value is ``depth`` arrays (or kvlists) deep, as text
    (json.dumps would itself hit the recursion limit)."""
    leaf = '{"stringValue": "gpt-4o"}'
    if kind == "array":
        value = '{"arrayValue": {"values": [' * depth + leaf + "]}}" * depth
    else:
        value = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth + leaf + "}]}}" * depth
    return ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "' + "ab" * 16 + '", "spanId": "' + "cd" * 8
            + '", "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}, '
            + '{"key": "gen_ai.request.model", "value": ' + value + "}]}]}]}]}").encode()


@pytest.mark.parametrize("kind", ["array", "kvlist"])
async def test_sidecar_otlp_json_nested_10000_deep_is_400(make_sidecar: SidecarFactory, kind: str) -> None:
    sc = await make_sidecar()
    async with httpx.AsyncClient(timeout=30) as c:
        for depth in (10, 60, 200, 990, 10_000):
            r = await c.post(_http(sc) + "/v1/traces", content=_nested_otlp_json(depth, kind), headers=JSON_CT)
            # Shallow nesting is a valid request (the attribute is just not a model name); deeper is refused.
            assert r.status_code == (200 if depth < 60 else 400), (depth, r.text)
            if r.status_code == 400:
                assert "nested too deeply" in r.json()["message"] or "Failed to parse" in r.json()["message"]
        ok = await c.post(_http(sc) + "/v1/traces", content=_nested_otlp_json(1, kind), headers=JSON_CT)
    assert ok.status_code == 200


async def test_api_post_bodies_nested_10000_deep_are_400(make_aggregator: AggregatorFactory) -> None:
    agg = await _aggregator(make_aggregator)
    deep = b"[" * 10_000 + b"]" * 10_000
    deep_object = b'{"matchers": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"}"
    async with httpx.AsyncClient(base_url=agg.url, timeout=30) as c:
        for path, body in (("/api/v1/silences", deep), ("/api/v1/silences", deep_object),
                           ("/api/v1/alerts/x/ack", deep), ("/api/v1/silences", b"\xff\xfe{}")):
            r = await c.post(path, content=body, headers=API)
            assert r.status_code == 400, (path, r.text)
            assert r.json()["error"].startswith("body: ")


# --- huge attribute counts ------------------------------------------------------------------------


async def test_span_with_100000_attributes_is_handled_in_bounded_time_and_memory(
        make_sidecar: SidecarFactory) -> None:
    sc = await make_sidecar()
    body = _span_request(100_000)
    assert len(body) < 4 * MiB  # under the gRPC limit: it is accepted and processed
    # Bounded time: each call's own 30 s deadline (a figure, not a tight bound: timings are benchmarks').
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sc.ports()['grpc']}") as ch:
        await ch.unary_unary(TRACES)(body, timeout=30)
    async with httpx.AsyncClient(timeout=30) as c:
        assert (await c.post(_http(sc) + "/v1/traces", content=body, headers=PB)).status_code == 200
    await wait_for(lambda: sc.metrics.llm_calls._value.get() == 2, what="both spans extracted")

    extractor = Extractor(ExtractConfig())
    with peak_mib() as peak:
        assert extractor.extract(parse_traces(body)).llm_calls == 1
    assert peak() < 16, peak()
    # 100,000 distinct values of a key the extractor decodes: each is a cache miss, yet the attribute
    # cache and its doorkeeper stay within their documented bound (tracemalloc would slow this 50-fold).
    result = extractor.extract(parse_traces(_span_request(100_000, wanted=True)))
    assert len(extractor._attr_cache) <= extract._ATTR_CACHE_MAX
    assert len(extractor._attr_seen_once) <= extract._ATTR_CACHE_MAX
    assert result.rows[0][7] == "value-0"  # of 100,000 values for one key, the first wins


# --- slow clients ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _webhook() -> AsyncIterator[str]:
    server = WebhookServer(InjectorSettings(listen="127.0.0.1:0"))
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.shutdown()


async def _dribble_body(port: int, path: str, headers: dict[str, str]) -> tuple[float, bytes, float]:
    """Send headers announcing a 1 MiB body, then one byte every 50 ms; (seconds to the answer, the
    answer's status line, seconds to the connection's close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {MiB}\r\n\r\n".encode())
    started = time.monotonic()

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"\0")
                await writer.drain()
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(dribble())
    try:
        status = await asyncio.wait_for(reader.readline(), 20)
        answered = time.monotonic() - started
        # The rest of the answer, then the close: EOF, or a reset when the server closed while our
        # dribbled bytes were still in flight (the kernel answers those with RST). Both are a close.
        with contextlib.suppress(ConnectionResetError):
            while await asyncio.wait_for(reader.read(65536), 20):
                pass
        return answered, status, time.monotonic() - started
    finally:
        sender.cancel()
        writer.close()


async def _dribble_headers(port: int) -> float:
    """Send a request line and then a header byte every 50 ms; seconds until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")

    async def dribble() -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"X")
                await writer.drain()
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(dribble())
    try:
        with contextlib.suppress(ConnectionResetError):  # EOF or RST: either way the server closed
            while await asyncio.wait_for(reader.read(65536), 20):
                pass
        return time.monotonic() - started
    finally:
        sender.cancel()
        writer.close()


async def test_slow_clients_are_answered_408_and_disconnected(
        monkeypatch: pytest.MonkeyPatch, make_sidecar: SidecarFactory, make_aggregator: AggregatorFactory) -> None:
    # The documented 75 s and 30 s, shortened (read when a listener starts and when a body is read).
    monkeypatch.setattr(service, "IDLE_TIMEOUT_S", 1.0)
    monkeypatch.setattr(service, "BODY_TIMEOUT_S", 1.0)
    sc = await make_sidecar()
    agg = await _aggregator(make_aggregator)
    async with _webhook() as webhook:
        webhook_port = int(webhook.rsplit(":", 1)[1])
        bodies = await asyncio.gather(
            _dribble_body(sc.ports()["http"], "/v1/traces", PB),
            _dribble_body(agg.port, "/v1/ingest", MSGPACK),
            _dribble_body(agg.port, "/api/v1/silences", API),
            _dribble_body(webhook_port, "/mutate", JSON_CT))
        headers = await asyncio.gather(_dribble_headers(sc.ports()["http"]), _dribble_headers(agg.port),
                                       _dribble_headers(webhook_port))
    for (answered, status, closed), expected in zip(bodies, (b" 408 ", b" 408 ", b" 408 ", b" 200 "), strict=True):
        # The answer comes after the 1 s body timeout, never before; the 1 MiB body itself would take
        # 14 min at this pace, so an answer and a close within _dribble_body's 20 s deadlines prove
        # the timeout (upper bounds in seconds are benchmark figures, not assertions).
        assert expected in status, status
        assert answered > 0.9, answered
        assert closed >= answered, closed
    for closed in headers:
        assert closed > 0.9, closed
    assert sc.metrics.requests.labels("traces", "http", "timeout")._value.get() == 1
    assert agg.metrics.batches_received.labels("timeout")._value.get() == 1


async def test_a_slow_grpc_client_does_not_hold_up_others(make_sidecar: SidecarFactory) -> None:
    # gRPC has no server-side bound on a half-sent message (sidecar/README.md): what holds is that it
    # costs one stream, and other exports are answered meanwhile. The slow client speaks HTTP/2 by hand:
    # preface, SETTINGS, the Export call's HEADERS, then a DATA frame with only the gRPC prefix of a 1 MiB
    # message, and nothing more.
    sc = await make_sidecar()
    port = sc.ports()["grpc"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_h2_preface_and_headers(TRACES) + _h2_frame(0, 0, 1, b"\x00\x00\x10\x00\x00"))
    await writer.drain()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            for _ in range(5):  # a call held up behind the slow stream would end DEADLINE_EXCEEDED
                await ch.unary_unary(TRACES)(_span_request(3), timeout=10)
        await wait_for(lambda: sc.metrics.llm_calls._value.get() == 5, what="the other exports")
        # The slow call is still pending: its connection is open, its stream neither reset nor refused.
        frames = b""
        with contextlib.suppress(TimeoutError):
            while data := await asyncio.wait_for(reader.read(65536), 0.5):
                frames += data
        assert not reader.at_eof()
        kinds = set()
        while len(frames) >= 9:
            length, kind = int.from_bytes(frames[:3], "big"), frames[3]
            kinds.add(kind)
            frames = frames[9 + length:]
        assert 4 in kinds and not kinds & {3, 7}, kinds  # SETTINGS seen; no RST_STREAM, no GOAWAY
    finally:
        writer.close()


def _h2_frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


def _hpack_literal(name: str, value: str) -> bytes:
    # "Literal Header Field without Indexing — New Name" (RFC 7541 §6.2.2), no Huffman coding.
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def _h2_preface_and_headers(path: str) -> bytes:
    headers = b"".join(_hpack_literal(n, v) for n, v in (
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"), ("te", "trailers")))
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0, b"")  # preface, empty SETTINGS
            + _h2_frame(1, 0x4, 1, headers))  # HEADERS on stream 1, END_HEADERS


def test_wire_row_count_is_checked_before_anything_is_allocated_for_it() -> None:
    m = msgpack.unpackb(wire.encode(FeatureBatch.empty(), sidecar="s", seq=1), raw=False)
    m["n"] = 10**9
    with peak_mib() as peak, pytest.raises(wire.WireFormatError, match="'n' is 1000000000"):
        wire.decode(msgpack.packb(m))
    assert peak() < 1
