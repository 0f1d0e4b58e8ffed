"""Arbitrary bytes and arbitrary valid-but-strange messages never crash a decoder, and get the documented error.

Property-based (hypothesis, derandomized so a run is the same run everywhere), for every place that
reads input from the network:

- OTLP/HTTP bodies (``sidecar/otlp_codec.py``): any bytes, any JSON, any Content-Encoding → a message
  or an ``OtlpDecodeError`` with its HTTP status, never another exception;
- the lean OTLP view (``sidecar/otlp_lite.py``): any bytes, and damaged real requests → a message or
  ``DecodeError``; whatever parses is extracted without an exception;
- strange but valid ``ExportTraceServiceRequest``s (huge, zero and reversed timestamps, NaN/inf doubles,
  empty and long strings, every AnyValue kind, deeply nested arrays and kvlists, many attributes) → the
  extractor (``sidecar/extract.py``) never raises, its rows are sane (times fit int64, numbers finite
  and non-negative) and they encode to the wire and decode again;
- the wire format (``sentinel/wire.py``): any bytes, damaged real bodies and structurally strange maps
  → a ``WireBatch`` whose values the aggregator can store, or ``WireFormatError``;
- the aggregator behind ``/v1/ingest``: batches full of extreme values → accepted, every analysis
  consumer keeps working (nothing logged at ERROR) and the API still answers 200;
- the admission webhook (``webhook_injector/admission.py``): any JSON → an AdmissionReview response that
  allows the pod (fails open), with a JSONPatch that applies when there is one; over HTTP, unreadable or
  absurdly nested bodies too.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import math
import random
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import jsonpatch
import msgpack
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client import CollectorRegistry

from aggregator.app import Aggregator
from aggregator.config import AggregatorConfig
from loadtest.spans import build_trace_request
from sentinel import wire
from sentinel.model import COLUMNS, NUMERIC_COLUMNS, FeatureBatch, LocalAnomaly
from sidecar import otlp_codec
from sidecar.attributes import ATTRIBUTES
from sidecar.extract import ExtractConfig, Extractor
from sidecar.otlp_codec import JSON, PROTOBUF, Signal
from sidecar.otlp_lite import MAX_ARRAY_DEPTH, parse_traces
from webhook_injector.admission import review
from webhook_injector.mutate import ANNOTATION_INJECT, ANNOTATION_MODE, ANNOTATION_NATIVE_SIDECAR, PREFIX
from webhook_injector.server import WebhookServer
from webhook_injector.settings import InjectorSettings

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=40)
INT64_MAX = 2**63 - 1

# --- shared strategies ----------------------------------------------------------------------------

#: Any JSON document (what json.loads can give).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)

#: Any msgpack-able value, with the integer extremes msgpack carries.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

#: Attribute keys: every key the extractor reads (so values are decoded and typed), and some it does not.
WANTED_KEYS = sorted({a.key for a in ATTRIBUTES})
keys = st.sampled_from(WANTED_KEYS) | st.text(max_size=30)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def nested_value(depth: int, kvlist: bool, leaf: bytes) -> bytes:
    """A serialized ``AnyValue``: ``depth`` arrays (or kvlists) around ``leaf``, built by hand (the
    generated classes refuse to nest past 100)."""
    v = leaf
    for _ in range(depth):
        # ArrayValue{values=1: AnyValue} in AnyValue.array_value=5; KeyValueList{values=1: KeyValue{key, value}}
        # in AnyValue.kvlist_value=6.
        v = _field(6, _field(1, _field(1, b"k") + _field(2, v))) if kvlist else _field(5, _field(1, v))
    return v


@st.composite
def any_values(draw: st.DrawFn, top: bool = True) -> bytes:
    """A serialized ``AnyValue`` of any kind, with strange contents (``top``: also hand-built deep nesting)."""
    kinds = ["str", "bool", "int", "double", "bytes", "array", "kvlist", "empty"] + (["nested"] if top else [])
    kind = draw(st.sampled_from(kinds))
    v = AnyValue()
    if kind == "str":
        v.string_value = draw(st.text(max_size=50) | st.just("x" * 70_000) | st.just(""))
    elif kind == "bool":
        v.bool_value = draw(st.booleans())
    elif kind == "int":
        v.int_value = draw(st.integers(min_value=-(2**63), max_value=INT64_MAX))
    elif kind == "double":
        v.double_value = draw(st.floats() | st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]))
    elif kind == "bytes":
        v.bytes_value = draw(st.binary(max_size=50))
    elif kind == "array":
        for _ in range(draw(st.integers(0, 4))):
            v.array_value.values.add().ParseFromString(draw(any_values(False)))
    elif kind == "kvlist":
        for _ in range(draw(st.integers(0, 3))):
            kv = v.kvlist_value.values.add(key=draw(keys))
            kv.value.ParseFromString(draw(any_values(False)))
    elif kind == "nested":
        leaf = AnyValue(string_value=draw(st.text(max_size=10))).SerializeToString()
        return nested_value(draw(st.integers(0, 3 * MAX_ARRAY_DEPTH) | st.just(5_000)), draw(st.booleans()), leaf)
    return v.SerializeToString()


def key_value(key: str, value: bytes) -> bytes:
    return _field(1, key.encode("utf-8", "surrogatepass")) + _field(2, value)


timestamps = st.integers(0, 2**64 - 1) | st.sampled_from([0, 1, INT64_MAX, INT64_MAX + 1, 2**64 - 1])


@st.composite
def strange_requests(draw: st.DrawFn) -> bytes:
    """A serialized ``ExportTraceServiceRequest`` that is valid protobuf but strange in every other way."""
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(1, 2))):
        spans = req.resource_spans.add().scope_spans.add().spans
        for _ in range(draw(st.integers(0, 4))):
            span = spans.add(trace_id=draw(st.binary(max_size=20)), span_id=draw(st.binary(max_size=10)),
                             start_time_unix_nano=draw(timestamps), end_time_unix_nano=draw(timestamps))
            span.status.code = draw(st.sampled_from([0, 1, 2, 3, 999]))
            # An LLM call, so the span is rowed (or refused) rather than skipped.
            span.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    # Attributes appended as raw bytes: the lean view keeps them as bytes, so deep nesting survives parsing
    # (the generated classes would refuse it).
    lean = parse_traces(req.SerializeToString())
    for rs in lean.resource_spans:
        for key in draw(st.lists(st.sampled_from(["service.name", "cloud.region", "k8s.pod.name", "x"]), max_size=3)):
            rs.resource.attributes.append(key_value(key, draw(any_values())))
        for span in rs.scope_spans[0].spans:
            n = draw(st.integers(0, 12) | st.just(3_000))
            pool = [key_value(draw(keys), draw(any_values())) for _ in range(min(n, 6))]
            if pool:  # up to 3,000 attributes, repeating (as real ones do: the attribute cache sees them)
                span.attributes.extend(pool[i % len(pool)] for i in range(n))
    return bytes(lean.SerializeToString())


def assert_sane(rows: list[Any]) -> None:
    for row in rows:
        assert len(row) == len(COLUMNS)
        assert 0 <= row[0] <= INT64_MAX  # time_unix_nano fits the int64 column
        for name, value in zip(COLUMNS, row, strict=True):
            if name in NUMERIC_COLUMNS and name not in ("time_unix_nano", "is_error") and value is not None:
                assert math.isfinite(value) and value >= 0, (name, value)
            elif name not in NUMERIC_COLUMNS:
                assert value is None or isinstance(value, str), (name, value)
    # The rest of the sidecar's path: a batch, on the wire and back.
    batch = FeatureBatch.from_rows(rows)
    back = wire.decode(wire.encode(batch, sidecar="fuzz", seq=1)).batch
    assert back.n == len(rows)


# --- OTLP/HTTP bodies -----------------------------------------------------------------------------


def _decode_or_documented_error(signal: Signal, body: bytes, content_type: str | None) -> Any:
    try:
        return otlp_codec.decode_request(signal, body, content_type)
    except otlp_codec.OtlpDecodeError as e:
        assert e.http_status in (400, 413, 415)
        assert str(e)
        return None


@FUZZ
@given(signal=st.sampled_from(Signal), body=st.binary(max_size=2_000),
       content_type=st.sampled_from([PROTOBUF, JSON, "application/json; charset=utf-8", None, "text/plain"]))
def test_otlp_http_bodies_of_arbitrary_bytes(signal: Signal, body: bytes, content_type: str | None) -> None:
    message = _decode_or_documented_error(signal, body, content_type)
    if message is not None and signal is Signal.TRACES:
        # What the receiver does next: the lean view of the (re-encoded) request, then extraction.
        assert_sane(Extractor(ExtractConfig()).extract(parse_traces(message.SerializeToString())).rows)


@FUZZ
@given(signal=st.sampled_from(Signal), doc=json_values)
def test_otlp_json_of_arbitrary_documents(signal: Signal, doc: Any) -> None:
    _decode_or_documented_error(signal, json.dumps(doc).encode(), JSON)


otlp_json_values = st.fixed_dictionaries({}, optional={
    "stringValue": st.text(max_size=10) | st.integers(), "intValue": st.integers() | st.text(max_size=25),
    "doubleValue": st.sampled_from(["NaN", "Infinity", "-Infinity", 1e308, "1e400", "x", -0.0]),
    "boolValue": st.booleans() | st.text(max_size=3), "bytesValue": st.text(max_size=10),
    "arrayValue": st.just({"values": [{"stringValue": "gpt-4o"}]}) | st.just({"values": "no"}),
    "kvlistValue": st.just({"values": [{"key": "a", "value": {}}]}),
})
otlp_json_spans = st.fixed_dictionaries({}, optional={
    "traceId": st.sampled_from(["", "0" * 32, "zz" * 16, "ab"]) | st.integers(),
    "spanId": st.sampled_from(["", "1" * 16, "1" * 15]),
    "startTimeUnixNano": st.sampled_from(["0", "18446744073709551615", "18446744073709551616", "-1", 5, "x"]),
    "endTimeUnixNano": st.sampled_from(["0", "9223372036854775808", 10**30]),
    "status": st.sampled_from([{}, {"code": 2}, {"code": "STATUS_CODE_ERROR"}, {"code": "nope"}, []]),
    "attributes": st.lists(st.fixed_dictionaries({"key": st.sampled_from(WANTED_KEYS) | st.text(max_size=5)},
                                                 optional={"value": otlp_json_values}), max_size=6),
})


@FUZZ
@given(spans=st.lists(otlp_json_spans, max_size=4), snake=st.booleans())
def test_otlp_json_traces_of_strange_spans(spans: list[dict[str, Any]], snake: bool) -> None:
    doc: dict[str, Any] = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    if snake:
        doc = {"resource_spans": [{"scope_spans": [{"spans": spans}]}]}
    message = _decode_or_documented_error(Signal.TRACES, json.dumps(doc).encode(), JSON)
    if message is not None:
        assert_sane(Extractor(ExtractConfig()).extract(parse_traces(message.SerializeToString())).rows)


@FUZZ
@given(body=st.binary(max_size=3_000), encoding=st.sampled_from(["gzip", "x-gzip", "deflate", "identity", None, "br"]),
       compress=st.booleans(), max_bytes=st.integers(1, 4_000))
def test_decompression_of_arbitrary_bodies_is_bounded(body: bytes, encoding: str | None, compress: bool,
                                                      max_bytes: int) -> None:
    if compress and encoding in ("gzip", "x-gzip"):
        body = gzip.compress(body)
    elif compress and encoding == "deflate":
        body = zlib.compress(body)
    try:
        out = otlp_codec.decompress(body, encoding, max_bytes)
    except otlp_codec.BodyTooLarge:
        return
    except (otlp_codec.MalformedRequest, otlp_codec.UnsupportedEncoding):
        return
    assert len(out) <= max_bytes


# --- the lean view and the extractor --------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=3_000))
def test_lean_view_of_arbitrary_bytes(raw: bytes) -> None:
    try:
        lean = parse_traces(raw)
    except DecodeError:
        return
    assert_sane(Extractor(ExtractConfig()).extract(lean).rows)


REAL = build_trace_request(20, rng=random.Random(8)).SerializeToString()


@FUZZ
@given(data=st.data())
def test_damaged_real_requests(data: st.DataObject) -> None:
    raw = bytearray(REAL)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        i = data.draw(st.integers(0, len(raw) - 1))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[i:]
        elif op == "insert":
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del raw[i:i + data.draw(st.integers(1, 16))]
        if not raw:
            raw = bytearray(b"\x0a")
    try:
        lean = parse_traces(bytes(raw))
    except DecodeError:
        return
    assert_sane(Extractor(ExtractConfig(hash_user=True, api_key_attributes=("api.key",))).extract(lean).rows)


@FEW
@given(strange_requests())
def test_strange_valid_requests_are_extracted_sanely(raw: bytes) -> None:
    extractor = Extractor(ExtractConfig(api_key_attributes=("gen_ai.request.model",)))
    for _ in range(2):  # the second time through the attribute cache
        result = extractor.extract(parse_traces(raw))
        assert_sane(result.rows)
        assert result.llm_calls == len(result.rows) <= result.spans


def test_deep_arrays_in_a_wanted_attribute_are_bad_not_a_crash() -> None:
    # Regression: 5,000 nested arrays in gen_ai.request.model took the interpreter's recursion limit.
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(start_time_unix_nano=1, end_time_unix_nano=2)
    span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 10
    lean = parse_traces(req.SerializeToString())
    deep = nested_value(5_000, False, AnyValue(string_value="gpt-4o").SerializeToString())
    lean.resource_spans[0].scope_spans[0].spans[0].attributes.append(key_value("gen_ai.request.model", deep))
    result = Extractor(ExtractConfig()).extract(lean)
    assert result.bad_attributes == 1 and result.rows[0][7] is None
    shallow = nested_value(MAX_ARRAY_DEPTH, False, AnyValue(string_value="stop").SerializeToString())
    lean.resource_spans[0].scope_spans[0].spans[0].attributes.append(
        key_value("gen_ai.response.finish_reasons", shallow))
    assert Extractor(ExtractConfig()).extract(lean).bad_attributes == 2  # a list of lists is not str[]


def test_out_of_range_values_are_counted_not_rowed() -> None:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    late = spans.add(start_time_unix_nano=2**64 - 1, end_time_unix_nano=2**64 - 1)
    late.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    odd = spans.add(start_time_unix_nano=1, end_time_unix_nano=2_000_001)
    odd.attributes.add(key="gen_ai.operation.name").value.string_value = "chat"
    odd.attributes.add(key="gen_ai.usage.cost").value.double_value = math.inf
    odd.attributes.add(key="gen_ai.response.time_to_first_chunk").value.double_value = 1e306  # ×1000 overflows
    result = Extractor(ExtractConfig()).extract(req)
    assert (result.spans, result.llm_calls, result.bad_attributes) == (2, 1, 3)
    assert result.rows[0][10] is None and result.rows[0][14] is None  # ttft_ms, cost_usd
    assert_sane(result.rows)


# --- the wire format ------------------------------------------------------------------------------


def _decode_or_wire_error(body: bytes) -> wire.WireBatch | None:
    try:
        out = wire.decode(body)
    except wire.WireFormatError as e:
        assert str(e)
        return None
    # Whatever decodes can be journaled (SQLite INTEGERs) and analysed (finite or missing numbers).
    assert 0 <= out.seq <= INT64_MAX and -(2**63) <= out.created_unix_nano <= INT64_MAX
    for name, dtype in NUMERIC_COLUMNS.items():
        col = out.batch.numeric[name]
        assert len(col) == out.batch.n and col.dtype == np.dtype(dtype)
        if dtype == "<f8":
            finite = col[~np.isnan(col)]
            assert np.all(np.abs(finite) <= wire.MAX_ABS_VALUE), name
    for values in out.batch.strings.values():
        assert len(values) == out.batch.n and all(v is None or isinstance(v, str) for v in values)
    for a in out.anomalies:
        assert -(2**63) <= a.time_unix_nano <= INT64_MAX
    return out


ROWS = [(1_700_000_000_000_000_000 + i, "svc", "ns", None, "eu", "chat", "openai", "gpt-4o", None, 100.0 + i, None,
         10.0, 20.0, 5.0, 0.001, i % 2, None, "stop", None, None, f"{i:032x}", f"{i:016x}") for i in range(5)]
ANOMALY = LocalAnomaly(metric="latency_ms", value=900.0, baseline=100.0, deviation=10.0, threshold=300.0, sigma=8.0,
                       method="zscore", service="svc", model="gpt-4o", operation="chat", trace_id="ab" * 16,
                       span_id=None, time_unix_nano=5)
VALID = wire.encode(FeatureBatch.from_rows(ROWS), sidecar="s", seq=7, anomalies=[ANOMALY])


@FUZZ
@given(st.binary(max_size=2_000))
def test_wire_of_arbitrary_bytes(body: bytes) -> None:
    _decode_or_wire_error(body)


@FUZZ
@given(data=st.data())
def test_wire_of_damaged_real_bodies(data: st.DataObject) -> None:
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[max(i, 1):]
        else:
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    _decode_or_wire_error(bytes(raw))


WIRE_PATHS = [("v",), ("sidecar",), ("seq",), ("n",), ("created_unix_nano",), ("cols",), ("anomalies",),
              ("anomalies", 0), ("anomalies", 0, "value"), ("anomalies", 0, "time_unix_nano"),
              ("anomalies", 0, "trace_id")]
WIRE_PATHS += [("cols", c) for c in COLUMNS]
WIRE_PATHS += [("cols", c, k) for c in NUMERIC_COLUMNS for k in ("dtype", "data")]
WIRE_PATHS += [("cols", "service", "dict"), ("cols", "service", "codes"), ("cols", "request_model", "codes", "data")]


@FUZZ
@given(path=st.sampled_from(WIRE_PATHS), value=msgpack_values | st.sampled_from(
    [2**63, 2**64 - 1, -(2**63), -1, 0, 2**31, np.full(5, np.inf).tobytes(), np.full(5, -1e300).tobytes(),
     np.array([np.nan, 1e16, -1e16, 5.0, np.inf]).tobytes(), np.array([-2, 0, 1, 2, 3], "<i4").tobytes()]))
def test_wire_of_structurally_strange_maps(path: tuple[Any, ...], value: Any) -> None:
    m = msgpack.unpackb(VALID, raw=False)
    target = m
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    _decode_or_wire_error(msgpack.packb(m, use_bin_type=True))


def test_absurd_numbers_are_read_as_missing() -> None:
    batch = FeatureBatch.from_rows(ROWS)
    batch.numeric["latency_ms"] = np.array([np.inf, -np.inf, 1e16, -5.0, np.nan])
    batch.numeric["cost_usd"] = np.array([1e308, 1e15, 0.0, 2.0, 3.0])
    out = wire.decode(wire.encode(batch, sidecar="s", seq=2**63 - 1, created_unix_nano=-(2**63)))
    assert np.isnan(out.batch.numeric["latency_ms"][:4]).all(), "a negative latency is missing too (issue 15)"
    assert np.isnan(out.batch.numeric["cost_usd"][0]) and out.batch.numeric["cost_usd"][1] == 1e15
    for bad in ({"seq": 2**63}, {"created_unix_nano": 2**64 - 1}):
        m = msgpack.unpackb(VALID, raw=False)
        m.update(bad)
        with pytest.raises(wire.WireFormatError, match=next(iter(bad))):
            wire.decode(msgpack.packb(m))


# --- the aggregator behind /v1/ingest -------------------------------------------------------------


class _Errors(logging.Handler):
    """Collects the aggregator's ERROR records (its own loggers and aiohttp's "Error handling request"),
    from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("aggregator", "sentinel", "aiohttp")):
            self.records.append(record)


