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
from sentinel.quality import QualityEvent
from sentinel.security_event import SecurityEvent, SecurityEventError
from sentinel.wire import MAX_ABS_VALUE
from sidecar.attributes import (
    EXCEPTION_EVENT,
    EXCEPTION_TYPE_KEY,
    FIRST_TOKEN_EVENTS,
    LLM_OPERATIONS,
    ROWED,
    classify,
    invocation_parameters,
    normalize_error_type,
    normalize_operation,
    resource_keys,
    span_keys,
)
from sidecar.otlp_lite import (
    KIND_BOOL,
    KIND_DOUBLE,
    KIND_INT,
    KIND_LIST,
    KIND_STR,
    TraceRequest,
    any_value,
    attribute,
    parse_traces,
)
from sidecar.signal_extract import (
    QUALITY_KEY_PREFIXES,
    SignalContext,
    decode_attributes,
    is_signal_event,
    quality_from_attributes,
    signals_from_event,
)

if TYPE_CHECKING:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["ExtractConfig", "ExtractResult", "Extractor", "Resource"]

_STATUS_CODE_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR

# Kind codes, compared in the hot loop.
_STR, _INT, _FLOAT, _STR_ARRAY, _BOOL, _JSON = range(6)
_KIND_CODES = {"str": _STR, "int": _INT, "float": _FLOAT, "str[]": _STR_ARRAY, "bool": _BOOL, "json": _JSON}

# Internal value slots: the row columns read from span attributes, then the helper values.
_SLOTS = ("operation", "provider", "request_model", "response_model", "ttft_ms", "input_tokens",
          "output_tokens", "cost_usd", "error_type", "finish_reason", "user", "_request_type",
          "_total_tokens", "_traceloop_kind", "_openinference_kind", "_cost_input", "_cost_output",
          "_api_key", "_stream", "_stream_ttft_ms", "_oi_model", "_oi_params", "_http_status", "_quality")
(_OP, _PROVIDER, _REQ_MODEL, _RESP_MODEL, _TTFT, _IN, _OUT, _COST, _ERR_TYPE, _FINISH, _USER,
 _REQ_TYPE, _TOTAL, _TL_KIND, _OI_KIND, _COST_IN, _COST_OUT, _API_KEY, _STREAM, _STREAM_TTFT,
 _OI_MODEL, _OI_PARAMS, _HTTP_STATUS, _QUALITY) = range(len(_SLOTS))
# Per span, one list holds the values (index: slot) and, _NSLOTS further on, the rank of the
# key each came from (lower wins). One spare slot at the end absorbs unwanted attributes.
_NSLOTS = len(_SLOTS) + 1
_NO_RANK = 1 << 30
_EMPTY_VALS: list[Any] = [None] * _NSLOTS + [_NO_RANK] * _NSLOTS

# What decoding one attribute gives, cached per serialized KeyValue (see Extractor.extract_spans):
# (rank index, rank, value). _SKIP_ENTRY never wins its (spare) slot.
_SKIP_ENTRY = (2 * _NSLOTS - 1, _NO_RANK, None)
# A quality attribute (sentinel.eval.*, eval.*, ...): flags the span; its attributes are decoded later.
_QUALITY_ENTRY = (_QUALITY + _NSLOTS, 0, True)
_BAD = object()
#: Largest span start time a row can hold (its time_unix_nano column is int64); later ones are skipped.
_MAX_TIME = 2**63 - 1
#: Most distinct serialized attributes remembered (cache and doorkeeper each); ~100 bytes each.
_ATTR_CACHE_MAX = 16_384
#: Longest serialized attribute remembered: the cache and the doorkeeper then hold at most
#: 2 × 16,384 × 256 bytes (8 MiB) whatever the spans carry (distinct 32 KiB values took 65 MB).
_ATTR_CACHE_MAX_KV_BYTES = 256
#: Key fragments of content attributes (prompts, completions, messages, tool input/output): their
#: values are never kept, not even short ones, and not even as a key of the skip cache.
_CONTENT_KEY_MARKERS = (b"prompt", b"completion", b"message", b"content", b"input", b"output", b"query",
                        b"document", b"tool_call", b"arguments", b"value")
#: Most distinct exception class names remembered in their normalised form.
_ERROR_NAMES_MAX = 1024


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
    unknown_cost: int = 0  # rows whose model has no price (and no usable span cost)
    quality: list[QualityEvent] = field(default_factory=list)  # evaluation results and user feedback
    security: list[SecurityEvent] = field(default_factory=list)  # guardrail security events


