"""Extraction of the span layouts real OpenAI instrumentations write, one table row per case.

The attribute sets are those of spans captured from the interop suite (``tests/interop/``: the
real ``openai`` client, each instrumentation package, the real OTLP exporter), trimmed of the
attributes the extractor does not read, with prompt and completion attributes kept to show they
never reach a row. Versions: OpenLLMetry ``opentelemetry-instrumentation-openai`` 0.62, OpenInference
``openinference-instrumentation-openai`` 0.1.66, ``opentelemetry-instrumentation-openai-v2`` 2.4b0,
OpenLIT 1.45.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from sentinel.model import COLUMNS, FeatureBatch
from sidecar.attributes import invocation_parameters, normalize_error_type
from sidecar.detectors.local import LocalDetectionConfig, LocalDetector
from sidecar.extract import ExtractConfig, Extractor
from tests.test_extract import value

T0 = 1_700_000_000_000_000_000
MS = 1_000_000
PROMPT = "SECRET PROMPT text"
COMPLETION = "SECRET COMPLETION text"
# gpt-4o-mini at a fixed test price, so expected costs do not move with the genai-prices table.
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}
COST_10_5 = (10 * 0.15 + 5 * 0.6) / 1e6
ERROR = Status.STATUS_CODE_ERROR


Event = tuple[str, float, dict[str, Any]]


def span_request(attrs: dict[str, Any], *, ms: float = 400.0, events: tuple[Event, ...] = (),
                 status: int = Status.STATUS_CODE_UNSET) -> ExportTraceServiceRequest:
    """One span of ``ms`` duration with ``events`` as (name, ms after start, attributes)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=value("shop")))
    sp = rs.scope_spans.add().spans.add()
    sp.trace_id, sp.span_id, sp.name = b"\x01" * 16, b"\x02" * 8, "chat gpt-4o-mini"
    sp.start_time_unix_nano, sp.end_time_unix_nano = T0, T0 + int(ms * MS)
    sp.status.code = status
    for k, v in attrs.items():
        sp.attributes.append(KeyValue(key=k, value=value(v)))
    for name, at_ms, ev_attrs in events:
        ev = sp.events.add(name=name, time_unix_nano=T0 + int(at_ms * MS))
        for k, v in ev_attrs.items():
            ev.attributes.append(KeyValue(key=k, value=value(v)))
    return req


def row_of(req: ExportTraceServiceRequest, **kw: Any) -> dict[str, Any]:
    kw.setdefault("price_overrides", PRICES)
    result = Extractor(ExtractConfig(**kw)).extract(req)
    assert result.llm_calls == 1
    return dict(zip(COLUMNS, result.rows[0], strict=True))


EXC = {"exception.type": "openai.RateLimitError", "exception.message": f"Error code: 429 {PROMPT}",
       "exception.stacktrace": "Traceback ...", "exception.escaped": "False"}
INVOCATION = json.dumps({"model": "gpt-4o-mini", "user": "u-42", "stream": True,
                         "stream_options": {"include_usage": True}})

