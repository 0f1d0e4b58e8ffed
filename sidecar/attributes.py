"""Which span and resource attributes the extractor reads, and what each one becomes.

One table, :data:`ATTRIBUTES`, maps every attribute key we read to its target column, the value
kind we expect, the convention family it comes from and whether that family has deprecated it.
Anything not in the table is never looked at: prompt and completion content attributes
(``gen_ai.input.messages``, ``gen_ai.prompt``, ``llm.input_messages.*``, ``input.value``,
``traceloop.entity.input``, …) are deliberately absent, so they are never read or forwarded.

Families, in precedence order when several keys feed the same column (first present, well-typed
value wins; a wrong-typed value is counted and the next key is used):

1. ``genai`` — OpenTelemetry GenAI semantic conventions, current names (plus the general OTel
   attributes ``error.type`` and ``user.id``; and ``gen_ai.usage.cost``, not in the spec but the
   de-facto cost attribute used by Langfuse and several SDKs);
2. ``genai`` with ``deprecated=True`` — renamed GenAI names (``gen_ai.system``,
   ``gen_ai.usage.prompt_tokens``, ``enduser.id``, …);
3. ``openllmetry`` — Traceloop/OpenLLMetry (``llm.request.type``, ``llm.usage.*``, ``traceloop.*``,
   ``gen_ai.user``);
4. ``openlit`` — OpenLIT's own names (``gen_ai.request.user``, ``gen_ai.server.time_to_first_token``
   on spans, ``gen_ai.request.stream``);
5. ``openinference`` — Arize OpenInference (``llm.model_name``, ``llm.token_count.*``, ``llm.cost.*``,
   and ``model``/``user`` inside the ``llm.invocation_parameters`` JSON).

Span events are read by name and time only (never their attributes, which may hold content), with
one exception: ``exception.type`` of an ``exception`` event, a class name (:data:`FIRST_TOKEN_EVENTS`,
:data:`EXCEPTION_EVENT`).

Resource attributes (family ``resource``) are read once per ``ResourceSpans``.

Which spans are LLM calls (:func:`classify`):

- *not rowed* (orchestration: rowing them would double-count the LLM calls beneath them):
  ``gen_ai.operation.name`` in :data:`ORCHESTRATION_OPERATIONS` (invoke_agent, create_agent,
  execute_tool, invoke_workflow), an ``openinference.span.kind`` other than LLM/EMBEDDING
  (AGENT, TOOL, CHAIN, RETRIEVER, …), or a ``traceloop.span.kind`` (workflow, task, agent, tool);
- *rowed* otherwise if the span has a model (request or response), a token count (input, output
  or total), an LLM operation (:data:`LLM_OPERATIONS`, or any ``llm.request.type``), or
  ``openinference.span.kind`` LLM or EMBEDDING;
- every other span is counted, not rowed.
"""

from __future__ import annotations

import json
import re
from typing import NamedTuple

__all__ = [
    "ATTRIBUTES",
    "EXCEPTION_EVENT",
    "EXCEPTION_TYPE_KEY",
    "FAMILIES",
    "FIRST_TOKEN_EVENTS",
    "KINDS",
    "LLM_OPERATIONS",
    "NOT_ROWED",
    "OPENINFERENCE_LLM_KINDS",
    "ORCHESTRATION_OPERATIONS",
    "ROWED",
    "UNROWED",
    "Attribute",
    "classify",
    "invocation_parameters",
    "normalize_error_type",
    "normalize_operation",
    "resource_keys",
    "span_keys",
]

#: Convention families, in precedence order (``resource`` never competes with the others).
FAMILIES: tuple[str, ...] = ("genai", "openllmetry", "openlit", "openinference", "resource")

#: Expected value kinds. ``float`` also takes an OTLP int; ``str[]`` also takes a lone string
#: (first element used); ``json`` is a string holding a JSON object, of which only the ``model``
#: and ``user`` members are kept (:func:`invocation_parameters`); anything else is a wrong-typed
#: (bad) attribute.
KINDS: tuple[str, ...] = ("str", "int", "float", "str[]", "bool", "json")


class Attribute(NamedTuple):
    """One attribute key we read. ``column`` is a :data:`sentinel.model.COLUMNS` name or, when it
    starts with ``_``, an internal value used to classify the span or compute a column."""

    key: str
    column: str
    kind: str
    family: str
    deprecated: bool = False
    scale: float = 1.0  # multiply the value by this (seconds -> milliseconds)