@pytest.fixture(scope="module")
def ingest_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, _Errors]]:
    """A real aggregator on a thread of its own (hypothesis calls the test synchronously)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-ingest", daemon=True)
    thread.start()
    config = AggregatorConfig(listen="127.0.0.1:0", grpc_listen="", allow_unauthenticated=True,
                              data_dir=str(tmp_path_factory.mktemp("fuzz-ingest")), shutdown_grace_s=1.0,
                              forest={"min_train_rows": 50, "window_rows": 500})
    agg = Aggregator(config, registry=CollectorRegistry())
    errors = _Errors()
    logging.getLogger().addHandler(errors)
    asyncio.run_coroutine_threadsafe(agg.start(), loop).result(30)
    try:
        yield agg.url, errors
    finally:
        asyncio.run_coroutine_threadsafe(agg.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        logging.getLogger().removeHandler(errors)
        assert [r.getMessage() for r in errors.records] == []  # also nothing at shutdown (state saves)


extreme_floats = st.sampled_from([0.0, -0.0, 5e-324, 1.0, 1e15, -1e15, 1e16, 1e308, -1e308, math.inf, -math.inf,
                                  math.nan, -3.5, 123.25])
extreme_times = st.sampled_from([0, 1, -1, -(2**63), INT64_MAX, 1_700_000_000_000_000_000]) | st.just(None)
SEQ = iter(range(1, 10**9))


@FEW
@given(rows=st.lists(st.tuples(extreme_times, extreme_floats, extreme_floats, extreme_floats, extreme_floats,
                               extreme_floats, st.booleans(), st.sampled_from(["a", "b", "", "x" * 300, None])),
                     min_size=1, max_size=60),
       anomaly_value=extreme_floats, anomaly_time=extreme_times)
def test_aggregator_survives_batches_of_extreme_values(ingest_target: tuple[str, _Errors], rows: list[Any],
                                                       anomaly_value: float, anomaly_time: int | None) -> None:
    url, errors = ingest_target
    now = time.time_ns()
    full = [(now if t is None else t, svc, None, None, None, "chat", "openai", svc, None, lat, ttft, tin, tout, None,
             cost, int(err), None, None, svc, None, "ab" * 16, "cd" * 8)
            for t, lat, ttft, tin, tout, cost, err, svc in rows]
    anomaly = LocalAnomaly(metric="latency_ms", value=anomaly_value, baseline=anomaly_value, deviation=anomaly_value,
                           threshold=1.0, sigma=anomaly_value, method="zscore", service=full[0][1], model="m",
                           operation="chat", trace_id="t", span_id=None,
                           time_unix_nano=now if anomaly_time is None else anomaly_time)
    body = wire.encode(FeatureBatch.from_rows(full), sidecar="fuzz", seq=next(SEQ), anomalies=[anomaly] * 3)
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/ingest", content=body, headers={"Content-Type": wire.CONTENT_TYPE})
        assert r.status_code == 200, r.text
        for path in ("/api/v1/services", "/api/v1/baselines", "/api/v1/candidates", "/api/v1/alerts",
                     "/api/v1/statistics/summary", "/api/v1/services/a/health", "/api/v1/services/a/series"):
            got = c.get(path)
            assert got.status_code in (200, 404), (path, got.text)
    assert [r.getMessage() for r in errors.records] == []


# --- the admission webhook ------------------------------------------------------------------------

annotation_values = st.sampled_from(["true", "TRUE", "false", "", "maybe", "sidecar", "store-and-forward", "1Gi",
                                     "-1", "9" * 40]) | st.text(max_size=8)
pod_like = st.fixed_dictionaries({}, optional={
    "apiVersion": st.sampled_from(["v1", 1]),
    "kind": st.sampled_from(["Pod", None]),
    "metadata": st.fixed_dictionaries({}, optional={
        "name": st.text(max_size=8) | st.integers(),
        "namespace": st.text(max_size=8) | st.none(),
        "annotations": st.dictionaries(
            st.sampled_from([ANNOTATION_INJECT, ANNOTATION_MODE, ANNOTATION_NATIVE_SIDECAR, PREFIX + "cpu-limit",
                             PREFIX + "memory-request", PREFIX + "spool-pvc", PREFIX + "spool-host-path", "other"]),
            annotation_values, max_size=6) | json_values,
        "labels": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3) | json_values,
    }) | json_values,
    "spec": st.fixed_dictionaries({}, optional={
        "hostNetwork": st.booleans() | json_values,
        "containers": st.lists(st.fixed_dictionaries({}, optional={
            "name": st.sampled_from(["app", "sentinel-sidecar", ""]) | st.integers(),
            "image": st.text(max_size=5),
            "env": st.lists(st.fixed_dictionaries({"name": st.sampled_from(
                ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "X"])}, optional={
                "value": st.sampled_from(["http://c:4317", "c:4318", "", "grpc", "http/protobuf"]) | json_values,
                "valueFrom": json_values}), max_size=3) | json_values,
        }) | json_values, max_size=3) | json_values,
        "initContainers": json_values,
        "volumes": json_values,
    }) | json_values,
})
reviews = st.one_of(
    json_values,
    st.fixed_dictionaries({"request": st.fixed_dictionaries(
        {"uid": st.text(max_size=10) | json_values, "object": pod_like},
        optional={"namespace": st.text(max_size=5) | json_values})}),
)


@FUZZ
@given(doc=reviews, namespace_enabled=st.booleans())
def test_admission_review_of_arbitrary_json_allows(doc: Any, namespace_enabled: bool) -> None:
    labels = (lambda ns: {"sentinel.llm-devops.io/inject": "enabled"}) if namespace_enabled else None
    out = review(doc, labels, InjectorSettings())
    json.dumps(out)  # the server sends it as JSON
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["allowed"] is True and isinstance(response["uid"], str)
    if "patch" in response:
        assert response["patchType"] == "JSONPatch"
        patch = json.loads(base64.b64decode(response["patch"]))
        patched = jsonpatch.apply_patch(doc["request"]["object"], patch)
        assert any(c.get("name") == "sentinel-sidecar"
                   for c in patched["spec"].get("containers", []) + patched["spec"].get("initContainers", []))


@pytest.fixture(scope="module")
def webhook_url() -> Iterator[str]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-webhook", daemon=True)
    thread.start()
    server = WebhookServer(InjectorSettings(listen="127.0.0.1:0"))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize("body", [
    b"", b"not json", b"\xff\xfe\x00", b"[" * 100_000 + b"]" * 100_000, b'{"request": ' * 50_000 + b"1" + b"}" * 50_000,
    b"null", b"1e999999", b'{"request": {"uid": "u", "object": ' + b"[" * 900 + b"]" * 900 + b"}}",
    json.dumps({"request": {"uid": "u", "object": {"metadata": {"annotations": {ANNOTATION_INJECT: "true"}},
                                                   "spec": {"containers": "nope"}}}}).encode(),
], ids=["empty", "text", "binary", "deep-array", "deep-object", "null", "huge-number", "deep-pod", "bad-spec"])
def test_webhook_over_http_fails_open_on_unreadable_bodies(webhook_url: str, body: bytes) -> None:
    with httpx.Client(timeout=30) as c:
        r = c.post(webhook_url + "/mutate", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        response = r.json()["response"]
        assert response["allowed"] is True and "patch" not in response
        r = c.post(webhook_url + "/mutate/namespace-enabled", content=body,
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 200 and r.json()["response"]["allowed"] is True


def test_a_column_that_is_not_a_whole_number_of_values_is_named() -> None:
    # Found by the strange-maps fuzz above: 20 bytes for an 8-byte column made numpy raise its own
    # "buffer size must be a multiple of element size" instead of a WireFormatError naming the column.
    m = msgpack.unpackb(VALID, raw=False)
    m["cols"]["latency_ms"]["data"] = np.array([-2, 0, 1, 2, 3], "<i4").tobytes()
    with pytest.raises(wire.WireFormatError, match="column 'latency_ms' holds 20 bytes"):
        wire.decode(msgpack.packb(m, use_bin_type=True))
