"""GenAI spans → feature rows: one :data:`sentinel.model.Row` per LLM call in an OTLP request.

This is the sidecar's hot path. Each span's attributes are walked once; a key is tested against
a dict of the keys we want (:mod:`sidecar.attributes`) and a value is only decoded for those.
Nothing here raises on bad input: a wrong-typed attribute leaves its column ``None`` and is
counted. Prompt and completion content is never read.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
>>> Extractor(ExtractConfig()).extract(ExportTraceServiceRequest()).spans
0
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sentinel.model import Row
from sentinel.pricing import PriceBook, parse_overrides
from sidecar.attributes import ROWED, classify, normalize_operation, resource_keys, span_keys

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["ExtractConfig", "ExtractResult", "Extractor"]

_STATUS_CODE_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

# Kind codes, compared in the hot loop.
_STR, _INT, _FLOAT, _STR_ARRAY = range(4)
_KIND_CODES = {"str": _STR, "int": _INT, "float": _FLOAT, "str[]": _STR_ARRAY}

# Internal value slots: the row columns read from span attributes, then the helper values.
_SLOTS = ("operation", "provider", "request_model", "response_model", "ttft_ms", "input_tokens",
          "output_tokens", "cost_usd", "error_type", "finish_reason", "user", "_request_type",
          "_total_tokens", "_traceloop_kind", "_openinference_kind", "_cost_input", "_cost_output",
          "_api_key")
(_OP, _PROVIDER, _REQ_MODEL, _RESP_MODEL, _TTFT, _IN, _OUT, _COST, _ERR_TYPE, _FINISH, _USER,
 _REQ_TYPE, _TOTAL, _TL_KIND, _OI_KIND, _COST_IN, _COST_OUT, _API_KEY) = range(len(_SLOTS))
_NSLOTS = len(_SLOTS)
_NSLOTS2 = 2 * _NSLOTS


@dataclass(frozen=True, kw_only=True)
class ExtractConfig:
    """What the extractor keeps. ``ExtractConfig(capture_user=False)``.

    ``api_key_attributes`` names span attributes that carry an API key (or its id); the row gets
    the first 16 hex digits of its SHA-256, never the value. ``price_overrides`` is the ``prices``
    setting, ``{model: {input: USD/M tokens, output: USD/M tokens}}``.
    """

    capture_user: bool = True
    hash_user: bool = False
    api_key_attributes: tuple[str, ...] = ()
    price_overrides: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`sentinel.config.ConfigError` naming the bad ``prices.<model>.<field>``."""
        parse_overrides(self.price_overrides)

    @classmethod
    def from_settings(cls, settings: Any, *, api_key_attributes: Sequence[str] = ()) -> ExtractConfig:
        """From a ``SidecarConfig`` (its ``capture_user``, ``hash_user`` and ``prices``)."""
        return cls(capture_user=settings.capture_user, hash_user=settings.hash_user,
                   api_key_attributes=tuple(api_key_attributes), price_overrides=dict(settings.prices))


@dataclass(slots=True)
class ExtractResult:
    """Rows of one request and what was seen on the way."""

    rows: list[Row] = field(default_factory=list)
    spans: int = 0  # every span in the request
    llm_calls: int = 0  # spans that became rows
    bad_attributes: int = 0  # wanted attributes of the wrong type (their column left None)
    unknown_cost: int = 0  # rows whose cost could not be determined


