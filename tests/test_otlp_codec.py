"""OTLP/HTTP body decoding: the specification's reference examples, compression limits, bad input."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from loadtest.spans import FAMILIES, INJECTED_ATTRIBUTE, build_trace_payloads, build_trace_request
from sidecar.otlp_codec import (
    JSON,
    PROTOBUF,
    BodyTooLarge,
    MalformedRequest,
    OtlpDecodeError,
    Signal,
    UnsupportedEncoding,
    UnsupportedMediaType,
    decode_request,
    decompress,
    encode_response,
    export_response,
    status_body,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "testdata" / "otlp"
MiB = 1024 * 1024


def _spans(request: Any) -> list[Any]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _trace_json(**span: Any) -> bytes:
    base = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "s"}
    base.update(span)
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [base]}]}]}).encode()


# --- the reference examples ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "signal", "top"), [
    ("trace.json", Signal.TRACES, "resource_spans"),
    ("metrics.json", Signal.METRICS, "resource_metrics"),
    ("logs.json", Signal.LOGS, "resource_logs"),
    ("events.json", Signal.LOGS, "resource_logs"),
])
def test_reference_examples_decode(name: str, signal: Signal, top: str) -> None:
    body = (EXAMPLES / name).read_bytes()
    request = decode_request(signal, body, "application/json")
    assert isinstance(request, signal.request_type)
    resource = getattr(request, top)[0]
    assert resource.resource.attributes[0].value.string_value == "my.service"
    # The same bytes round-trip through the protobuf encoding unchanged.
    assert decode_request(signal, request.SerializeToString(), PROTOBUF) == request


def test_trace_example_ids_are_the_hex_of_the_file() -> None:
    doc = json.loads((EXAMPLES / "trace.json").read_text())
    raw = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span = _spans(decode_request(Signal.TRACES, (EXAMPLES / "trace.json").read_bytes(), JSON))[0]
    assert span.trace_id == bytes.fromhex(raw["traceId"])
    assert span.span_id == bytes.fromhex(raw["spanId"])
    assert span.parent_span_id == bytes.fromhex(raw["parentSpanId"])
    assert span.kind == 2
    assert span.start_time_unix_nano == 1544712660000000000


def test_log_example_ids_are_the_hex_of_the_file() -> None:
    doc = json.loads((EXAMPLES / "logs.json").read_text())
    raw = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    request = decode_request(Signal.LOGS, (EXAMPLES / "logs.json").read_bytes(), JSON)
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    assert record.trace_id == bytes.fromhex(raw["traceId"])
    assert record.span_id == bytes.fromhex(raw["spanId"])


def test_event_example_keeps_its_event_name() -> None:
    request = decode_request(Signal.LOGS, (EXAMPLES / "events.json").read_bytes(), JSON)
    assert request.resource_logs[0].scope_logs[0].log_records[0].event_name == "browser.page_view"


def test_exemplar_and_link_ids_are_hex() -> None:
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    metrics = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "m", "histogram": {"dataPoints": [
        {"count": "1", "exemplars": [{"asDouble": 1.5, "traceId": trace_id, "spanId": span_id}]}]}}]}]}]}
    request = decode_request(Signal.METRICS, json.dumps(metrics).encode(), JSON)
    exemplar = request.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0].exemplars[0]
    assert (exemplar.trace_id.hex(), exemplar.span_id.hex()) == (trace_id, span_id)

    body = _trace_json(links=[{"traceId": trace_id, "spanId": span_id}])
    link = _spans(decode_request(Signal.TRACES, body, JSON))[0].links[0]
    assert (link.trace_id.hex(), link.span_id.hex()) == (trace_id, span_id)


# --- JSON mapping rules ----------------------------------------------------------------------


def test_snake_case_names_enum_names_and_numeric_int64_are_accepted() -> None:
    body = json.dumps({"resource_spans": [{"scope_spans": [{"spans": [{
        "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b174",
        "parent_span_id": "", "kind": "SPAN_KIND_CLIENT", "start_time_unix_nano": 1544712660000000000}]}]}]})
    span = _spans(decode_request(Signal.TRACES, body.encode(), "application/json; charset=utf-8"))[0]
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert span.parent_span_id == b""
    assert span.kind == 3
    assert span.start_time_unix_nano == 1544712660000000000


def test_unknown_fields_are_ignored() -> None:
    body = _trace_json(futureField={"x": 1}, name="kept")
    doc = json.loads(body)
    doc["somethingNew"] = [1, 2]
    span = _spans(decode_request(Signal.TRACES, json.dumps(doc).encode(), JSON))[0]
    assert span.name == "kept"


@pytest.mark.parametrize(("field", "value"), [
    ("traceId", "not-hex-at-all-not-hex-at-all-xx"),
    ("traceId", "5b8efff798038103d269b633813fc6"),  # 15 bytes
    ("spanId", "W47/95gDgQM="),  # base64, as protobuf's own JSON mapping would write it
    ("parentSpanId", 12345),
])
def test_bad_hex_id_is_malformed_and_named(field: str, value: Any) -> None:
    with pytest.raises(MalformedRequest, match=rf"spans\[0\]\.{field}") as info:
        decode_request(Signal.TRACES, _trace_json(**{field: value}), JSON)
    assert info.value.http_status == 400


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"resourceSpans": 7}', b"\xff\xfe\xfa", b'"text"'])
def test_bad_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedRequest, match="JSON"):
        decode_request(Signal.TRACES, body, JSON)


def test_deeply_nested_json_is_malformed_not_a_crash() -> None:
    body = b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(MalformedRequest, match="nested too deeply"):
        decode_request(Signal.TRACES, body, JSON)


def test_deeply_nested_attribute_values_are_malformed() -> None:
    value: dict[str, Any] = {"stringValue": "leaf"}
    for _ in range(200):
        value = {"kvlistValue": {"values": [{"key": "k", "value": value}]}}
    body = _trace_json(attributes=[{"key": "deep", "value": value}])
    with pytest.raises(MalformedRequest, match="too deep") as info:
        decode_request(Signal.TRACES, body, JSON)
    assert len(str(info.value)) < 600


@pytest.mark.parametrize("signal", list(Signal))
@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_empty_body_is_an_empty_request(signal: Signal, content_type: str) -> None:
    assert decode_request(signal, b"", content_type) == signal.request_type()


# --- protobuf and content types --------------------------------------------------------------


def test_protobuf_round_trip() -> None:
    request = build_trace_request(20, rng=random.Random(3))
    assert decode_request(Signal.TRACES, request.SerializeToString(), "Application/X-Protobuf") == request


def test_bad_protobuf_is_malformed() -> None:
    with pytest.raises(MalformedRequest, match="protobuf ExportTraceServiceRequest"):
        decode_request(Signal.TRACES, b"\x0a\xff\xff\xff\xff\x0f garbage", PROTOBUF)


@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc", "", None])
def test_unsupported_content_type(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType, match="Content-Type") as info:
        decode_request(Signal.TRACES, b"{}", content_type)
    assert info.value.http_status == 415


# --- compression -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", [None, "", "identity", "gzip", "GZIP", "deflate"])
def test_decompress_round_trip(encoding: str | None) -> None:
    payload = build_trace_payloads(1, 50, seed=1)[0]
    body = payload
    if encoding and encoding.lower() == "gzip":
        body = gzip.compress(payload)
    elif encoding == "deflate":
        body = zlib.compress(payload)
    assert decompress(body, encoding, max_bytes=len(payload)) == payload
    with pytest.raises(BodyTooLarge):
        decompress(body, encoding, max_bytes=len(payload) - 1)


def test_concatenated_gzip_members_are_one_body() -> None:
    assert decompress(gzip.compress(b"abc") + gzip.compress(b"def"), "gzip", 100) == b"abcdef"


def test_gzip_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(bytes(100 * MiB), compresslevel=9)
    assert len(bomb) < MiB
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge, match="limit of 1048576") as info:
            decompress(bomb, "gzip", max_bytes=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.http_status == 413
    assert peak < 8 * MiB, f"decompression allocated {peak} bytes"


@pytest.mark.parametrize(("body", "encoding"), [
    (gzip.compress(b"x" * 10_000)[:-12], "gzip"),  # trailer cut off
    (gzip.compress(b"x" * 10_000)[:15], "gzip"),  # cut inside the deflate stream
    (b"\x1f\x8b\x08\x00 not really gzip", "gzip"),
    (b"plain text", "gzip"),
    (gzip.compress(b"abc") + b"trailing junk", "gzip"),
    (zlib.compress(b"abc") + b"junk", "deflate"),
], ids=["no-trailer", "cut-in-stream", "bad-deflate", "not-gzip", "gzip-then-junk", "deflate-then-junk"])
def test_bad_or_truncated_compression_is_malformed(body: bytes, encoding: str) -> None:
    with pytest.raises(MalformedRequest, match=r"truncated|invalid|trailing"):
        decompress(body, encoding, max_bytes=MiB)


@pytest.mark.parametrize("encoding", ["br", "zstd", "snappy", "gzip, br"])
def test_unsupported_encoding(encoding: str) -> None:
    with pytest.raises(UnsupportedEncoding, match="Content-Encoding") as info:
        decompress(b"x", encoding, max_bytes=MiB)
    assert info.value.http_status == 415


def test_error_hierarchy() -> None:
    for cls, status in ((MalformedRequest, 400), (BodyTooLarge, 413), (UnsupportedMediaType, 415),
                        (UnsupportedEncoding, 415)):
        assert issubclass(cls, OtlpDecodeError)
        assert cls.http_status == status


# --- responses -------------------------------------------------------------------------------


def test_responses_follow_the_request_encoding() -> None:
    response = export_response(Signal.TRACES, rejected=2, error_message="2 spans had no name")
    assert json.loads(encode_response(response, JSON)) == {
        "partialSuccess": {"rejectedSpans": "2", "errorMessage": "2 spans had no name"}}
    decoded = ExportTraceServiceResponse.FromString(encode_response(response, PROTOBUF))
    assert decoded.partial_success.rejected_spans == 2
    assert not export_response(Signal.LOGS).HasField("partial_success")
    assert export_response(Signal.METRICS, rejected=1).partial_success.rejected_data_points == 1


def test_status_body() -> None:
    error = MalformedRequest("bad hex")
    status = status_pb2.Status.FromString(status_body(error.grpc_code, str(error), PROTOBUF))
    assert (status.code, status.message) == (3, "bad hex")
    assert json.loads(status_body(8, "too big", JSON)) == {"code": 8, "message": "too big"}
    # A request whose Content-Type was refused still gets a readable (protobuf) status.
    assert status_pb2.Status.FromString(status_body(3, "x", "text/plain")).message == "x"


# --- the load generator ----------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_generated_spans_are_realistically_sized(family: Any) -> None:
    request = build_trace_request(1000, rng=np.random.default_rng(5), family=family)
    spans = _spans(request)
    assert len(spans) == 1000
    mean = sum(s.ByteSize() for s in spans) / len(spans)
    assert 350 <= mean <= 700, mean
    assert 10 <= np.mean([len(s.attributes) for s in spans]) <= 16
    resource_keys = {a.key for a in request.resource_spans[0].resource.attributes}
    assert {"service.name", "k8s.namespace.name", "k8s.pod.name", "cloud.region"} <= resource_keys


def test_generated_spans_are_seeded_heavy_tailed_and_latency_follows_tokens() -> None:
    a = build_trace_request(3000, rng=random.Random(11), error_rate=0.0)
    assert a == build_trace_request(3000, rng=random.Random(11), error_rate=0.0)
    assert a != build_trace_request(3000, rng=random.Random(12), error_rate=0.0)
    spans = _spans(a)
    attrs = [{kv.key: kv.value for kv in s.attributes} for s in spans]
    out = np.array([x["gen_ai.usage.output_tokens"].int_value for x in attrs], dtype=float)
    latency = np.array([s.end_time_unix_nano - s.start_time_unix_nano for s in spans], dtype=float)
    assert np.percentile(out, 99) > 4 * np.median(out)  # heavy tail
    assert np.corrcoef(out, latency)[0, 1] > 0.5
    assert all(x["gen_ai.operation.name"].string_value == "chat" for x in attrs)
    assert not any(INJECTED_ATTRIBUTE in x for x in attrs)


def test_outliers_and_errors_are_injected() -> None:
    spans = _spans(build_trace_request(2000, rng=random.Random(2), error_rate=0.1, outlier_rate=0.05))
    injected = [s for s in spans if any(kv.key == INJECTED_ATTRIBUTE for kv in s.attributes)]
    errors = [s for s in spans if s.status.code == 2]
    assert 50 <= len(injected) <= 150
    assert 140 <= len(errors) <= 260
    normal_ms = np.median([s.end_time_unix_nano - s.start_time_unix_nano for s in spans if s not in injected])
    outlier_ms = np.median([s.end_time_unix_nano - s.start_time_unix_nano for s in injected])
    assert outlier_ms > 5 * normal_ms


def test_benchmark_payloads_decode() -> None:
    payloads = build_trace_payloads(3, 40, seed=9)
    assert payloads == build_trace_payloads(3, 40, seed=9)
    assert [len(_spans(decode_request(Signal.TRACES, p, PROTOBUF))) for p in payloads] == [40, 40, 40]