def _is_content(kv: bytes) -> bool:
    """Whether the serialized KeyValue's key looks like a content attribute (its value is never kept)."""
    n = kv[1] if len(kv) > 1 and kv[0] == 0x0A else 0
    key = kv[2:2 + n].lower() if n < 0x80 else kv[2:]
    return any(m in key for m in _CONTENT_KEY_MARKERS)


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
        self._capture_user = settings.capture_user
        self._error_names: dict[bytes, str | None] = {}  # serialized exception.type -> short name
        self._attr_cache = _AttributeCache(self._miss)
        self._attr_seen_once: set[bytes] = set()
        self._bad_attributes = 0  # bad attributes seen by _miss, all time

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
        resolve = self.prices.resolve
        llm_operations = LLM_OPERATIONS
        hash_user = self._hash_user
        capture_user = self._capture_user
        first_token_events = FIRST_TOKEN_EVENTS
        service, namespace, pod, region, _ = resource
        spans_seen = llm_calls = unknown_cost = 0
        bad = 0
        nslots = _NSLOTS
        lookup, not_skip = self._attr_cache.__getitem__, _SKIP_ENTRY.__ne__
        empty = _EMPTY_VALS
        bad_before = self._bad_attributes
        for span in spans:
            spans_seen += 1
            # vals[slot] is the value, vals[slot + _NSLOTS] the rank of the key it came from.
            vals: list[Any] = empty[:]
            # Most attributes repeat byte for byte from span to span (model, operation, provider,
            # finish reason, unwanted ones): one dict probe on the serialized KeyValue gives what
            # decoding it would (a miss decodes, via _AttributeCache.__missing__). map() and
            # filter() run the probes and drop unwanted attributes in C; Python sees only the
            # wanted ones.
            for slot, rank, val in filter(not_skip, map(lookup, span.attributes)):
                if rank < vals[slot]:
                    vals[slot] = rank
                    vals[slot - nslots] = val

            request_model = vals[_REQ_MODEL]
            response_model = vals[_RESP_MODEL]
            user = vals[_USER]
            # OpenInference: the request's model (and user) are in the invocation parameters;
            # llm.model_name is the response's model, the request's only when nothing else says.
            params = vals[_OI_PARAMS]
            if params is not None:
                if request_model is None:
                    request_model = params[0]
                if user is None and capture_user:
                    user = params[1]
            oi_model = vals[_OI_MODEL]
            if oi_model is not None:
                if response_model is None:
                    response_model = oi_model
                if request_model is None:
                    request_model = oi_model
            input_tokens = vals[_IN]
            output_tokens = vals[_OUT]
            operation = vals[_OP]
            # The common case (a GenAI LLM operation, no other family's span kind) without the
            # general rule's call; everything else goes through classify().
            if not (operation in llm_operations and vals[_TL_KIND] is None and vals[_OI_KIND] is None):
                if classify(
                    operation=operation, request_type=vals[_REQ_TYPE],
                    openinference_kind=vals[_OI_KIND], traceloop_kind=vals[_TL_KIND],
                    has_model=request_model is not None or response_model is not None,
                    has_tokens=input_tokens is not None or output_tokens is not None
                    or vals[_TOTAL] is not None,
                ) != ROWED:
                    if vals[_QUALITY] is not None or span.events:
                        # An evaluator's, guardrail's or feedback span of its own (not an LLM call).
                        self._span_signals(span, vals[_QUALITY] is not None, result, service,
                                           response_model or request_model, user if capture_user else None)
                    continue
                operation = normalize_operation(operation, vals[_REQ_TYPE], vals[_OI_KIND])
            start = span.start_time_unix_nano
            if start > _MAX_TIME:  # fixed64 on the wire; a row's time is int64
                bad += 1  # counted with the bad attributes, and not rowed
                continue
            llm_calls += 1

            end = span.end_time_unix_nano
            latency_ms = (end - start) / 1e6 if start and end and end >= start else None
            ttft_ms = vals[_TTFT]
            if ttft_ms is None and vals[_STREAM] is True:
                ttft_ms = vals[_STREAM_TTFT]  # OpenLIT's: on a non-streamed call it is the latency
            error_type = vals[_ERR_TYPE]
            is_error = error_type is not None or span.status.code == _STATUS_CODE_ERROR
            events = span.events
            if events and (ttft_ms is None or (is_error and error_type is None)):
                event_ttft, event_error = self._read_events(events, start, first_token_events,
                                                            ttft_ms is None, is_error and error_type is None)
                if ttft_ms is None:
                    ttft_ms = event_ttft
                if error_type is None:
                    error_type = event_error
            if error_type is None:
                status = vals[_HTTP_STATUS]
                if status is not None and status >= 400:
                    error_type = str(status)
                    is_error = True
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
            # A span cost of 0 beside token counts is an instrumentation that could not price the
            # call (OpenLIT writes 0 without its price table): the price table decides instead.
            if cost is None or (cost == 0.0 and (input_tokens or output_tokens)):
                # PriceBook.cost, inlined: the price pair is cached per model triple.
                prices = resolve(provider, response_model or request_model, request_model)
                if prices is None:
                    cost = None
                    unknown_cost += 1  # only a model without a price, never a call without tokens
                elif input_tokens is not None or output_tokens is not None:
                    cost = (input_tokens or 0) * prices[0] + (output_tokens or 0) * prices[1]
                else:
                    cost = None  # a failed call: no tokens to price

            if user is not None and hash_user:
                user = hashlib.sha256(user.encode()).hexdigest()
            api_key = vals[_API_KEY]
            if api_key is not None:
                api_key = hashlib.sha256(api_key.encode()).hexdigest()[:16]

            rows.append((
                start, service, namespace, pod, region,
                operation,
                provider, request_model, response_model, latency_ms, ttft_ms,
                input_tokens, output_tokens, tokens_per_s, cost, is_error, error_type,
                vals[_FINISH], user, api_key, span.trace_id.hex(), span.span_id.hex(),
            ))
            if vals[_QUALITY] is not None or events:
                self._span_signals(span, vals[_QUALITY] is not None, result, service,
                                   request_model or response_model, user)
        result.spans += spans_seen
        result.llm_calls += llm_calls
        result.bad_attributes += bad + self._bad_attributes - bad_before
        result.unknown_cost += unknown_cost
        return result

    def _span_signals(self, span: Any, flagged: bool, result: ExtractResult, service: str | None,
                      model: str | None, user: str | None) -> None:
        """Quality and security signals of one span: its events by name, its attributes when flagged."""
        ctx: SignalContext | None = None
        for event in span.events:
            name = event.name
            if not is_signal_event(name):
                continue
            attrs, bad = decode_attributes(event.attributes)
            ectx = SignalContext(time_unix_nano=event.time_unix_nano or span.start_time_unix_nano, service=service,
                                 model=model, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), user=user)
            try:
                signal = signals_from_event(name, attrs, ectx)
            except SecurityEventError:
                signal, bad = None, bad + 1
            self._bad_attributes += bad
            if isinstance(signal, QualityEvent):
                result.quality.append(signal)
            elif signal is not None:
                result.security.append(signal)
        if flagged:
            attrs, bad = decode_attributes(span.attributes)
            self._bad_attributes += bad
            ctx = SignalContext(time_unix_nano=span.start_time_unix_nano, service=service, model=model,
                                trace_id=span.trace_id.hex(), span_id=span.span_id.hex(), user=user)
            result.quality.extend(quality_from_attributes(attrs, ctx))

    def _read_events(self, events: Any, start: int, first_token_events: frozenset[str], want_ttft: bool,
                     want_error: bool) -> tuple[float | None, str | None]:
        """TTFT (ms after ``start``) from the first first-token event, and the short class name
        of an ``exception`` event; only event names, times and ``exception.type`` are read."""
        ttft_ms: float | None = None
        error_type: str | None = None
        for event in events:
            name = event.name
            if want_ttft and name in first_token_events:
                t = event.time_unix_nano
                if t >= start:
                    ttft_ms = (t - start) / 1e6
                want_ttft = False
            elif want_error and name == EXCEPTION_EVENT:
                error_type = self._exception_type(event.attributes)
                want_error = error_type is None
            else:
                continue
            if not (want_ttft or want_error):
                break
        return ttft_ms, error_type

    def _exception_type(self, attributes: Iterable[bytes]) -> str | None:
        """The normalised ``exception.type`` among an exception event's serialized attributes."""
        names = self._error_names
        for kv in attributes:
            # Match the key on the raw bytes: no other attribute of the event is decoded.
            if len(kv) < 2 or kv[0] != 0x0A or kv[2:2 + kv[1]] != EXCEPTION_TYPE_KEY:
                continue
            try:
                return names[kv]
            except KeyError:
                pass
            try:
                kind, val = _value(kv, 2 + kv[1])
            except (IndexError, DecodeError, UnicodeDecodeError):
                self._bad_attributes += 1
                return None
            name = normalize_error_type(val) if kind == KIND_STR else None
            if name is None:
                self._bad_attributes += 1
            if len(kv) <= _ATTR_CACHE_MAX_KV_BYTES:  # bounded by bytes as the attribute cache is
                if len(names) >= _ERROR_NAMES_MAX:
                    names.clear()
                names[kv] = name
            return name
        return None

    def _miss(self, kv: bytes) -> tuple[int, int, Any]:
        """Decode an attribute the cache does not hold; remember it from its second sighting on.

        Admitting on the second sighting keeps one-off values (response ids, token counts) in the
        small doorkeeper set instead of churning the cache of repeating ones. Bad attributes are
        counted every time and never cached.
        """
        hit = self._decode_attribute(kv)
        if hit is _BAD:
            self._bad_attributes += 1
            return _SKIP_ENTRY
        entry: tuple[int, int, Any] = hit
        if len(kv) > _ATTR_CACHE_MAX_KV_BYTES or (entry is _SKIP_ENTRY and _is_content(kv)):
            return entry  # decoded again next time: never kept
        if kv in self._attr_seen_once:
            if len(self._attr_cache) >= _ATTR_CACHE_MAX:
                self._attr_cache.clear()
            self._attr_cache[kv] = entry
        else:
            if len(self._attr_seen_once) >= _ATTR_CACHE_MAX:
                self._attr_seen_once.clear()
            self._attr_seen_once.add(kv)
        return entry

    def _decode_attribute(self, kv: bytes) -> Any:
        """What one serialized span ``KeyValue`` contributes: ``_SKIP_ENTRY`` (not wanted),
        ``_BAD`` (wanted but wrong-typed or damaged) or ``(rank index, rank, value)``."""
        try:
            n = kv[1]
            if kv[0] == 0x0A and n < 0x80:
                spec = self._span_keys.get(kv[2:2 + n])
                if spec is None:
                    return _QUALITY_ENTRY if kv[2:2 + n].startswith(QUALITY_KEY_PREFIXES) else _SKIP_ENTRY
                vkind, val = _value(kv, 2 + n)
            else:
                key, vkind, val = attribute(kv)
                spec = self._span_keys.get(key.encode())
                if spec is None:
                    return _QUALITY_ENTRY if key.encode().startswith(QUALITY_KEY_PREFIXES) else _SKIP_ENTRY
        except (IndexError, DecodeError, UnicodeDecodeError):
            return _BAD
        slot, kind, rank, scale = spec
        if kind == _STR:
            if vkind != KIND_STR:
                return _BAD
            if slot == _ERR_TYPE:
                val = normalize_error_type(val)
            elif slot == _USER and not val:
                val = None  # OpenLIT writes "" when the call named no user
            if val is None:
                return _SKIP_ENTRY
        elif kind == _INT:
            if vkind != KIND_INT or val < 0:
                return _BAD
        elif kind == _FLOAT:
            if vkind == KIND_INT:
                val = float(val)
            elif vkind != KIND_DOUBLE:
                return _BAD
            val *= scale
            if not 0.0 <= val <= MAX_ABS_VALUE:  # negative, NaN, infinite or absurd (the aggregator drops those)
                return _BAD
        elif kind == _BOOL:
            if vkind != KIND_BOOL:
                return _BAD
        elif kind == _JSON:
            if vkind != KIND_STR:
                return _BAD
            val = invocation_parameters(val)
            if val is None:
                return _BAD
        else:  # _STR_ARRAY: the first element; a lone string is taken as is
            if vkind == KIND_LIST:
                if val is None:
                    return _SKIP_ENTRY
                vkind, val = val
            if vkind != KIND_STR:
                return _BAD
        return (slot + _NSLOTS, rank, val)


