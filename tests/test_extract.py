"""Extraction of feature rows from real OTLP protobuf requests, family by family."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from sentinel.model import COLUMNS, FeatureBatch
from sentinel.pricing import PriceBook
from sidecar.attributes import ATTRIBUTES, FAMILIES, KINDS, classify
from sidecar.extract import ExtractConfig, Extractor

T0 = 1_700_000_000_000_000_000
TRACE_ID = bytes.fromhex("0AF7651916CD43DD8448EB211C80319C")
SPAN_ID = bytes.fromhex("B7AD6B7169203331")
RESOURCE = {"service.name": "checkout", "k8s.namespace.name": "shop", "k8s.pod.name": "checkout-7d9f8",
            "cloud.region": "eu-west-1", "telemetry.sdk.language": "python"}
PROMPT = "SECRET PROMPT: my card number is 4111"
COMPLETION = "SECRET COMPLETION: noted"
API_KEY = "sk-live-abcdef0123456789"
# Fixed test prices, so expected costs do not move with the genai-prices table.
PRICES = {"gpt-4o": {"input": 2.5, "output": 10.0}, "claude-3-5-sonnet": {"input": 3.0, "output": 15.0}}


def value(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, str):
        return AnyValue(string_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, bytes):
        return AnyValue(bytes_value=v)
    return AnyValue(array_value=ArrayValue(values=[value(x) for x in v]))


def request(*spans: dict[str, Any], resource: dict[str, Any] | None = None) -> ExportTraceServiceRequest:
    """One ResourceSpans holding ``spans``: each a dict of attributes plus optional ``_start``,
    ``_ms`` (duration), ``_status`` and ``_span_id``."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    for k, v in (RESOURCE if resource is None else resource).items():
        rs.resource.attributes.append(KeyValue(key=k, value=value(v)))
    ss = rs.scope_spans.add()
    for attrs in spans:
        sp = ss.spans.add()
        sp.trace_id = TRACE_ID
        sp.span_id = attrs.get("_span_id", SPAN_ID)
        sp.name = "llm call"
        sp.start_time_unix_nano = attrs.get("_start", T0)
        if attrs.get("_ms") is not None:
            sp.end_time_unix_nano = sp.start_time_unix_nano + int(attrs["_ms"] * 1_000_000)
        sp.status.code = attrs.get("_status", Status.STATUS_CODE_UNSET)
        for k, v in attrs.items():
            if not k.startswith("_"):
                sp.attributes.append(KeyValue(key=k, value=value(v)))
    return req


def extractor(**kw: Any) -> Extractor:
    kw.setdefault("price_overrides", PRICES)
    return Extractor(ExtractConfig(**kw))


