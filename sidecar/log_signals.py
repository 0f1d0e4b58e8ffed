"""Quality and security signals in OTLP log records (the GenAI evaluation event, feedback, guardrail events).

A log record is a signal when its ``event_name`` (or, from older SDKs, its ``event.name`` attribute)
is one :func:`sidecar.signal_extract.is_signal_event` knows; its attributes are read as for a span
event, its trace and span ids tie it to the LLM call (the aggregator joins service and model by
them when the record's resource does not say). The record's body is never read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sentinel.quality import QualityEvent
from sentinel.security_event import SecurityEvent, SecurityEventError
from sidecar.signal_extract import SignalContext, is_signal_event, signals_from_event

__all__ = ["LogSignals", "attributes_of", "has_signal_records", "signals_from_logs"]

_TEXT_KEYS = ("explanation", "comment", "prompt", "completion", "content", "message", "input", "output")


@dataclass
class LogSignals:
    quality: list[QualityEvent] = field(default_factory=list)
    security: list[SecurityEvent] = field(default_factory=list)
    bad: int = 0  # signal records that could not be read


def _event_name(record: Any) -> str:
    name: str = getattr(record, "event_name", "") or ""
    if name:
        return name
    for kv in record.attributes:
        if kv.key == "event.name" and kv.value.WhichOneof("value") == "string_value":
            return str(kv.value.string_value)
    return ""


def attributes_of(kvs: Any) -> dict[str, Any]:
    """Scalar attributes of protobuf ``KeyValue`` s (text-like keys skipped)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        if any(t in kv.key for t in _TEXT_KEYS):
            continue
        which = kv.value.WhichOneof("value")
        if which in ("string_value", "int_value", "double_value", "bool_value"):
            out[kv.key] = getattr(kv.value, which)
    return out


def has_signal_records(request: Any) -> bool:
    return any(is_signal_event(_event_name(r)) for rl in request.resource_logs for sl in rl.scope_logs
               for r in sl.log_records)


def signals_from_logs(request: Any, *, capture_user: bool = True) -> LogSignals:
    """The signals of a parsed ``ExportLogsServiceRequest``."""
    out = LogSignals()
    for rl in request.resource_logs:
        resource = attributes_of(rl.resource.attributes)
        service = resource.get("service.name")
        service = service if isinstance(service, str) else None
        for sl in rl.scope_logs:
            for record in sl.log_records:
                name = _event_name(record)
                if not is_signal_event(name):
                    continue
                attrs = attributes_of(record.attributes)
                user = attrs.get("user.id") if capture_user else None
                model = attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model")
                ctx = SignalContext(
                    time_unix_nano=record.time_unix_nano or record.observed_time_unix_nano, service=service,
                    model=model if isinstance(model, str) else None,
                    trace_id=record.trace_id.hex() or None, span_id=record.span_id.hex() or None,
                    user=user if isinstance(user, str) else None)
                try:
                    signal = signals_from_event(name, attrs, ctx)
                except SecurityEventError:
                    out.bad += 1
                    continue
                if isinstance(signal, QualityEvent):
                    out.quality.append(signal)
                elif signal is not None:
                    out.security.append(signal)
                else:
                    out.bad += 1
    return out