# Ordered by precedence within each column: the extractor ranks keys by their position here.
ATTRIBUTES: tuple[Attribute, ...] = (
    # --- OpenTelemetry GenAI semantic conventions (current) and general OTel attributes
    Attribute("gen_ai.operation.name", "operation", "str", "genai"),
    Attribute("gen_ai.provider.name", "provider", "str", "genai"),
    Attribute("gen_ai.request.model", "request_model", "str", "genai"),
    Attribute("gen_ai.response.model", "response_model", "str", "genai"),
    Attribute("gen_ai.usage.input_tokens", "input_tokens", "int", "genai"),
    Attribute("gen_ai.usage.output_tokens", "output_tokens", "int", "genai"),
    Attribute("gen_ai.response.time_to_first_chunk", "ttft_ms", "float", "genai", scale=1000.0),
    Attribute("gen_ai.response.finish_reasons", "finish_reason", "str[]", "genai"),
    Attribute("gen_ai.usage.cost", "cost_usd", "float", "genai"),  # de-facto (Langfuse), not in spec
    Attribute("error.type", "error_type", "str", "genai"),
    Attribute("user.id", "user", "str", "genai"),
    # --- GenAI, deprecated names
    Attribute("gen_ai.system", "provider", "str", "genai", deprecated=True),
    Attribute("gen_ai.usage.prompt_tokens", "input_tokens", "int", "genai", deprecated=True),
    Attribute("gen_ai.usage.completion_tokens", "output_tokens", "int", "genai", deprecated=True),
    Attribute("enduser.id", "user", "str", "genai", deprecated=True),
    # --- OpenLLMetry / Traceloop (the llm.* names are its pre-gen_ai ones)
    Attribute("llm.request.type", "_request_type", "str", "openllmetry"),
    Attribute("llm.vendor", "provider", "str", "openllmetry", deprecated=True),
    Attribute("llm.request.model", "request_model", "str", "openllmetry", deprecated=True),
    Attribute("llm.response.model", "response_model", "str", "openllmetry", deprecated=True),
    Attribute("llm.usage.prompt_tokens", "input_tokens", "int", "openllmetry", deprecated=True),
    Attribute("llm.usage.completion_tokens", "output_tokens", "int", "openllmetry", deprecated=True),
    Attribute("llm.usage.total_tokens", "_total_tokens", "int", "openllmetry"),
    Attribute("gen_ai.usage.total_tokens", "_total_tokens", "int", "openllmetry"),
    Attribute("llm.response.finish_reason", "finish_reason", "str", "openllmetry"),
    # metadata beside the flattened completions; the .content siblings are never read
    Attribute("gen_ai.completion.0.finish_reason", "finish_reason", "str", "openllmetry"),
    Attribute("llm.response.stop_reason", "finish_reason", "str", "openllmetry"),
    Attribute("gen_ai.user", "user", "str", "openllmetry"),  # OpenAI's user=, renamed from llm.user
    Attribute("llm.user", "user", "str", "openllmetry", deprecated=True),
    Attribute("traceloop.association.properties.user_id", "user", "str", "openllmetry"),
    Attribute("traceloop.span.kind", "_traceloop_kind", "str", "openllmetry"),
    Attribute("gen_ai.is_streaming", "_stream", "bool", "openllmetry"),
    Attribute("llm.is_streaming", "_stream", "bool", "openllmetry", deprecated=True),
    # --- OpenLIT. Its span TTFT (seconds) equals the whole latency on non-streaming calls, so the
    # extractor uses it only when the span says it streamed (_stream).
    Attribute("gen_ai.request.user", "user", "str", "openlit"),
    Attribute("gen_ai.request.stream", "_stream", "bool", "openlit"),
    Attribute("gen_ai.server.time_to_first_token", "_stream_ttft_ms", "float", "openlit", scale=1000.0),
    # --- OpenInference / Arize Phoenix
    Attribute("openinference.span.kind", "_openinference_kind", "str", "openinference"),
    Attribute("llm.provider", "provider", "str", "openinference"),
    Attribute("llm.system", "provider", "str", "openinference"),
    Attribute("llm.request.model_name", "request_model", "str", "openinference"),
    # llm.model_name / embedding.model_name are what the response said (the dated model). The
    # request's model is in the invocation parameters (also on failed calls); the extractor makes
    # the named model the response model when those give the request model, else the request model.
    Attribute("llm.model_name", "_oi_model", "str", "openinference"),
    Attribute("embedding.model_name", "_oi_model", "str", "openinference"),
    Attribute("llm.invocation_parameters", "_oi_params", "json", "openinference"),
    Attribute("embedding.invocation_parameters", "_oi_params", "json", "openinference"),
    Attribute("llm.response.model_name", "response_model", "str", "openinference"),
    Attribute("llm.token_count.prompt", "input_tokens", "int", "openinference"),
    Attribute("llm.token_count.completion", "output_tokens", "int", "openinference"),
    Attribute("llm.token_count.total", "_total_tokens", "int", "openinference"),
    Attribute("llm.cost.total", "cost_usd", "float", "openinference"),
    Attribute("llm.cost.prompt", "_cost_input", "float", "openinference"),
    Attribute("llm.cost.completion", "_cost_output", "float", "openinference"),
    Attribute("llm.finish_reason", "finish_reason", "str", "openinference"),
    # --- HTTP status of the call, for an error type when the span names none
    Attribute("http.response.status_code", "_http_status", "int", "genai"),
    Attribute("http.status_code", "_http_status", "int", "genai", deprecated=True),
    # --- resource attributes (read once per ResourceSpans)
    Attribute("service.name", "service", "str", "resource"),
    Attribute("k8s.namespace.name", "namespace", "str", "resource"),
    Attribute("k8s.pod.name", "pod", "str", "resource"),
    Attribute("cloud.region", "region", "str", "resource"),
)

