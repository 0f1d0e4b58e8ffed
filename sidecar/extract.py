"""GenAI spans → feature rows: one :data:`sentinel.model.Row` per LLM call in an OTLP request.

This is the sidecar's hot path. It reads the lean request of :mod:`sidecar.otlp_lite`, where each
attribute is a serialized ``KeyValue``: its key is sliced out and tested against a dict of the keys
we want (:mod:`sidecar.attributes`), and a value is only decoded for those.
Nothing here raises on bad input: a wrong-typed attribute leaves its column ``None`` and is
counted. Prompt and completion content is never read.

>>> from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
>>> Extractor(ExtractConfig()).extract(ExportTraceServiceRequest()).spans
0
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from google.protobuf.message import DecodeError

from sentinel.model import Row
from sentinel.pricing import PriceBook, parse_overrides
from sidecar.attributes import ROWED, classify, normalize_operation, resource_keys, span_keys
from sidecar.otlp_lite import (
    KIND_DOUBLE,
    KIND_INT,
    KIND_LIST,
    KIND_STR,
    TraceRequest,
    any_value,
    attribute,
    parse_traces,
)

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["ExtractConfig", "ExtractResult", "Extractor", "Resource"]

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

# Results of decoding one attribute, cached per serialized KeyValue (see Extractor.extract_spans).
_SKIP = object()
_BAD = object()
#: Most distinct serialized attributes remembered (cache and doorkeeper each); ~100 bytes each.
_ATTR_CACHE_MAX = 16_384


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
        # Keys as UTF-8 bytes: the hot loop matches them against slices of serialized KeyValues.
        self._span_keys: dict[bytes, tuple[int, int, int, float]] = {}
        for rank, a in enumerate(span_keys(capture_user=settings.capture_user)):
            self._span_keys[a.key.encode()] = (slot_of[a.column], _KIND_CODES[a.kind], rank, a.scale)
        base = len(self._span_keys)
        for i, key in enumerate(settings.api_key_attributes):
            self._span_keys.setdefault(key.encode(), (_API_KEY, _STR, base + i, 1.0))
        self._resource_keys = {a.key: i for i, a in enumerate(resource_keys())}
        self._hash_user = settings.hash_user
        self._attr_cache: dict[bytes, Any] = {}
        self._attr_seen_once: set[bytes] = set()

    def extract(self, request: ExportTraceServiceRequest | Any) -> ExtractResult:
        """Rows of a whole request: a generated ``ExportTraceServiceRequest`` or a lean one
        (:func:`sidecar.otlp_lite.parse_traces`, what the receivers hand over)."""
        if not isinstance(request, TraceRequest):
            request = parse_traces(request.SerializeToString())
        result = ExtractResult()
        for resource_spans in request.resource_spans:
            resource = self.resource(resource_spans)
            result.bad_attributes += resource.bad_attributes
            for scope_spans in resource_spans.scope_spans:
                self.extract_spans(resource, scope_spans.spans, result)
        return result

    def resource(self, resource_spans: Any) -> Resource:
        """The row fields a lean ``ResourceSpans`` gives to all its spans."""
        out: list[str | None] = [None, None, None, None]
        bad = 0
        keys = self._resource_keys
        for kv in resource_spans.resource.attributes:
            try:
                key, kind, value = attribute(kv)
            except (DecodeError, UnicodeDecodeError):
                bad += 1
                continue
            i = keys.get(key)
            if i is None:
                continue
            if kind != KIND_STR:
                bad += 1
                continue
            out[i] = value
        return Resource(out[0], out[1], out[2], out[3], bad)

    def extract_spans(self, resource: Resource, spans: Iterable[Any], result: ExtractResult | None = None
                      ) -> ExtractResult:
        """Add the rows of lean ``spans`` (all of one resource) to ``result`` (a new one if None).

        The resource's own bad attributes are not counted here (the caller counts them once).

        The pipeline calls this on slices of a request, so that a large request does not hold
        the event loop for long.
        """
        if result is None:
            result = ExtractResult()
        rows = result.rows
        cost_of = self.prices.cost
        hash_user = self._hash_user
        service, namespace, pod, region, _ = resource
        spans_seen = llm_calls = unknown_cost = 0
        bad = 0
        nslots, nslots2 = _NSLOTS, _NSLOTS2
        cache, seen_once = self._attr_cache, self._attr_seen_once
        cache_get, cache_max, decode = cache.get, _ATTR_CACHE_MAX, self._decode_attribute
        for span in spans:
            spans_seen += 1
            # vals[slot] is the value, vals[slot + _NSLOTS] the rank of the key it came from.
            vals: list[Any] = [None] * nslots2
            for kv in span.attributes:
                # Most attributes repeat byte for byte from span to span (model, operation,
                # provider, finish reason, unwanted ones): one dict probe on the serialized
                # KeyValue gives what decoding it would.
                hit = cache_get(kv)
                if hit is None:
                    hit = decode(kv)
                    # Admit on the second sighting only, so one-off values (response ids, token
                    # counts) churn the small doorkeeper set, not the cache of repeating ones.
                    if kv in seen_once:
                        if len(cache) >= cache_max:
                            cache.clear()
                        cache[kv] = hit
                    else:
                        if len(seen_once) >= cache_max:
                            seen_once.clear()
                        seen_once.add(kv)
                if hit is _SKIP:
                    continue
                if hit is _BAD:
                    bad += 1
                    continue
                slot, rank, val = hit
                if vals[slot] is not None and vals[slot + nslots] <= rank:
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
        result.spans += spans_seen
        result.llm_calls += llm_calls
        result.bad_attributes += bad
        result.unknown_cost += unknown_cost
        return result


    def _decode_attribute(self, kv: bytes) -> Any:
        """What one serialized span ``KeyValue`` contributes: ``_SKIP`` (not wanted), ``_BAD``
        (wanted but wrong-typed or damaged) or ``(slot, rank, value)``."""
        try:
            n = kv[1]
            if kv[0] == 0x0A and n < 0x80:
                spec = self._span_keys.get(kv[2:2 + n])
                if spec is None:
                    return _SKIP
                vkind, val = _value(kv, 2 + n)
            else:
                key, vkind, val = attribute(kv)
                spec = self._span_keys.get(key.encode())
                if spec is None:
                    return _SKIP
        except (IndexError, DecodeError, UnicodeDecodeError):
            return _BAD
        slot, kind, rank, scale = spec
        if kind == _STR:
            if vkind != KIND_STR:
                return _BAD
        elif kind == _INT:
            if vkind != KIND_INT or val < 0:
                return _BAD
        elif kind == _FLOAT:
            if vkind == KIND_INT:
                val = float(val)
            elif vkind != KIND_DOUBLE:
                return _BAD
            if not val >= 0.0:  # negative or NaN
                return _BAD
            val *= scale
        else:  # _STR_ARRAY: the first element; a lone string is taken as is
            if vkind == KIND_LIST:
                if val is None:
                    return _SKIP
                vkind, val = val
            if vkind != KIND_STR:
                return _BAD
        return (slot, rank, val)


class Resource(NamedTuple):
    """Row fields from resource attributes, and how many of them were wrong-typed."""

    service: str | None
    namespace: str | None
    pod: str | None
    region: str | None
    bad_attributes: int


def _value(kv: bytes, pos: int) -> tuple[int, Any]:
    """The value of a serialized ``KeyValue`` whose value field starts at ``pos``."""
    if kv[pos] != 0x12:
        _, kind, value = attribute(kv)
        return kind, value
    n = kv[pos + 1]
    if n < 0x80:
        return any_value(kv, pos + 2, pos + 2 + n)
    _, kind, value = attribute(kv)
    return kind, value
