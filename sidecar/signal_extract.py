"""Quality and security signals on spans, span events and log records -> :class:`QualityEvent` s and
:class:`SecurityEvent` s.

Read only where a span carries them (the extractor flags spans with a quality attribute and looks
at event names), so spans without them cost nothing more. What is understood:

- evaluation results: the OpenTelemetry GenAI event ``gen_ai.evaluation.result`` (a span event or a
  log record, attributes ``gen_ai.evaluation.name``, ``gen_ai.evaluation.score.value``,
  ``gen_ai.evaluation.score.label``), the same attributes on a span of its own, OpenInference's
  span-level ``eval.<name>`` numbers (``eval.<name>.score`` / ``eval.<name>.label`` too) and the
  generic ``sentinel.eval.<name>`` = a number in [0, 1];
- user feedback: span attributes ``sentinel.feedback.score`` (a number in [0, 1]) and / or
  ``sentinel.feedback.label`` (``thumbs_up``, ``thumbs_down``, …), or an event / log record named
  ``user.feedback`` or ``sentinel.feedback`` with ``score`` / ``label`` / ``rating`` (1-5) attributes;
- security events: an event / log record named ``security.event`` or ``gen_ai.guardrail.*`` with the
  fields of :mod:`sentinel.security_event` as attributes.

Scores outside [0, 1] (except OpenInference ``*_percent`` values, divided by 100) are not kept; the
explanation, comment and prompt attributes are never decoded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.message import DecodeError

from sentinel.quality import FEEDBACK_NAME, QualityEvent, normalise_name
from sentinel.security_event import SecurityEvent, parse_security_event
from sidecar.otlp_lite import KIND_BOOL, KIND_DOUBLE, KIND_INT, KIND_LIST, KIND_STR, attribute

__all__ = [
    "EVALUATION_EVENT", "FEEDBACK_EVENTS", "GUARDRAIL_PREFIX", "QUALITY_KEY_PREFIXES", "SECURITY_EVENT",
    "SignalContext", "decode_attributes", "is_signal_event", "quality_from_attributes", "signals_from_event",
]

EVALUATION_EVENT = "gen_ai.evaluation.result"
FEEDBACK_EVENTS = frozenset({"user.feedback", "sentinel.feedback", "gen_ai.user.feedback"})
SECURITY_EVENT = "security.event"
GUARDRAIL_PREFIX = "gen_ai.guardrail"
_SIGNAL_EVENTS = frozenset({EVALUATION_EVENT, SECURITY_EVENT, *FEEDBACK_EVENTS})
#: Span attribute keys (prefixes) that flag a span as carrying quality signals.
QUALITY_KEY_PREFIXES = (b"sentinel.eval.", b"sentinel.feedback.", b"eval.", b"gen_ai.evaluation.")
#: Keys never decoded (free text that may quote content or a person).
_TEXT_KEYS = ("explanation", "comment", "prompt", "completion", "content", "message", "input", "output")
_MAX_ATTRIBUTES = 64


def is_signal_event(name: str) -> bool:
    return name in _SIGNAL_EVENTS or name.startswith(GUARDRAIL_PREFIX)


def decode_attributes(kvs: Iterable[bytes]) -> tuple[dict[str, Any], int]:
    """Scalar attributes of serialized ``KeyValue`` s (text-like keys skipped), and how many were damaged."""
    out: dict[str, Any] = {}
    bad = 0
    for i, kv in enumerate(kvs):
        if i >= _MAX_ATTRIBUTES:
            break
        try:
            key, kind, val = attribute(kv)
        except (IndexError, DecodeError, UnicodeDecodeError):
            bad += 1
            continue
        if any(t in key for t in _TEXT_KEYS):
            continue
        if kind == KIND_LIST and val is not None:
            kind, val = val
        if kind in (KIND_STR, KIND_INT, KIND_DOUBLE, KIND_BOOL):
            out[key] = val
    return out, bad


class SignalContext:
    """What the signals of one span (or log record) share: time, service, model, ids, user."""

    __slots__ = ("model", "service", "span_id", "time_unix_nano", "trace_id", "user")

    def __init__(self, *, time_unix_nano: int, service: str | None, model: str | None = None,
                 trace_id: str | None = None, span_id: str | None = None, user: str | None = None) -> None:
        self.time_unix_nano, self.service, self.model = time_unix_nano, service, model
        self.trace_id, self.span_id, self.user = trace_id, span_id, user


def _score(v: Any, name: str = "") -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    v = float(v)
    if name.endswith("percent") and 1.0 < v <= 100.0:
        v /= 100.0
    return v if 0.0 <= v <= 1.0 else None


def _label(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    return normalise_name(v) or None if isinstance(v, str) else None


def _event(kind: str, name: str, score: float | None, label: str | None, ctx: SignalContext,
           source: str) -> QualityEvent | None:
    name = normalise_name(name)
    if not name or (score is None and label is None):
        return None
    return QualityEvent(kind=kind, name=name, score=score, label=label, time_unix_nano=ctx.time_unix_nano,
                        service=ctx.service, model=ctx.model, trace_id=ctx.trace_id, span_id=ctx.span_id,
                        user=ctx.user, source=source)


def _feedback(attrs: Mapping[str, Any], ctx: SignalContext, prefixes: tuple[str, ...]) -> QualityEvent | None:
    score = label = None
    for p in prefixes:
        score = score if score is not None else _score(attrs.get(p + "score"))
        label = label or _label(attrs.get(p + "label"))
        rating = attrs.get(p + "rating")
        if score is None and isinstance(rating, (int, float)) and not isinstance(rating, bool) and 1 <= rating <= 5:
            score = (float(rating) - 1.0) / 4.0
    user = attrs.get("user.id") or attrs.get("user")
    if isinstance(user, str) and user:
        ctx = SignalContext(time_unix_nano=ctx.time_unix_nano, service=ctx.service, model=ctx.model,
                            trace_id=ctx.trace_id, span_id=ctx.span_id, user=user)
    return _event("feedback", FEEDBACK_NAME, score, label, ctx, "sentinel")


def _gen_ai_evaluation(attrs: Mapping[str, Any], ctx: SignalContext) -> QualityEvent | None:
    name = attrs.get("gen_ai.evaluation.name")
    if not isinstance(name, str):
        return None
    return _event("evaluation", name, _score(attrs.get("gen_ai.evaluation.score.value")),
                  _label(attrs.get("gen_ai.evaluation.score.label")), ctx, "gen_ai")


def quality_from_attributes(attrs: Mapping[str, Any], ctx: SignalContext) -> list[QualityEvent]:
    """Evaluation results and feedback carried as attributes of one span."""
    out: list[QualityEvent | None] = [_gen_ai_evaluation(attrs, ctx)]
    oi: dict[str, list[Any]] = {}  # OpenInference eval.<name>[.score|.label] -> [score, label]
    for key, val in attrs.items():
        if key.startswith("sentinel.eval."):
            out.append(_event("evaluation", key[len("sentinel.eval."):], _score(val), None, ctx, "sentinel"))
        elif key.startswith("eval."):
            rest = key[len("eval."):]
            base, _, part = rest.rpartition(".")
            if part in ("score", "label") and base:
                slot = oi.setdefault(base, [None, None])
                if part == "score":
                    slot[0] = _score(val, base)
                else:
                    slot[1] = _label(val)
            else:
                oi.setdefault(rest, [None, None])[0] = _score(val, rest)
    for name, (score, label) in oi.items():
        out.append(_event("evaluation", name, score, label, ctx, "openinference"))
    if any(k.startswith("sentinel.feedback.") for k in attrs):
        out.append(_feedback(attrs, ctx, ("sentinel.feedback.",)))
    return [e for e in out if e is not None]


def signals_from_event(name: str, attrs: Mapping[str, Any], ctx: SignalContext
                       ) -> QualityEvent | SecurityEvent | None:
    """The signal of one span event or log record named ``name``, or None (not one, or unusable).

    Raises :class:`SecurityEventError` for a security event without a usable threat type."""
    if name == EVALUATION_EVENT:
        return _gen_ai_evaluation(attrs, ctx)
    if name in FEEDBACK_EVENTS:
        return _feedback(attrs, ctx, ("sentinel.feedback.", "feedback.", ""))
    if name == SECURITY_EVENT or name.startswith(GUARDRAIL_PREFIX):
        merged: dict[str, Any] = dict(attrs)
        if "threat_type" not in merged and "security.threat_type" not in merged and name.startswith(GUARDRAIL_PREFIX):
            # gen_ai.guardrail.jailbreak: the name's last part is the threat when no attribute says
            tail = name[len(GUARDRAIL_PREFIX):].strip(".")
            if tail:
                merged["threat_type"] = tail
        merged.setdefault("user_id", ctx.user)
        return parse_security_event(merged, default_time_ns=ctx.time_unix_nano, default_service=ctx.service)
    return None

