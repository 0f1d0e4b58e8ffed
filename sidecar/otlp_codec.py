"""Decoding of OTLP/HTTP request bodies and encoding of the replies, free of any transport.

The rules follow the OTLP specification's OTLP/HTTP section: bodies are ``application/x-protobuf``
or ``application/json`` (protobuf's JSON mapping, except that trace and span ids are hex strings),
optionally ``Content-Encoding: gzip``; failures are answered with a ``google.rpc.Status`` in the
request's encoding.

Exceptions, each with the HTTP status and gRPC code it maps to::

    OtlpDecodeError                  the request cannot be decoded; permanent, never retried
    ├── MalformedRequest             400  bad protobuf, JSON, hex id or gzip stream
    ├── BodyTooLarge                 413  more than max_bytes, before or after decompression
    ├── UnsupportedMediaType         415  Content-Type is neither protobuf nor JSON
    └── UnsupportedEncoding          415  Content-Encoding is not identity, gzip or deflate
"""

from __future__ import annotations

import base64
import enum
import functools
import json
import re
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2  # type: ignore[import-untyped,unused-ignore]  # no py.typed
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

__all__ = [
    "JSON",
    "PROTOBUF",
    "BodyTooLarge",
    "MalformedRequest",
    "OtlpDecodeError",
    "Signal",
    "UnsupportedEncoding",
    "UnsupportedMediaType",
    "decode_request",
    "decompress",
    "encode_response",
    "export_response",
    "media_type",
    "status_body",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


class OtlpDecodeError(Exception):
    """A request body that cannot be decoded; the sender must not retry it unchanged."""

    http_status = 400
    grpc_code = code_pb2.INVALID_ARGUMENT


class MalformedRequest(OtlpDecodeError):
    """Bad protobuf, JSON, hex id or compressed stream (HTTP 400)."""


class BodyTooLarge(OtlpDecodeError):
    """The body, before or after decompression, is larger than allowed (HTTP 413)."""

    http_status = 413
    grpc_code = code_pb2.RESOURCE_EXHAUSTED


class UnsupportedMediaType(OtlpDecodeError):
    """Content-Type other than application/x-protobuf or application/json (HTTP 415)."""

    http_status = 415


class UnsupportedEncoding(OtlpDecodeError):
    """Content-Encoding other than identity, gzip or deflate (HTTP 415)."""

    http_status = 415


class Signal(enum.Enum):
    """An OTLP signal, its URL path and its request and response messages."""

    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"

    @property
    def path(self) -> str:
        return f"/v1/{self.value}"

    @property
    def request_type(self) -> type[Message]:
        return _REQUEST[self]

    @property
    def response_type(self) -> type[Message]:
        return _RESPONSE[self]


_REQUEST: dict[Signal, type[Message]] = {
    Signal.TRACES: trace_service_pb2.ExportTraceServiceRequest,
    Signal.METRICS: metrics_service_pb2.ExportMetricsServiceRequest,
    Signal.LOGS: logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE: dict[Signal, type[Message]] = {
    Signal.TRACES: trace_service_pb2.ExportTraceServiceResponse,
    Signal.METRICS: metrics_service_pb2.ExportMetricsServiceResponse,
    Signal.LOGS: logs_service_pb2.ExportLogsServiceResponse,
}
_REJECTED_FIELD = {
    Signal.TRACES: "rejected_spans",
    Signal.METRICS: "rejected_data_points",
    Signal.LOGS: "rejected_log_records",
}

# wbits for zlib: 16 + MAX_WBITS reads a gzip member, MAX_WBITS a zlib stream (HTTP's "deflate").
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def media_type(content_type: str | None) -> str:
    """``PROTOBUF`` or ``JSON`` for a Content-Type header (parameters and case ignored).

    >>> media_type("Application/JSON; charset=utf-8")
    'application/json'
    """
    mt = (content_type or "").split(";", 1)[0].strip().lower()
    if mt not in (PROTOBUF, JSON):
        raise UnsupportedMediaType(f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}")
    return mt


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """The body without its Content-Encoding, refusing to produce more than ``max_bytes``.

    Decompression stops at ``max_bytes + 1`` bytes of output, so a small "zip bomb" never costs
    more memory than an honest body of the largest accepted size.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > max_bytes:
            raise BodyTooLarge(f"body of {len(body)} bytes is larger than the limit of {max_bytes}")
        return body
    wbits = _WBITS.get(encoding)
    if wbits is None:
        raise UnsupportedEncoding(f"unsupported Content-Encoding {content_encoding!r}: use gzip or identity")
    if not body:
        # Some clients compress nothing to nothing; an empty body is an empty, valid request.
        return b""
    try:
        return _inflate(body, wbits, max_bytes, multi_member=wbits != zlib.MAX_WBITS)
    except zlib.error as e:
        raise MalformedRequest(f"invalid {encoding} body: {e}") from None


def _inflate(data: bytes, wbits: int, max_bytes: int, *, multi_member: bool) -> bytes:
    out = bytearray()
    while True:
        d = zlib.decompressobj(wbits)
        pending = data
        while not d.eof:
            # max_length is never 0 here (0 would mean "unlimited").
            chunk = d.decompress(pending, max_bytes + 1 - len(out))
            out += chunk
            if len(out) > max_bytes:
                raise BodyTooLarge(f"body decompresses to more than the limit of {max_bytes} bytes")
            if not chunk and d.unconsumed_tail == pending:
                # Input used up (or not consumed) without reaching the end of the stream.
                raise MalformedRequest("truncated compressed body: the stream ends before its trailer")
            pending = d.unconsumed_tail
        data = d.unused_data
        if not data:
            return bytes(out)
        if not multi_member:
            raise MalformedRequest(f"{len(data)} bytes of trailing data after the compressed body")
        # gzip allows concatenated members (RFC 1952 §2.2); anything else fails the header check.


def decode_request(signal: Signal, body: bytes, content_type: str | None) -> Message:
    """The Export*ServiceRequest of ``signal`` in an (already decompressed) body.

    An empty body is a valid, empty request in either encoding.
    """
    mt = media_type(content_type)
    message = signal.request_type()
    if mt == PROTOBUF:
        try:
            message.ParseFromString(body)
        except DecodeError as e:
            raise MalformedRequest(f"invalid protobuf {message.DESCRIPTOR.name}: {e}") from None
        return message
    if not body.strip():
        return message
    try:
        document = json.loads(body)
    except RecursionError:
        raise MalformedRequest("invalid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedRequest(f"invalid JSON: {e}") from None
    if not isinstance(document, dict):
        raise MalformedRequest(f"invalid JSON: the body must be an object, not {type(document).__name__}")
    _hex_ids_to_base64(document, _ID_TREE[signal], "")
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except RecursionError:
        raise MalformedRequest(f"invalid OTLP/JSON {message.DESCRIPTOR.name}: nested too deeply") from None
    except (json_format.ParseError, ValueError) as e:
        raise MalformedRequest(f"invalid OTLP/JSON {message.DESCRIPTOR.name}: {_clip(str(e))}") from None
    return message


def _clip(text: str, limit: int = 400) -> str:
    # json_format nests one "Failed to parse X field: " per level; the cause is at the end.
    return text if len(text) <= limit else f"{text[:limit // 2]} … {text[-limit // 2:]}"


def export_response(signal: Signal, rejected: int = 0, error_message: str = "") -> Message:
    """The Export*ServiceResponse; ``partial_success`` is set only when something is reported."""
    response = signal.response_type()
    if rejected or error_message:
        setattr(response.partial_success, _REJECTED_FIELD[signal], rejected)  # type: ignore[attr-defined]
        response.partial_success.error_message = error_message  # type: ignore[attr-defined]
    return response


def encode_response(message: Message, content_type: str | None) -> bytes:
    """``message`` in the encoding of the request (protobuf when the request's type is unknown)."""
    if _media_type_or_protobuf(content_type) == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    return message.SerializeToString()


def status_body(code: int, message: str, content_type: str | None) -> bytes:
    """A ``google.rpc.Status`` body for a failed request, e.g. ``status_body(e.grpc_code, str(e), ct)``."""
    return encode_response(status_pb2.Status(code=code, message=message), content_type)


def _media_type_or_protobuf(content_type: str | None) -> str:
    try:
        return media_type(content_type)
    except UnsupportedMediaType:
        return PROTOBUF


# --- OTLP/JSON ids ---------------------------------------------------------------------------
#
# json_format reads bytes fields as base64, but OTLP/JSON writes trace and span ids as hex. Only
# these fields are bytes in OTLP, so they are found by walking a fixed tree of field names rather
# than by reflecting over descriptors. Names are lowerCamelCase; the original snake_case is matched
# too, as the specification asks receivers to accept both.

_ID_LENGTH = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


@dataclass(frozen=True)
class _Node:
    ids: tuple[str, ...] = ()
    children: tuple[tuple[str, _Node], ...] = ()


def _chain(*fields: str, leaf: _Node) -> _Node:
    node = leaf
    for field in reversed(fields):
        node = _Node(children=((field, node),))
    return node


_EXEMPLARS = _chain("dataPoints", "exemplars", leaf=_Node(ids=("traceId", "spanId")))
_ID_TREE = {
    Signal.TRACES: _chain("resourceSpans", "scopeSpans", "spans", leaf=_Node(
        ids=("traceId", "spanId", "parentSpanId"),
        children=(("links", _Node(ids=("traceId", "spanId"))),),
    )),
    Signal.METRICS: _chain("resourceMetrics", "scopeMetrics", "metrics", leaf=_Node(
        children=tuple((kind, _EXEMPLARS) for kind in ("sum", "gauge", "histogram", "exponentialHistogram")),
    )),
    Signal.LOGS: _chain("resourceLogs", "scopeLogs", "logRecords", leaf=_Node(ids=("traceId", "spanId"))),
}


@functools.cache
def _keys(name: str) -> tuple[str, ...]:
    """``name`` and, when it differs, its snake_case original: ``traceId`` -> ``trace_id``."""
    snake = re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name)
    return (name, snake) if snake != name else (name,)


def _hex_ids_to_base64(message: dict[str, Any], node: _Node, where: str) -> None:
    """Rewrite, in place, the hex ids of ``message`` and of the messages below it."""
    for name in node.ids:
        for key in _keys(name):
            value = message.get(key)
            if value is None:
                continue
            digits = 2 * _ID_LENGTH[name]
            if not isinstance(value, str) or (value and not re.fullmatch(f"[0-9a-fA-F]{{{digits}}}", value)):
                raise MalformedRequest(f"invalid OTLP/JSON: {where}{key} must be {digits} hex digits "
                                       f"(or empty), got {value!r:.80}")
            message[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
    for field, child in node.children:
        for key in _keys(field):
            value = message.get(key)
            if isinstance(value, dict):
                _hex_ids_to_base64(value, child, f"{where}{key}.")
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):  # other shapes are left to json_format, which names them
                        _hex_ids_to_base64(item, child, f"{where}{key}[{i}].")
