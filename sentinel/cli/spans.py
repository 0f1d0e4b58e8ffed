"""Realistic, seeded OTLP trace requests of LLM calls, for tests, the demo and benchmarks.

>>> import random
>>> request = build_trace_request(100, rng=random.Random(7), family="openinference")
>>> sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
100

Token counts are lognormal (heavy-tailed, as real prompts and completions are) and latency grows
with the output tokens. Spans made anomalous by :func:`anomalous_span` carry the attribute
``loadtest.injected`` naming the anomaly, as ground truth for detection tests.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_SERVICES",
    "DEFAULT_START_UNIX_NANO",
    "FAMILIES",
    "INJECTED_ATTRIBUTE",
    "Family",
    "ModelProfile",
    "anomalous_span",
    "build_trace_payloads",
    "build_trace_request",
    "call_attributes",
    "set_attribute",
    "span_name",
]

Family = Literal["genai", "genai_deprecated", "openllmetry", "openinference"]
FAMILIES: tuple[Family, ...] = ("genai", "genai_deprecated", "openllmetry", "openinference")
INJECTED_ATTRIBUTE = "loadtest.injected"
DEFAULT_START_UNIX_NANO = 1_750_000_000 * 10**9  # 2025-06-15, fixed so that output is reproducible
DEFAULT_SERVICES = ("support-chat", "search-rag", "doc-summarizer", "code-review-bot")
_REGIONS = ("eu-west-1", "us-east-1", "ap-southeast-2")
_SCOPES: dict[Family, tuple[str, str]] = {
    "genai": ("opentelemetry.instrumentation.openai_v2", "2.1b0"),
    "genai_deprecated": ("opentelemetry.instrumentation.openai_v2", "2.0b0"),
    "openllmetry": ("opentelemetry.instrumentation.openai.v1", "0.40.2"),
    "openinference": ("openinference.instrumentation.openai", "0.1.28"),
}


class ModelProfile(NamedTuple):
    """A model as the generator sees it; latency = (first_token_ms + ms_per_token * output) * noise."""

    provider: str
    request_model: str
    response_model: str
    server_address: str
    first_token_ms: float
    ms_per_token: float


DEFAULT_MODELS = (
    ModelProfile("openai", "gpt-4o", "gpt-4o-2024-08-06", "api.openai.com", 450.0, 14.0),
    ModelProfile("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18", "api.openai.com", 300.0, 7.0),
    ModelProfile("anthropic", "claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022", "api.anthropic.com",
                 600.0, 16.0),
    ModelProfile("aws.bedrock", "anthropic.claude-3-haiku-20240307-v1:0", "anthropic.claude-3-haiku-20240307-v1:0",
                 "bedrock-runtime.us-east-1.amazonaws.com", 350.0, 6.0),
)

# Failures as (error.type, http status), picked uniformly when a call fails.
_ERRORS = (("RateLimitError", 429), ("InternalServerError", 500), ("APITimeoutError", 504))
_FINISH_REASONS = ("stop", "stop", "stop", "stop", "length", "tool_calls")


def build_trace_request(
    n_spans: int,
    *,
    rng: random.Random | np.random.Generator,
    services: Sequence[str] = DEFAULT_SERVICES,
    models: Sequence[ModelProfile] = DEFAULT_MODELS,
    start_unix_nano: int = DEFAULT_START_UNIX_NANO,
    latency_scale: float = 1.0,
    error_rate: float = 0.01,
    outlier_rate: float = 0.0,
    family: Family = "genai",
) -> ExportTraceServiceRequest:
    """``n_spans`` LLM chat spans, grouped by service into one ResourceSpans each.

    Calls start on average 20 ms apart from ``start_unix_nano``. ``latency_scale`` multiplies
    every latency (a slow provider); ``outlier_rate`` is the share of spans passed through
    :func:`anomalous_span` (10x latency).
    """
    if family not in FAMILIES:
        raise ValueError(f"family: {family!r} is not one of {', '.join(FAMILIES)}")
    if not services or not models:
        raise ValueError("services and models must not be empty")
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng.getrandbits(128))

    service_of = g.integers(0, len(services), n_spans)
    model_of = g.integers(0, len(models), n_spans)
    input_tokens = np.clip(g.lognormal(np.log(700.0), 0.9, n_spans), 5, 120_000).astype(np.int64)
    output_tokens = np.clip(g.lognormal(np.log(180.0), 0.8, n_spans), 1, 8_192).astype(np.int64)
    noise = g.lognormal(0.0, 0.25, n_spans)
    starts = start_unix_nano + np.cumsum(g.exponential(20e6, n_spans)).astype(np.int64)
    failed = g.random(n_spans) < error_rate
    outlier = g.random(n_spans) < outlier_rate
    ids = g.bytes(32 * n_spans)

    request = ExportTraceServiceRequest()
    scopes: dict[int, Any] = {}
    for s in np.unique(service_of).tolist():
        rs = request.resource_spans.add()
        region = _REGIONS[s % len(_REGIONS)]
        pod = f"{services[s]}-{g.bytes(4).hex()[:8]}-{g.bytes(3).hex()[:5]}"
        for key, value in (("service.name", services[s]), ("k8s.namespace.name", "llm-apps"),
                           ("k8s.pod.name", pod), ("cloud.region", region), ("telemetry.sdk.language", "python")):
            _set(rs.resource.attributes.add(), key, value)
        ss = rs.scope_spans.add()
        ss.scope.name, ss.scope.version = _SCOPES[family]
        scopes[s] = ss

    for i in range(n_spans):
        m = models[int(model_of[i])]
        out = 0 if failed[i] else int(output_tokens[i])
        latency_ms = (m.first_token_ms + m.ms_per_token * out + 0.02 * int(input_tokens[i])) * float(noise[i])
        span = scopes[int(service_of[i])].spans.add()
        span.trace_id = ids[32 * i:32 * i + 16]
        span.span_id = ids[32 * i + 16:32 * i + 24]
        span.parent_span_id = ids[32 * i + 24:32 * i + 32]
        span.kind = Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano = int(starts[i])
        span.end_time_unix_nano = int(starts[i]) + int(latency_ms * latency_scale * 1e6)
        error = _ERRORS[int(g.integers(0, len(_ERRORS)))] if failed[i] else None
        finish = _FINISH_REASONS[int(g.integers(0, len(_FINISH_REASONS)))]
        call = _Call(m, int(input_tokens[i]), out, finish, error, g.bytes(6).hex())
        span.name = _span_name(family, m)
        for key, value in _attributes(family, call):
            _set(span.attributes.add(), key, value)
        if error is not None:
            span.status.code = Status.STATUS_CODE_ERROR
            span.status.message = f"{error[0]}: HTTP {error[1]}"
        if outlier[i]:
            anomalous_span(span)
    return request


def anomalous_span(span: Span, *, latency_factor: float = 10.0) -> Span:
    """Stretch ``span``'s duration by ``latency_factor`` and mark it as a ``latency_spike``."""
    duration = span.end_time_unix_nano - span.start_time_unix_nano
    span.end_time_unix_nano = span.start_time_unix_nano + int(duration * latency_factor)
    _set(span.attributes.add(), INJECTED_ATTRIBUTE, "latency_spike")
    return span