def one_row(attrs: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = extractor(**kw).extract(request(attrs))
    assert result.spans == 1 and result.llm_calls == 1 and len(result.rows) == 1
    return dict(zip(COLUMNS, result.rows[0], strict=True))


COMMON = {"http.request.method": "POST", "server.address": "api.example.com", "server.port": 443}

FAMILY_CASES = {
    "genai-current": {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 200, "gen_ai.response.time_to_first_chunk": 0.25,
        "gen_ai.response.finish_reasons": ["stop", "length"], "user.id": "alice",
        "gen_ai.input.messages": PROMPT, "gen_ai.output.messages": COMPLETION, "_ms": 1250.0,
    },
    "genai-deprecated": {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.prompt_tokens": 1000,
        "gen_ai.usage.completion_tokens": 200, "gen_ai.response.finish_reasons": ["stop"],
        "enduser.id": "alice", "gen_ai.prompt": PROMPT, "gen_ai.completion": COMPLETION, "_ms": 1250.0,
    },
    "openllmetry": {
        "llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06", "gen_ai.usage.prompt_tokens": 1000,
        "gen_ai.usage.completion_tokens": 200, "llm.usage.total_tokens": 1200,
        "gen_ai.completion.0.finish_reason": "stop", "llm.user": "alice", "llm.is_streaming": False,
        "gen_ai.prompt.0.content": PROMPT, "gen_ai.completion.0.content": COMPLETION,
        "traceloop.association.properties.session": "s-1", "_ms": 1250.0,
    },
    "openllmetry-legacy": {
        "llm.request.type": "chat", "llm.vendor": "openai", "llm.request.model": "gpt-4o",
        "llm.response.model": "gpt-4o-2024-08-06", "llm.usage.prompt_tokens": 1000,
        "llm.usage.completion_tokens": 200, "llm.response.finish_reason": "stop",
        "traceloop.association.properties.user_id": "alice", "llm.prompts.0.content": PROMPT, "_ms": 1250.0,
    },
    "openinference": {
        "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.system": "openai",
        "llm.model_name": "gpt-4o", "llm.response.model_name": "gpt-4o-2024-08-06",
        "llm.token_count.prompt": 1000, "llm.token_count.completion": 200, "llm.token_count.total": 1200,
        "llm.finish_reason": "stop", "user.id": "alice", "input.value": PROMPT, "output.value": COMPLETION,
        "llm.input_messages.0.message.content": PROMPT, "llm.output_messages.0.message.content": COMPLETION,
        "_ms": 1250.0,
    },
}
# 1000 in and 200 out at the gpt-4o override: 1000 * 2.5e-6 + 200 * 10e-6.
EXPECTED_COST = 0.0045


@pytest.mark.parametrize("family", FAMILY_CASES)
def test_each_family_gives_the_same_row(family: str) -> None:
    attrs = {**COMMON, **FAMILY_CASES[family], "_span_id": SPAN_ID}
    row = one_row(attrs)
    ttft = 250.0 if family == "genai-current" else None
    assert row == {
        "time_unix_nano": T0, "service": "checkout", "namespace": "shop", "pod": "checkout-7d9f8",
        "region": "eu-west-1", "operation": "chat", "provider": "openai", "request_model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06", "latency_ms": 1250.0, "ttft_ms": ttft,
        "input_tokens": 1000, "output_tokens": 200,
        # generation time is latency minus time to first token when known
        "tokens_per_s": pytest.approx(200 / (1.0 if ttft else 1.25)),
        "cost_usd": pytest.approx(EXPECTED_COST), "is_error": False, "error_type": None,
        "finish_reason": "stop", "user": "alice", "api_key_hash": None,
        "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331",
    }
    assert PROMPT not in repr(row) and COMPLETION not in repr(row)


def test_rows_fit_the_feature_batch() -> None:
    result = extractor().extract(request(FAMILY_CASES["genai-current"], FAMILY_CASES["openinference"]))
    batch = FeatureBatch.from_rows(result.rows)
    assert batch.n == 2
    assert batch.row(0)["ttft_ms"] == 250.0 and batch.row(1)["ttft_ms"] is None


def test_current_names_win_over_deprecated_and_other_families() -> None:
    row = one_row({"llm.token_count.prompt": 1, "gen_ai.usage.prompt_tokens": 2, "gen_ai.usage.input_tokens": 3,
                   "llm.usage.prompt_tokens": 4, "llm.provider": "azure", "gen_ai.system": "az.ai.openai",
                   "gen_ai.provider.name": "azure.ai.openai", "llm.model_name": "m-oi", "gen_ai.request.model": "m"})
    assert (row["input_tokens"], row["provider"], row["request_model"]) == (3, "azure.ai.openai", "m")
    row = one_row({"llm.token_count.prompt": 1, "llm.usage.prompt_tokens": 4, "gen_ai.usage.prompt_tokens": 2})
    assert row["input_tokens"] == 2


@pytest.mark.parametrize(("attrs", "operation"), [
    ({"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "m"}, "embeddings"),
    ({"llm.request.type": "completion"}, "text_completion"),
    ({"llm.request.type": "embedding"}, "embeddings"),
    ({"openinference.span.kind": "EMBEDDING", "embedding.model_name": "text-embedding-3-small"}, "embeddings"),
    ({"openinference.span.kind": "LLM"}, "chat"),
    ({"gen_ai.request.model": "m"}, None),
])
def test_operation(attrs: dict[str, Any], operation: str | None) -> None:
    assert one_row(attrs)["operation"] == operation


def test_span_cost_attribute_wins_over_the_price_table() -> None:
    base = {"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": 200}
    assert one_row({**base, "gen_ai.usage.cost": 0.5})["cost_usd"] == 0.5
    assert one_row({**base, "llm.cost.total": 0.25})["cost_usd"] == 0.25
    assert one_row({**base, "llm.cost.prompt": 0.1, "llm.cost.completion": 0.2})["cost_usd"] == pytest.approx(0.3)
    assert one_row({**base, "gen_ai.usage.cost": 1})["cost_usd"] == 1.0  # an int is a valid float
    # 0 beside token counts means "not priced" (OpenLIT without its price table): the table decides
    assert one_row({**base, "gen_ai.usage.cost": 0})["cost_usd"] == pytest.approx(EXPECTED_COST)


def test_unknown_model_cost_is_none_and_counted() -> None:
    ex = extractor()
    result = ex.extract(request({"gen_ai.request.model": "no-such-model-xyz", "gen_ai.provider.name": "nobody",
                                 "gen_ai.usage.input_tokens": 10}, {"gen_ai.request.model": "gpt-4o"}))
    # the second has no tokens (a failed call) but a priced model: its cost is not "unknown"
    assert result.llm_calls == 2 and result.unknown_cost == 1
    assert [r[COLUMNS.index("cost_usd")] for r in result.rows] == [None, None]


def test_price_table_is_used_without_overrides() -> None:
    row = one_row({"gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o",
                   "gen_ai.usage.input_tokens": 1_000_000}, price_overrides={})
    assert row["cost_usd"] is not None and row["cost_usd"] > 0


@pytest.mark.parametrize(("ms", "ttft_s", "latency", "tps"), [
    (2000.0, None, 2000.0, 100.0),
    (2000.0, 1.0, 2000.0, 200.0),
    (2000.0, 2.0, 2000.0, None),  # no generation time left
    (None, None, None, None),  # no end time
    (-5.0, None, None, None),  # end before start
])
def test_latency_and_throughput(ms: float | None, ttft_s: float | None, latency: float | None,
                                tps: float | None) -> None:
    attrs: dict[str, Any] = {"gen_ai.request.model": "m", "gen_ai.usage.output_tokens": 200, "_ms": None}
    if ttft_s is not None:
        attrs["gen_ai.response.time_to_first_chunk"] = ttft_s
    req = request(attrs)
    span = req.resource_spans[0].scope_spans[0].spans[0]
    if ms is not None:
        span.end_time_unix_nano = T0 + int(ms * 1_000_000)
    row = dict(zip(COLUMNS, extractor().extract(req).rows[0], strict=True))
    assert row["latency_ms"] == latency
    assert row["tokens_per_s"] == (None if tps is None else pytest.approx(tps))


@pytest.mark.parametrize(("attrs", "is_error", "error_type"), [
    ({"_status": Status.STATUS_CODE_ERROR}, True, None),
    ({"_status": Status.STATUS_CODE_OK}, False, None),
    ({"error.type": "RateLimitError"}, True, "RateLimitError"),
    ({"_status": Status.STATUS_CODE_ERROR, "error.type": "timeout"}, True, "timeout"),
])
def test_errors(attrs: dict[str, Any], is_error: bool, error_type: str | None) -> None:
    row = one_row({"gen_ai.request.model": "m", **attrs})
    assert (row["is_error"], row["error_type"]) == (is_error, error_type)


def test_user_capture_and_hashing() -> None:
    attrs = {"gen_ai.request.model": "m", "user.id": "alice"}
    assert one_row(attrs)["user"] == "alice"
    assert one_row(attrs, hash_user=True)["user"] == hashlib.sha256(b"alice").hexdigest()
    assert one_row(attrs, capture_user=False)["user"] is None


def test_api_key_is_hashed_never_forwarded() -> None:
    row = one_row({"gen_ai.request.model": "m", "app.api_key": API_KEY}, api_key_attributes=("app.api_key",))
    assert row["api_key_hash"] == hashlib.sha256(API_KEY.encode()).hexdigest()[:16]
    assert API_KEY not in repr(row)
    assert one_row({"gen_ai.request.model": "m", "app.api_key": API_KEY})["api_key_hash"] is None


def test_wrong_typed_attributes_become_none_and_are_counted() -> None:
    result = extractor().extract(request({
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.usage.input_tokens": "1000",  # string, not int
        "gen_ai.usage.output_tokens": 2.5,  # double, not int
        "gen_ai.provider.name": 7,
        "gen_ai.response.time_to_first_chunk": "fast",
        "gen_ai.response.finish_reasons": [1, 2],
        "user.id": b"\x00",
        "llm.token_count.prompt": -3,  # negative count
    }, resource={"service.name": 42, "k8s.pod.name": "p"}))
    assert result.bad_attributes == 8
    row = dict(zip(COLUMNS, result.rows[0], strict=True))
    assert row["request_model"] == "gpt-4o" and row["pod"] == "p"
    for col in ("input_tokens", "output_tokens", "provider", "ttft_ms", "finish_reason", "user", "service",
                "tokens_per_s", "cost_usd"):
        assert row[col] is None, col


def test_a_wrong_typed_current_name_falls_back_to_the_next_family() -> None:
    result = extractor().extract(request({"gen_ai.usage.input_tokens": "x", "llm.token_count.prompt": 5}))
    assert result.bad_attributes == 1 and result.rows[0][COLUMNS.index("input_tokens")] == 5


def test_zero_and_empty_values_are_values() -> None:
    row = one_row({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 0,
                   "gen_ai.usage.output_tokens": 0, "gen_ai.response.finish_reasons": [], "user.id": ""})
    # an empty user id is no user (OpenLIT writes "" when the call named none)
    assert (row["input_tokens"], row["output_tokens"], row["finish_reason"], row["user"]) == (0, 0, None, None)
    assert row["cost_usd"] == 0.0


@pytest.mark.parametrize("attrs", [
    {"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 9},
    {"gen_ai.operation.name": "create_agent", "gen_ai.request.model": "gpt-4o"},
    {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
    {"openinference.span.kind": "AGENT", "llm.model_name": "gpt-4o", "llm.token_count.prompt": 9},
    {"openinference.span.kind": "CHAIN", "llm.token_count.total": 9},
    {"traceloop.span.kind": "workflow", "llm.usage.total_tokens": 9},
    {"http.request.method": "GET", "url.path": "/healthz"},  # not an LLM span at all
    {"gen_ai.operation.name": "retrieval"},
])
def test_spans_that_are_counted_but_not_rowed(attrs: dict[str, Any]) -> None:
    result = extractor().extract(request(attrs, {"gen_ai.request.model": "gpt-4o"}))
    assert (result.spans, result.llm_calls, len(result.rows)) == (2, 1, 1)


def test_resource_attributes_are_per_resource_spans() -> None:
    req = request({"gen_ai.request.model": "a"})
    req.MergeFrom(request({"gen_ai.request.model": "b"}, resource={"service.name": "other"}))
    rows = extractor().extract(req).rows
    svc, ns = COLUMNS.index("service"), COLUMNS.index("namespace")
    assert [(r[svc], r[ns]) for r in rows] == [("checkout", "shop"), ("other", None)]


def test_content_attributes_are_not_in_the_table() -> None:
    keys = {a.key for a in ATTRIBUTES}
    for content in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.prompt", "gen_ai.completion",
                    "gen_ai.system_instructions", "input.value", "output.value", "llm.input_messages",
                    "llm.output_messages", "traceloop.entity.input", "traceloop.entity.output"):
        assert content not in keys
    assert len(keys) == len(ATTRIBUTES)  # one entry per key
    for a in ATTRIBUTES:
        assert a.family in FAMILIES and a.kind in KINDS
        assert a.column in COLUMNS or a.column.startswith("_")


def test_classify_rule() -> None:
    kw: dict[str, Any] = {"operation": None, "request_type": None, "openinference_kind": None,
                          "traceloop_kind": None, "has_model": False, "has_tokens": False}
    assert classify(**kw) == "unrowed"
    assert classify(**{**kw, "has_tokens": True}) == "rowed"
    assert classify(**{**kw, "operation": "chat"}) == "rowed"
    assert classify(**{**kw, "operation": "invoke_agent", "has_model": True}) == "not_rowed"


def test_price_book_is_shared_and_extraction_never_raises_on_odd_ids() -> None:
    book = PriceBook(PRICES)
    ex = Extractor(ExtractConfig(), prices=book)
    req = request({"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 1})
    req.resource_spans[0].scope_spans[0].spans[0].trace_id = b""
    row = ex.extract(req).rows[0]
    assert row[COLUMNS.index("trace_id")] == "" and math.isclose(row[COLUMNS.index("cost_usd")], 2.5e-6)