# (case, attributes, events, status, expected fields)
CASES: list[tuple[str, dict[str, Any], tuple[Any, ...], int, dict[str, Any]]] = [
    ("openllmetry-stream", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.user": "u-42", "gen_ai.is_streaming": True, "gen_ai.openai.api_base": "http://127.0.0.1:1/v1/",
        "gen_ai.input.messages": PROMPT, "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-x", "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.total_tokens": 15, "gen_ai.usage.output_tokens": 5, "gen_ai.usage.input_tokens": 10,
        "gen_ai.output.messages": COMPLETION,
    }, (("gen_ai.content.completion.chunk", 120.0, {}), ("gen_ai.content.completion.chunk", 150.0, {})),
        Status.STATUS_CODE_OK,
        {"operation": "chat", "provider": "openai", "request_model": "gpt-4o-mini",
         "response_model": "gpt-4o-mini-2024-07-18", "ttft_ms": 120.0, "user": "u-42", "input_tokens": 10,
         "output_tokens": 5, "finish_reason": "stop", "is_error": False, "error_type": None,
         "cost_usd": COST_10_5}),
    ("openllmetry-429", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.user": "u-42", "gen_ai.headers": "{'x-fake-fault': '429'}", "gen_ai.is_streaming": False,
        "gen_ai.input.messages": PROMPT, "error.type": "RateLimitError",
    }, (("exception", 30.0, EXC),), ERROR,
        {"request_model": "gpt-4o-mini", "response_model": None, "ttft_ms": None, "user": "u-42",
         "is_error": True, "error_type": "RateLimitError", "cost_usd": None}),
    ("openllmetry-legacy-stream", {  # before the gen_ai.* renames
        "llm.request.type": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "llm.user": "u-42", "llm.is_streaming": True, "gen_ai.usage.prompt_tokens": 10,
        "gen_ai.usage.completion_tokens": 5,
    }, (("llm.content.completion.chunk", 80.0, {}),), Status.STATUS_CODE_UNSET,
        {"operation": "chat", "ttft_ms": 80.0, "user": "u-42", "cost_usd": COST_10_5}),
    ("openinference-stream", {
        "openinference.span.kind": "LLM", "llm.system": "openai", "input.mime_type": "application/json",
        "llm.model_name": "gpt-4o-mini-2024-07-18", "llm.invocation_parameters": INVOCATION,
        "llm.token_count.prompt": 10, "llm.token_count.completion": 5, "llm.token_count.total": 15,
        "llm.finish_reason": "stop", "input.value": PROMPT, "output.value": COMPLETION,
        "llm.input_messages.0.message.content": PROMPT,
    }, (("First Token Stream Event", 95.5, {}),), Status.STATUS_CODE_OK,
        {"operation": "chat", "provider": "openai", "request_model": "gpt-4o-mini",
         "response_model": "gpt-4o-mini-2024-07-18", "ttft_ms": 95.5, "user": "u-42", "finish_reason": "stop",
         "is_error": False, "error_type": None, "cost_usd": COST_10_5}),
    ("openinference-429", {
        "openinference.span.kind": "LLM", "llm.provider": "openai", "llm.system": "openai",
        "llm.invocation_parameters": json.dumps({"model": "gpt-4o-mini"}), "input.value": PROMPT,
    }, (("exception", 30.0, EXC),), ERROR,
        {"request_model": "gpt-4o-mini", "response_model": None, "is_error": True, "error_type": "RateLimitError",
         "user": None, "cost_usd": None}),
    ("openinference-embedding", {
        "openinference.span.kind": "EMBEDDING", "llm.provider": "openai", "llm.system": "openai",
        "embedding.model_name": "text-embedding-3-small",
        "embedding.invocation_parameters": json.dumps({"model": "text-embedding-3-small", "encoding_format": "base64"}),
        "llm.token_count.prompt": 8, "llm.token_count.total": 8, "embedding.embeddings.0.embedding.text": PROMPT,
    }, (), Status.STATUS_CODE_OK,
        {"operation": "embeddings", "request_model": "text-embedding-3-small",
         "response_model": "text-embedding-3-small", "input_tokens": 8, "output_tokens": None}),
    ("genai-v2-stream", {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.system": "openai",
        "server.address": "127.0.0.1", "server.port": 4000, "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-x", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
    }, (), Status.STATUS_CODE_UNSET,  # 2.4b0 writes no user, TTFT or (on streams) finish reason
        {"operation": "chat", "provider": "openai", "request_model": "gpt-4o-mini", "ttft_ms": None,
         "user": None, "finish_reason": None, "cost_usd": COST_10_5}),
    ("genai-v2-429", {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "error.type": "<class 'openai.RateLimitError'>",
    }, (), ERROR, {"is_error": True, "error_type": "RateLimitError"}),
    ("genai-v2-timeout", {
        "gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "error.type": "APITimeoutError",
    }, (), ERROR, {"is_error": True, "error_type": "APITimeoutError"}),
    ("openlit-stream", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18", "gen_ai.request.stream": True,
        "gen_ai.request.user": "u-42", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5,
        "gen_ai.server.time_to_first_token": 0.125, "gen_ai.server.time_per_output_token": 0.01,
        "gen_ai.usage.cost": 0.0, "gen_ai.response.finish_reasons": ["stop"],
    }, (), Status.STATUS_CODE_OK,
        {"operation": "chat", "request_model": "gpt-4o-mini", "ttft_ms": 125.0, "user": "u-42",
         "cost_usd": COST_10_5, "finish_reason": "stop"}),
    ("openlit-no-stream", {  # OpenLIT's TTFT is the whole latency here: not a TTFT
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.stream": False, "gen_ai.request.user": "", "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5, "gen_ai.server.time_to_first_token": 0.4, "gen_ai.usage.cost": 0.0,
    }, (), Status.STATUS_CODE_OK, {"ttft_ms": None, "user": None, "cost_usd": COST_10_5}),
    ("openlit-500", {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.stream": False, "error.type": "InternalServerError",
    }, (("exception", 20.0, {**EXC, "exception.type": "openai.InternalServerError"}),), ERROR,
        {"is_error": True, "error_type": "InternalServerError", "cost_usd": None}),
    ("http-status-only", {
        "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "http.response.status_code": 503,
    }, (), Status.STATUS_CODE_UNSET, {"is_error": True, "error_type": "503"}),
]


