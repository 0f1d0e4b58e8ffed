"""A lean view of ``ExportTraceServiceRequest`` for the hot path, and a decoder for its attributes.

Why: with the full generated OTLP classes, upb builds a message object for every attribute of
every span and Python then walks them one wrapper at a time; that, not parsing, is most of the
cost of extraction. This module declares (at import, from descriptors, no code generation) a
wire-compatible subset of the OTLP trace messages that keeps only the fields extraction reads and
declares span, event and resource attributes as ``repeated bytes``: upb still parses and validates
the framing in C, skips everything else (links, span names, …) as unknown fields, and hands each
attribute over as one ``bytes`` object. Span events keep their time and name (TTFT and exception
events); their attributes, which may quote content, are only sliced, never decoded, except
``exception.type``. :func:`attribute` then decodes a ``KeyValue`` by hand, but
only after its key matched a wanted one, so unwanted attributes cost a slice and a dict probe.

Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto`` and
``opentelemetry/proto/common/v1/common.proto``; a test parses the same bytes with both schemas.

Trade-off, documented in ``sidecar/README.md``: content inside fields this view does not declare
(e.g. a span link) is not validated, so a request whose only damage is there is accepted.
"""

from __future__ import annotations

import struct
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

__all__ = [
    "KIND_BOOL", "KIND_BYTES", "KIND_DOUBLE", "KIND_INT", "KIND_LIST", "KIND_NONE", "KIND_STR",
    "TraceRequest", "any_value", "attribute", "parse_traces",
]

_F = descriptor_pb2.FieldDescriptorProto


def _build() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="sentinel/otlp_lite_trace.proto", package="sentinel.otlplite", syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for fname, number, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = ".sentinel.otlplite." + type_name

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("ExportTraceServiceRequest", ("resource_spans", 1, _F.TYPE_MESSAGE, rep, "ResourceSpans"))
    message("ResourceSpans", ("resource", 1, _F.TYPE_MESSAGE, opt, "Resource"),
            ("scope_spans", 2, _F.TYPE_MESSAGE, rep, "ScopeSpans"))
    message("Resource", ("attributes", 1, _F.TYPE_BYTES, rep, ""))
    message("ScopeSpans", ("spans", 2, _F.TYPE_MESSAGE, rep, "Span"))
    message("Span", ("trace_id", 1, _F.TYPE_BYTES, opt, ""), ("span_id", 2, _F.TYPE_BYTES, opt, ""),
            ("start_time_unix_nano", 7, _F.TYPE_FIXED64, opt, ""),
            ("end_time_unix_nano", 8, _F.TYPE_FIXED64, opt, ""),
            ("attributes", 9, _F.TYPE_BYTES, rep, ""), ("events", 11, _F.TYPE_MESSAGE, rep, "Event"),
            ("status", 15, _F.TYPE_MESSAGE, opt, "Status"))
    message("Event", ("time_unix_nano", 1, _F.TYPE_FIXED64, opt, ""), ("name", 2, _F.TYPE_STRING, opt, ""),
            ("attributes", 3, _F.TYPE_BYTES, rep, ""))
    message("Status", ("code", 3, _F.TYPE_INT32, opt, ""))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("sentinel.otlplite.ExportTraceServiceRequest"))


#: The lean request class (a protobuf message class; ``TraceRequest.FromString(raw)``).
TraceRequest: Any = _build()


def parse_traces(raw: bytes) -> Any:
    """Parse a serialized ``ExportTraceServiceRequest``; raises ``DecodeError`` if malformed."""
    return TraceRequest.FromString(raw)


# Value kinds returned by attribute(); they mirror AnyValue's oneof.
KIND_NONE, KIND_STR, KIND_BOOL, KIND_INT, KIND_DOUBLE, KIND_LIST, KIND_BYTES = range(7)
_UNPACK_DOUBLE = struct.Struct("<d").unpack_from


def _varint(b: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(b) or shift > 63:
            raise DecodeError("truncated varint")
        byte = b[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


#: Arrays nested deeper than this (an array whose first value is an array, …) are refused with
#: ``DecodeError``: extraction needs one level, and without a bound a few KiB of nesting would
#: exhaust the interpreter's recursion limit (the full parser refuses past depth 100 the same way).
MAX_ARRAY_DEPTH = 16


def any_value(b: bytes, pos: int, end: int, depth: int = 0) -> tuple[int, Any]:
    """Decode the first field of the ``AnyValue`` in ``b[pos:end]``."""
    if pos >= end:
        return KIND_NONE, None
    tag, pos = _varint(b, pos)
    field, wire = tag >> 3, tag & 7
    if field == 1 and wire == 2:
        n, pos = _varint(b, pos)
        if pos + n > end:
            raise DecodeError("string past the end")
        return KIND_STR, b[pos:pos + n].decode()
    if field == 3 and wire == 0:
        v, _ = _varint(b, pos)
        return KIND_INT, v - (1 << 64) if v >= 1 << 63 else v
    if field == 4 and wire == 1:
        if pos + 8 > end:
            raise DecodeError("double past the end")
        return KIND_DOUBLE, _UNPACK_DOUBLE(b, pos)[0]
    if field == 2 and wire == 0:
        v, _ = _varint(b, pos)
        return KIND_BOOL, bool(v)
    if field == 5 and wire == 2:
        # ArrayValue { repeated AnyValue values = 1; } -> its first value (what extraction needs).
        n, pos = _varint(b, pos)
        stop = min(end, pos + n)
        if pos >= stop:
            return KIND_LIST, None
        tag, pos = _varint(b, pos)
        if tag != 0x0A:
            raise DecodeError("bad array value")
        n, pos = _varint(b, pos)
        if depth >= MAX_ARRAY_DEPTH:
            raise DecodeError("array value nested too deeply")
        return KIND_LIST, any_value(b, pos, min(stop, pos + n), depth + 1)
    return KIND_BYTES, None  # kvlist or bytes: never a wanted kind


def attribute(kv: bytes) -> tuple[str, int, Any]:
    """``(key, kind, value)`` of a serialized ``KeyValue``.

    For ``KIND_LIST`` the value is the ``(kind, value)`` of the array's first element, or ``None``
    for an empty array. Raises ``DecodeError`` or ``UnicodeDecodeError`` on damaged input.
    """
    key = ""
    value: tuple[int, Any] = (KIND_NONE, None)
    pos, end = 0, len(kv)
    while pos < end:
        tag, pos = _varint(kv, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            n, pos = _varint(kv, pos)
            if pos + n > end:
                raise DecodeError("field past the end")
            if field == 1:
                key = kv[pos:pos + n].decode()
            elif field == 2:
                value = any_value(kv, pos, pos + n)
            pos += n
        elif wire == 0:
            _, pos = _varint(kv, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise DecodeError(f"unexpected wire type {wire}")
    return key, value[0], value[1]
