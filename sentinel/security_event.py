"""Security events from a guardrail service (prompt injection, jailbreak, toxic, PII leak), normalised.

The build plan's schema (JSON, one object per event)::

    {"event_id": "...", "timestamp": "2026-12-02T04:00:00Z", "threat_type": "jailbreak",
     "severity": "high", "service_name": "chat-api", "user_id": "u-17", "detection_method": "classifier",
     "confidence": 0.74, "action_taken": "blocked",
     "metadata": {"ip_address": "203.0.113.9", "api_key": "sk-...", "attack_signature": "dan-v2",
                  "prompt": "never kept"}}

:func:`parse_security_event` reads that (or the same fields as flat attributes of an OTLP log record
or span event, ``metadata.`` or ``security.`` prefixes allowed) into a :class:`SecurityEvent`. The API
key is hashed on arrival (the first 16 hex digits of its SHA-256, as the sidecar hashes span keys;
a field already named ``api_key_hash`` is kept); the prompt and every other field are dropped.

>>> e = parse_security_event({"threat_type": "jailbreak", "timestamp": 1.5, "metadata": {"api_key": "k"}})
>>> e.threat_type, e.time_unix_nano, e.api_key_hash
('jailbreak', 1500000000, '8254c329a92850f6')
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

__all__ = ["SEVERITIES", "THREAT_TYPES", "SecurityEvent", "SecurityEventError", "hash_api_key",
           "parse_security_event"]

THREAT_TYPES = ("prompt_injection", "jailbreak", "toxic", "pii_leak")
SEVERITIES = ("critical", "high", "medium", "low")
_MAX_STR = 256


class SecurityEventError(ValueError):
    """The event is not valid; the message names the field."""


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityEvent:
    event_id: str
    time_unix_nano: int
    threat_type: str
    severity: str = "medium"
    service: str | None = None
    user: str | None = None
    detection_method: str | None = None
    confidence: float = 0.5
    action_taken: str | None = None
    ip_address: str | None = None
    api_key_hash: str | None = None
    attack_signature: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> SecurityEvent:
        return parse_security_event({**m, "timestamp_unix_nano": m["time_unix_nano"]}, hashed=True)


def _str(m: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        v = m.get(name)
        if v is None or v == "":
            continue
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise SecurityEventError(f"{name}: must be a string")
        return str(v)[:_MAX_STR]
    return None


def _time_ns(m: Mapping[str, Any]) -> int:
    ns = m.get("timestamp_unix_nano", m.get("time_unix_nano"))
    if isinstance(ns, int) and not isinstance(ns, bool):
        return ns
    ts = m.get("timestamp")
    if isinstance(ts, (int, float)) and not isinstance(ts, bool) and math.isfinite(ts) and ts >= 0:
        return int(ts * 1e9)  # unix seconds
    if isinstance(ts, str):
        try:
            return int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1e9)
        except ValueError:
            raise SecurityEventError(f"timestamp: {ts[:40]!r} is not an ISO 8601 time") from None
    raise SecurityEventError("timestamp: missing (ISO 8601 string or unix seconds)")


def parse_security_event(raw: Mapping[str, Any], *, hashed: bool = False, default_time_ns: int | None = None,
                         default_service: str | None = None) -> SecurityEvent:
    """A :class:`SecurityEvent` from the plan's JSON or flat attributes; :class:`SecurityEventError`
    names the bad field. ``hashed``: ``api_key`` is already a hash (the wire form)."""
    if not isinstance(raw, Mapping):
        raise SecurityEventError("event: must be a JSON object")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise SecurityEventError("metadata: must be an object")
    # Flat attribute forms: security.threat_type, metadata.ip_address, ...
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        for prefix in ("security.", "metadata.", "gen_ai.guardrail."):
            if isinstance(k, str) and k.startswith(prefix):
                flat.setdefault(k[len(prefix):], v)
    m: dict[str, Any] = {**flat, **meta, **{k: v for k, v in raw.items() if k != "metadata"}}
    threat = _str(m, "threat_type", "type")
    if threat is None:
        raise SecurityEventError("threat_type: missing (prompt_injection, jailbreak, toxic or pii_leak)")
    threat = threat.lower()
    severity = (_str(m, "severity") or "medium").lower()
    if severity not in SEVERITIES:
        raise SecurityEventError(f"severity: {severity!r} is not one of {', '.join(SEVERITIES)}")
    conf = m.get("confidence", 0.5)
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
        raise SecurityEventError("confidence: must be a number in [0, 1]")
    try:
        t = _time_ns(m)
    except SecurityEventError:
        if default_time_ns is None:
            raise
        t = default_time_ns
    key_hash = _str(m, "api_key_hash")
    if key_hash is None:
        key = _str(m, "api_key")
        if key is not None:
            key_hash = key if hashed else hash_api_key(key)
    return SecurityEvent(
        event_id=_str(m, "event_id") or uuid.uuid4().hex, time_unix_nano=t, threat_type=threat,
        severity=severity, service=_str(m, "service_name", "service") or default_service,
        user=_str(m, "user_id", "user"), detection_method=_str(m, "detection_method"),
        confidence=float(conf), action_taken=_str(m, "action_taken"), ip_address=_str(m, "ip_address"),
        api_key_hash=key_hash, attack_signature=_str(m, "attack_signature"))