@pytest.mark.parametrize(("case", "attrs", "events", "status", "expected"), CASES, ids=[c[0] for c in CASES])
def test_family_span_layouts(case: str, attrs: dict[str, Any], events: tuple[Any, ...], status: int,
                             expected: dict[str, Any]) -> None:
    row = row_of(span_request(attrs, events=events, status=status))
    got = {k: row[k] for k in expected}
    if expected.get("cost_usd") is not None:
        assert got.pop("cost_usd") == pytest.approx(expected["cost_usd"])
        expected = {k: v for k, v in expected.items() if k != "cost_usd"}
    assert got == expected
    assert row["latency_ms"] == 400.0 and row["service"] == "shop"
    for secret in (PROMPT, COMPLETION, "Traceback"):
        assert secret not in repr(row)


def test_invocation_parameter_user_is_dropped_without_capture_user() -> None:
    attrs = {"openinference.span.kind": "LLM", "llm.invocation_parameters": INVOCATION}
    assert row_of(span_request(attrs))["user"] == "u-42"
    assert row_of(span_request(attrs), capture_user=False)["user"] is None


def test_bad_invocation_parameters_are_counted_and_the_model_name_still_keys_the_row() -> None:
    req = span_request({"openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini-2024-07-18",
                        "llm.invocation_parameters": "{not json"})
    result = Extractor(ExtractConfig()).extract(req)
    assert result.bad_attributes == 1
    row = dict(zip(COLUMNS, result.rows[0], strict=True))
    assert row["request_model"] == row["response_model"] == "gpt-4o-mini-2024-07-18"


def test_an_explicit_ttft_wins_over_events_and_events_before_the_start_are_ignored() -> None:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m", "gen_ai.response.time_to_first_chunk": 0.05}
    events = (("First Token Stream Event", 90.0, {}),)
    assert row_of(span_request(attrs, events=events))["ttft_ms"] == 50.0
    del attrs["gen_ai.response.time_to_first_chunk"]
    assert row_of(span_request(attrs, events=(("First Token Stream Event", -1.0, {}),)))["ttft_ms"] is None
    # other events (and their bodies) are not a first token
    assert row_of(span_request(attrs, events=(("gen_ai.choice", 10.0, {"body": COMPLETION}),)))["ttft_ms"] is None