def build_trace_payloads(count: int, spans_per_request: int, seed: int,
                         family: Family = "genai") -> list[bytes]:
    """``count`` serialized ExportTraceServiceRequests, consecutive in time, for benchmarks."""
    g = np.random.default_rng(seed)
    payloads = []
    start = DEFAULT_START_UNIX_NANO
    for _ in range(count):
        request = build_trace_request(spans_per_request, rng=g, start_unix_nano=start, family=family)
        payloads.append(request.SerializeToString())
        start += spans_per_request * 20_000_000
    return payloads


def call_attributes(family: Family, model: ModelProfile, input_tokens: int, output_tokens: int, finish_reason: str,
                    error: tuple[str, int] | None, response_id: str) -> list[tuple[str, Any]]:
    """The span attributes of one LLM call in ``family``'s names (as :func:`build_trace_request` writes
    them): request, response and usage attributes (the latter two only when ``error`` is None), server
    address, HTTP status, and ``error.type`` (``error`` = (error type, HTTP status))."""
    return _attributes(family, _Call(model, input_tokens, output_tokens, finish_reason, error, response_id))


def span_name(family: Family, model: ModelProfile) -> str:
    """The span name an instrumentation of ``family`` gives a chat call to ``model``."""
    return _span_name(family, model)


def set_attribute(kv: KeyValue, key: str, value: Any) -> None:
    """Fill an OTLP ``KeyValue`` (str, bool, int, float or a list of str)."""
    _set(kv, key, value)