#: Span events whose time marks the first streamed chunk: OpenInference's, and OpenLLMetry's
#: one-per-chunk event (current and pre-gen_ai name; the first one counts).
FIRST_TOKEN_EVENTS = frozenset({"First Token Stream Event", "gen_ai.content.completion.chunk",
                                "llm.content.completion.chunk"})

#: The span event of a recorded exception, and the one attribute of it that is read (a class name;
#: ``exception.message`` and ``exception.stacktrace`` may quote content and are never read).
EXCEPTION_EVENT = "exception"
EXCEPTION_TYPE_KEY = b"exception.type"

#: ``gen_ai.operation.name`` values of spans that wrap LLM calls rather than being one.
ORCHESTRATION_OPERATIONS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})

#: ``gen_ai.operation.name`` values that are LLM calls by themselves.
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "embeddings"})

#: ``openinference.span.kind`` values that are LLM calls; every other kind is not rowed.
OPENINFERENCE_LLM_KINDS = frozenset({"LLM", "EMBEDDING"})

# OpenLLMetry's llm.request.type and OpenInference's span kind, in GenAI operation names.
_REQUEST_TYPE_OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings",
                            "rerank": "rerank"}
_OPENINFERENCE_OPERATIONS = {"LLM": "chat", "EMBEDDING": "embeddings"}

ROWED, NOT_ROWED, UNROWED = "rowed", "not_rowed", "unrowed"


def span_keys(*, capture_user: bool = True) -> tuple[Attribute, ...]:
    """The span-attribute entries of :data:`ATTRIBUTES` (user ids left out unless ``capture_user``)."""
    return tuple(a for a in ATTRIBUTES
                 if a.family != "resource" and (capture_user or a.column != "user"))


def resource_keys() -> tuple[Attribute, ...]:
    return tuple(a for a in ATTRIBUTES if a.family == "resource")


def normalize_operation(operation: str | None, request_type: str | None,
                        openinference_kind: str | None) -> str | None:
    """The row's ``operation``: the GenAI name if given, else translated from the other families.

    >>> normalize_operation(None, "completion", None)
    'text_completion'
    """
    if operation is not None:
        return operation
    if request_type is not None:
        return _REQUEST_TYPE_OPERATIONS.get(request_type)
    if openinference_kind is not None:
        return _OPENINFERENCE_OPERATIONS.get(openinference_kind)
    return None


def classify(*, operation: str | None, request_type: str | None, openinference_kind: str | None,
             traceloop_kind: str | None, has_model: bool, has_tokens: bool) -> str:
    """:data:`ROWED` (an LLM call), :data:`NOT_ROWED` (orchestration around LLM calls) or
    :data:`UNROWED` (some other span), by the rule in the module docstring.

    >>> classify(operation="invoke_agent", request_type=None, openinference_kind=None,
    ...          traceloop_kind=None, has_model=True, has_tokens=True)
    'not_rowed'
    """
    if operation in ORCHESTRATION_OPERATIONS or traceloop_kind is not None:
        return NOT_ROWED
    if openinference_kind is not None and openinference_kind not in OPENINFERENCE_LLM_KINDS:
        return NOT_ROWED
    if (has_model or has_tokens or operation in LLM_OPERATIONS or request_type is not None
            or openinference_kind is not None):
        return ROWED
    return UNROWED


_CLASS_REPR = re.compile(r"<class '([^']*)'>")


def normalize_error_type(value: str) -> str | None:
    """One short form for an error type, whichever family wrote it: the class name without its
    module (``openai.RateLimitError``, ``<class 'openai.RateLimitError'>`` -> ``RateLimitError``);
    other values (``timeout``, ``429``, ``_OTHER``) as they are; ``None`` for a blank one.

    >>> normalize_error_type("<class 'openai.APITimeoutError'>")
    'APITimeoutError'
    """
    text = value.strip()
    match = _CLASS_REPR.fullmatch(text)
    if match is not None:
        text = match.group(1)
    if "." in text and all(part.isidentifier() for part in text.split(".")):
        text = text.rsplit(".", 1)[1]
    return text or None


def invocation_parameters(text: str) -> tuple[str | None, str | None] | None:
    """``(model, user)`` from OpenInference's ``llm.invocation_parameters`` JSON (each ``None`` when
    absent or not a non-empty string), or ``None`` when the text is not a JSON object. Nothing else
    in it is kept.

    >>> invocation_parameters('{"model": "gpt-4o-mini", "user": "u-1", "temperature": 0}')
    ('gpt-4o-mini', 'u-1')
    """
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    model, user = doc.get("model"), doc.get("user")
    return (model if isinstance(model, str) and model else None,
            user if isinstance(user, str) and user else None)