def test_an_exception_event_is_read_only_for_a_failed_span_without_error_type() -> None:
    attrs = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}
    events = (("exception", 5.0, EXC),)
    assert row_of(span_request(attrs, events=events))["error_type"] is None  # not a failed span
    assert row_of(span_request(attrs, events=events, status=ERROR))["error_type"] == "RateLimitError"
    assert row_of(span_request({**attrs, "error.type": "timeout"}, events=events, status=ERROR))["error_type"] \
        == "timeout"
    wrong = (("exception", 5.0, {"exception.type": 7}),)
    result = Extractor(ExtractConfig()).extract(span_request(attrs, events=wrong, status=ERROR))
    assert result.bad_attributes == 1 and result.rows[0][COLUMNS.index("error_type")] is None


def test_cost_zero_with_tokens_is_priced_and_only_unpriced_models_are_unknown() -> None:
    ex = Extractor(ExtractConfig(price_overrides=PRICES))
    base = {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 5}
    spans = [
        {**base, "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.cost": 0.0},  # priced from the table
        {**base, "gen_ai.request.model": "no-such-model-q", "gen_ai.usage.cost": 0.0},  # unknown
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"},  # failed call: no tokens
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "no-such-model-q"},  # unknown
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.cost": 0.0,
         "gen_ai.usage.input_tokens": 0},  # a real zero
    ]
    costs, unknown = [], 0
    for attrs in spans:
        result = ex.extract(span_request(attrs))
        costs.append(result.rows[0][COLUMNS.index("cost_usd")])
        unknown += result.unknown_cost
    assert costs[0] == pytest.approx(COST_10_5)
    assert costs[1:] == [None, None, None, 0.0]
    assert unknown == 2


@pytest.mark.parametrize(("raw", "short"), [
    ("openai.RateLimitError", "RateLimitError"),
    ("<class 'openai.RateLimitError'>", "RateLimitError"),
    ("<class 'openai._exceptions.APITimeoutError'>", "APITimeoutError"),
    ("RateLimitError", "RateLimitError"),
    ("timeout", "timeout"),
    ("429", "429"),
    ("_OTHER", "_OTHER"),
    ("rate_limit_exceeded", "rate_limit_exceeded"),
    ("  ", None),
    ("1.5", "1.5"),  # not a dotted class name
])
def test_normalize_error_type(raw: str, short: str | None) -> None:
    assert normalize_error_type(raw) == short


@pytest.mark.parametrize(("text", "parsed"), [
    ('{"model": "m", "user": "u"}', ("m", "u")),
    ('{"model": "m"}', ("m", None)),
    ('{"model": 3, "user": ""}', (None, None)),
    ("[1, 2]", None),
    ("{", None),
    ("[" * 100_000, None),  # nested too deeply
])
def test_invocation_parameters(text: str, parsed: tuple[str | None, str | None] | None) -> None:
    assert invocation_parameters(text) == parsed


def test_a_ttft_regression_on_streamed_calls_is_detected() -> None:
    """Streamed calls' event TTFT feeds the local ttft_ms detector, which flags a regression."""
    ex = Extractor(ExtractConfig(price_overrides=PRICES))
    detector = LocalDetector(LocalDetectionConfig.from_mapping({}))
    attrs = {"openinference.span.kind": "LLM", "llm.invocation_parameters": INVOCATION, "llm.token_count.completion": 5}
    anomalies = []
    for i in range(200):
        ttft = 2000.0 if i >= 190 else 100.0 + (i % 7) * 3.0
        rows = ex.extract(span_request(attrs, ms=ttft + 300.0, events=(("First Token Stream Event", ttft, {}),))).rows
        anomalies.extend(detector.process(FeatureBatch.from_rows(rows)))
    flagged = [a for a in anomalies if a.metric == "ttft_ms"]
    assert flagged and all(a.value == 2000.0 for a in flagged)
    assert flagged[0].model == "gpt-4o-mini"