class _Call(NamedTuple):
    model: ModelProfile
    input_tokens: int
    output_tokens: int
    finish_reason: str
    error: tuple[str, int] | None
    response_id: str


def _span_name(family: Family, m: ModelProfile) -> str:
    if family == "openllmetry":
        return f"{m.provider.split('.')[0]}.chat"
    if family == "openinference":
        return "ChatCompletion"
    return f"chat {m.request_model}"


def _attributes(family: Family, c: _Call) -> list[tuple[str, Any]]:
    m = c.model
    total = c.input_tokens + c.output_tokens
    if family == "openinference":
        attrs: list[tuple[str, Any]] = [
            ("openinference.span.kind", "LLM"),
            ("llm.provider", m.provider), ("llm.system", m.provider.split(".")[0]),
            ("llm.model_name", m.response_model),
            ("llm.invocation_parameters", json.dumps({"model": m.request_model, "temperature": 0.7,
                                                      "max_tokens": 1024})),
        ]
        if c.error is None:
            attrs += [("llm.token_count.prompt", c.input_tokens), ("llm.token_count.completion", c.output_tokens),
                      ("llm.token_count.total", total)]
    elif family == "openllmetry":
        attrs = [
            ("llm.request.type", "chat"), ("gen_ai.system", m.provider),
            ("gen_ai.request.model", m.request_model), ("gen_ai.request.temperature", 0.7),
            ("gen_ai.request.max_tokens", 1024), ("llm.is_streaming", False),
            ("traceloop.workflow.name", "answer_question"),
        ]
        if c.error is None:
            attrs += [("gen_ai.response.model", m.response_model), ("gen_ai.response.id", f"chatcmpl-{c.response_id}"),
                      ("gen_ai.usage.prompt_tokens", c.input_tokens),
                      ("gen_ai.usage.completion_tokens", c.output_tokens), ("llm.usage.total_tokens", total),
                      ("gen_ai.completion.0.finish_reason", c.finish_reason)]
    else:
        deprecated = family == "genai_deprecated"
        attrs = [
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.system" if deprecated else "gen_ai.provider.name", m.provider),
            ("gen_ai.request.model", m.request_model), ("gen_ai.request.temperature", 0.7),
            ("gen_ai.request.max_tokens", 1024),
        ]
        if c.error is None:
            attrs += [("gen_ai.response.model", m.response_model), ("gen_ai.response.id", f"chatcmpl-{c.response_id}"),
                      ("gen_ai.usage.prompt_tokens" if deprecated else "gen_ai.usage.input_tokens", c.input_tokens),
                      ("gen_ai.usage.completion_tokens" if deprecated else "gen_ai.usage.output_tokens",
                       c.output_tokens),
                      ("gen_ai.response.finish_reasons", [c.finish_reason])]
    attrs += [("server.address", m.server_address), ("server.port", 443),
              ("http.response.status_code", 200 if c.error is None else c.error[1])]
    if c.error is not None:
        attrs.append(("error.type", c.error[0]))
    return attrs


def _set(kv: KeyValue, key: str, value: Any) -> None:
    kv.key = key
    if isinstance(value, bool):
        kv.value.bool_value = value
    elif isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, list):
        for item in value:
            kv.value.array_value.values.add().string_value = item
    else:
        kv.value.string_value = value
