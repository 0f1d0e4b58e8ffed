"""The lean OTLP view reads what the generated classes read, and never crashes on damage."""

from __future__ import annotations

import contextlib
import random

from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from loadtest.spans import FAMILIES, build_trace_request
from sidecar.extract import ExtractConfig, Extractor
from sidecar.otlp_lite import KIND_BOOL, KIND_DOUBLE, KIND_INT, KIND_LIST, KIND_STR, attribute, parse_traces


def _plain(kind: int, value: object) -> object:
    if kind == KIND_LIST:
        return None if value is None else _plain(*value)  # type: ignore[misc]
    return value


def _full_value(v: AnyValue) -> object:
    which = v.WhichOneof("value")
    if which == "array_value":
        return _full_value(v.array_value.values[0]) if v.array_value.values else None
    return getattr(v, which) if which else None


def test_lean_view_matches_generated_classes() -> None:
    for family in FAMILIES:
        full = build_trace_request(50, rng=random.Random(5), family=family)
        lean = parse_traces(full.SerializeToString())
        for frs, lrs in zip(full.resource_spans, lean.resource_spans, strict=True):
            assert [attribute(kv)[0] for kv in lrs.resource.attributes] == [
                kv.key for kv in frs.resource.attributes]
            for fss, lss in zip(frs.scope_spans, lrs.scope_spans, strict=True):
                for f, s in zip(fss.spans, lss.spans, strict=True):
                    assert (s.trace_id, s.span_id) == (f.trace_id, f.span_id)
                    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (
                        f.start_time_unix_nano, f.end_time_unix_nano)
                    assert s.status.code == f.status.code
                    for fkv, lkv in zip(f.attributes, s.attributes, strict=True):
                        key, kind, value = attribute(lkv)
                        assert key == fkv.key
                        assert _plain(kind, value) == _full_value(fkv.value)


values = st.one_of(
    st.text().map(lambda s: AnyValue(string_value=s)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
)


@given(key=st.text(max_size=200), value=values)
@settings(max_examples=300, deadline=None)
def test_attribute_decodes_any_value(key: str, value: AnyValue) -> None:
    kind, got = attribute(KeyValue(key=key, value=value).SerializeToString())[1:]
    assert kind in (KIND_STR, KIND_INT, KIND_DOUBLE, KIND_BOOL) or (kind == 0 and not value.ListFields())
    expected = _full_value(value)
    if value.ListFields():
        assert got == expected
    assert attribute(KeyValue(key=key, value=value).SerializeToString())[0] == key


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_attribute_on_arbitrary_bytes_only_raises_decode_errors(raw: bytes) -> None:
    with contextlib.suppress(DecodeError, UnicodeDecodeError):
        attribute(raw)


@given(st.binary(max_size=2000))
@settings(max_examples=300, deadline=None)
def test_extractor_survives_arbitrary_attribute_bytes(raw: bytes) -> None:
    # A lean span whose attribute bytes are arbitrary: counted as bad or ignored, never a crash.
    req = build_trace_request(1, rng=random.Random(1))
    lean = parse_traces(req.SerializeToString())
    span = lean.resource_spans[0].scope_spans[0].spans[0]
    span.attributes.append(raw)
    result = Extractor(ExtractConfig()).extract(lean)
    assert result.spans == 1


def test_key_not_first_is_still_read() -> None:
    # Field order is not guaranteed by protobuf: value first, then key.
    value = AnyValue(string_value="gpt-4o").SerializeToString()
    kv = b"\x12" + bytes([len(value)]) + value + b"\x0a\x14gen_ai.request.model"
    assert attribute(kv) == ("gen_ai.request.model", KIND_STR, "gpt-4o")
    req = ExportTraceServiceRequest()
    span = req.resource_spans.add().scope_spans.add().spans.add(
        trace_id=b"\x01" * 16, span_id=b"\x02" * 8, start_time_unix_nano=1, end_time_unix_nano=2_000_001)
    span.attributes.add(key="gen_ai.usage.input_tokens").value.int_value = 10
    lean = parse_traces(req.SerializeToString())
    lean.resource_spans[0].scope_spans[0].spans[0].attributes.append(kv)
    rows = Extractor(ExtractConfig()).extract(lean).rows
    assert len(rows) == 1 and rows[0][7] == "gpt-4o"