class _AttributeCache(dict[bytes, tuple[int, int, Any]]):
    """Serialized KeyValue -> decoded entry; a missing key is decoded by ``miss`` (which decides
    whether to store it)."""

    def __init__(self, miss: Any) -> None:
        super().__init__()
        self._miss = miss

    def __missing__(self, kv: bytes) -> tuple[int, int, Any]:
        entry: tuple[int, int, Any] = self._miss(kv)
        return entry


class Resource(NamedTuple):
    """Row fields from resource attributes, and how many of them were wrong-typed."""

    service: str | None
    namespace: str | None
    pod: str | None
    region: str | None
    bad_attributes: int


def _value(kv: bytes, pos: int) -> tuple[int, Any]:
    """The value of a serialized ``KeyValue`` whose value field starts at ``pos``."""
    if kv[pos] == 0x12 and kv[pos + 1] < 0x80:
        # Inline the two common shapes, a short string and a small int (token counts).
        q = pos + 2
        tag = kv[q]
        if tag == 0x0A:
            n = kv[q + 1]
            if n < 0x80:
                return KIND_STR, kv[q + 2:q + 2 + n].decode()
        elif tag == 0x18:
            b = kv[q + 1]
            if b < 0x80:
                return KIND_INT, b
            b2 = kv[q + 2]
            if b2 < 0x80:
                return KIND_INT, (b & 0x7F) | (b2 << 7)
            b3 = kv[q + 3]
            if b3 < 0x80:
                return KIND_INT, (b & 0x7F) | ((b2 & 0x7F) << 7) | (b3 << 14)
    if kv[pos] != 0x12:
        _, kind, value = attribute(kv)
        return kind, value
    n = kv[pos + 1]
    if n < 0x80:
        return any_value(kv, pos + 2, pos + 2 + n)
    _, kind, value = attribute(kv)
    return kind, value