class Extractor:
    """Turns ``ExportTraceServiceRequest`` messages into rows; keep one per sidecar (it caches prices)."""

    def __init__(self, settings: ExtractConfig, *, prices: PriceBook | None = None) -> None:
        self.settings = settings
        self.prices = prices if prices is not None else PriceBook(settings.price_overrides)
        slot_of = {name: i for i, name in enumerate(_SLOTS)}
        # key -> (slot, kind code, rank, scale); rank is the table position (lower wins).
        self._span_keys: dict[str, tuple[int, int, int, float]] = {}
        for rank, a in enumerate(span_keys(capture_user=settings.capture_user)):
            self._span_keys[a.key] = (slot_of[a.column], _KIND_CODES[a.kind], rank, a.scale)
        base = len(self._span_keys)
        for i, key in enumerate(settings.api_key_attributes):
            self._span_keys.setdefault(key, (_API_KEY, _STR, base + i, 1.0))
        self._resource_keys = {a.key: i for i, a in enumerate(resource_keys())}
        self._hash_user = settings.hash_user

    def extract(self, request: ExportTraceServiceRequest) -> ExtractResult:
        result = ExtractResult()
        rows = result.rows
        wanted = self._span_keys.get
        cost_of = self.prices.cost
        hash_user = self._hash_user
        spans = llm_calls = bad = unknown_cost = 0
        nslots, nslots2, k_str, k_int, k_float = _NSLOTS, _NSLOTS2, _STR, _INT, _FLOAT  # locals: faster
        for resource_spans in request.resource_spans:
            service, namespace, pod, region, rbad = self._resource(resource_spans)
            bad += rbad
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans += 1
                    # vals[slot] is the value, vals[slot + _NSLOTS] the rank of the key it came from.
                    vals: list[Any] = [None] * nslots2
                    for kv in span.attributes:
                        spec = wanted(kv.key)
                        if spec is None:
                            continue
                        slot, kind, rank, scale = spec
                        if vals[slot] is not None and vals[slot + nslots] <= rank:
                            continue
                        v = kv.value
                        # Read the expected field first: a oneof returns its default when another
                        # member is set, so WhichOneof is only needed for empty/zero values.
                        if kind == k_str:
                            val: Any = v.string_value
                            if not val and v.WhichOneof("value") != "string_value":
                                bad += 1
                                continue
                        elif kind == k_int:
                            val = v.int_value
                            if val <= 0 and (val < 0 or v.WhichOneof("value") != "int_value"):
                                bad += 1
                                continue
                        elif kind == k_float:
                            val = v.double_value
                            if not val:
                                which = v.WhichOneof("value")
                                if which == "int_value":
                                    val = float(v.int_value)
                                elif which != "double_value":
                                    bad += 1
                                    continue
                            if not val >= 0.0:  # negative or NaN
                                bad += 1
                                continue
                            val *= scale
                        else:  # _STR_ARRAY: the first element; a lone string is taken as is
                            which = v.WhichOneof("value")
                            if which == "array_value":
                                items = v.array_value.values
                                if not items:
                                    continue
                                first = items[0]
                                val = first.string_value
                                if not val and first.WhichOneof("value") != "string_value":
                                    bad += 1
                                    continue
                            elif which == "string_value":
                                val = v.string_value
                            else:
                                bad += 1
                                continue
                        vals[slot] = val
                        vals[slot + nslots] = rank

                    request_model = vals[_REQ_MODEL]
                    response_model = vals[_RESP_MODEL]
                    input_tokens = vals[_IN]
                    output_tokens = vals[_OUT]
                    verdict = classify(
                        operation=vals[_OP], request_type=vals[_REQ_TYPE],
                        openinference_kind=vals[_OI_KIND], traceloop_kind=vals[_TL_KIND],
                        has_model=request_model is not None or response_model is not None,
                        has_tokens=input_tokens is not None or output_tokens is not None
                        or vals[_TOTAL] is not None)
                    if verdict != ROWED:
                        continue
                    llm_calls += 1

                    start = span.start_time_unix_nano
                    end = span.end_time_unix_nano
                    latency_ms = (end - start) / 1e6 if start and end and end >= start else None
                    ttft_ms = vals[_TTFT]
                    tokens_per_s = None
                    if output_tokens is not None and latency_ms is not None:
                        gen_ms = latency_ms if ttft_ms is None else latency_ms - ttft_ms
                        if gen_ms > 0.0:
                            tokens_per_s = output_tokens * 1000.0 / gen_ms

                    provider = vals[_PROVIDER]
                    cost = vals[_COST]
                    if cost is None:
                        cost_in, cost_out = vals[_COST_IN], vals[_COST_OUT]
                        if cost_in is not None or cost_out is not None:
                            cost = (cost_in or 0.0) + (cost_out or 0.0)
                        else:
                            cost = cost_of(provider, response_model or request_model, input_tokens,
                                           output_tokens, alt_model=request_model)
                            if cost is None:
                                unknown_cost += 1

                    error_type = vals[_ERR_TYPE]
                    is_error = error_type is not None or span.status.code == _STATUS_CODE_ERROR
                    user = vals[_USER]
                    if user is not None and hash_user:
                        user = hashlib.sha256(user.encode()).hexdigest()
                    api_key = vals[_API_KEY]
                    if api_key is not None:
                        api_key = hashlib.sha256(api_key.encode()).hexdigest()[:16]

                    rows.append((
                        start, service, namespace, pod, region,
                        normalize_operation(vals[_OP], vals[_REQ_TYPE], vals[_OI_KIND]),
                        provider, request_model, response_model, latency_ms, ttft_ms,
                        input_tokens, output_tokens, tokens_per_s, cost, is_error, error_type,
                        vals[_FINISH], user, api_key, span.trace_id.hex(), span.span_id.hex(),
                    ))
        result.spans = spans
        result.llm_calls = llm_calls
        result.bad_attributes = bad
        result.unknown_cost = unknown_cost
        return result

    def _resource(self, resource_spans: Any) -> tuple[str | None, str | None, str | None, str | None, int]:
        """(service, namespace, pod, region, bad attribute count) of one ResourceSpans."""
        out: list[str | None] = [None, None, None, None]
        bad = 0
        keys = self._resource_keys
        for kv in resource_spans.resource.attributes:
            i = keys.get(kv.key)
            if i is None:
                continue
            if kv.value.WhichOneof("value") != "string_value":
                bad += 1
                continue
            out[i] = kv.value.string_value
        return out[0], out[1], out[2], out[3], bad
