"""Who may send what on ``POST /v1/ingest``: ingest tokens, and the sidecar ids each one covers.

A token from ``tokens`` is a fleet token: whoever holds it may send batches under any sidecar id
(and so could claim another sidecar's id and next ``seq``, which the real batch would then find
taken: answered ``duplicate`` and dropped). A token from ``sidecar_tokens`` is bound to the
sidecar ids matching its patterns (``fnmatch`` globs, e.g. ``payments/*`` for every pod of the
``payments`` namespace, whose sidecar ids are ``namespace/pod``); a batch under another id is
refused with 403 and stored nowhere.

What a sidecar id may *report* is bound too. A local anomaly must name a service among its own
batch's rows (a sidecar detects anomalies on the calls it forwards, and seals both in one batch):
one that does not is dropped before analysis and counted (:func:`unbound_anomalies`), so a token
cannot page on a service without also sending that service's calls. With ``sidecar_services``
(sidecar-id pattern → service globs) those calls are bound as well: a batch carrying a row of a
service its sidecar id may not report is refused with 403, and a sidecar id no pattern matches may
report none. Together with ``sidecar_tokens``: token → sidecar ids → services.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every configured
token without stopping at a match, so neither the time taken nor a near miss's length tells which
one was close (as the API's roles are, :mod:`aggregator.api.auth`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

from sentinel.config import ConfigError
from sentinel.wire import WireBatch

__all__ = ["ANY_SIDECAR", "IngestTokens", "ServiceBinding", "parse_sidecar_services", "parse_sidecar_tokens",
           "unbound_anomalies"]

#: The scope of a fleet token: every sidecar id.
ANY_SIDECAR: tuple[str, ...] = ("*",)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _pattern_map(raw: Any, setting: str, what: str) -> dict[str, list[str]]:
    """``setting`` as {sidecar-id pattern: [``what``, …]}; a single one may be given as a string."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{setting}: must be a map of sidecar-id pattern to {what}s")
    out: dict[str, list[str]] = {}
    for pattern, values in raw.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{setting}: every key must be a non-empty sidecar-id pattern")
        values = [values] if isinstance(values, str) else values
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ConfigError(f"{setting}.{pattern}: must be a {what} or a list of non-empty {what}s")
        out[pattern] = list(values)
    return out


def parse_sidecar_tokens(raw: Any) -> dict[str, list[str]]:
    """``sidecar_tokens`` as {pattern: [token, …]}; a single token may be given as a string."""
    return _pattern_map(raw, "sidecar_tokens", "token")


def parse_sidecar_services(raw: Any) -> dict[str, list[str]]:
    """``sidecar_services`` as {sidecar-id pattern: [service name or glob, …]}."""
    return _pattern_map(raw, "sidecar_services", "service")


class ServiceBinding:
    """Which services each sidecar id may report rows of (``sidecar_services``; empty: any)."""

    def __init__(self, bindings: Mapping[str, list[str]]) -> None:
        self._bindings = [(p, tuple(g)) for p, g in bindings.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._bindings)

    def forbidden(self, sidecar: str, services: Iterable[str | None]) -> str | None:
        """The first service ``sidecar`` may not report (``None``: all allowed).

        >>> b = ServiceBinding({"payments/*": ["payments", "payments-*"]})
        >>> b.forbidden("payments/api-7d9f", ["payments-ledger"]), b.forbidden("payments/api-7d9f", ["chat"])
        (None, 'chat')
        >>> b.forbidden("chat/x", ["chat"])
        'chat'
        """
        if not self._bindings:
            return None
        globs = [g for p, gs in self._bindings if fnmatch.fnmatchcase(sidecar, p) for g in gs]
        for service in sorted({s or "" for s in services}):
            if not any(fnmatch.fnmatchcase(service, g) for g in globs):
                return service
        return None


def unbound_anomalies(batch: WireBatch) -> int:
    """Drop the batch's local anomalies naming a service none of its rows has; returns how many.

    >>> from sentinel.model import FeatureBatch, LocalAnomaly
    >>> a = LocalAnomaly(metric="latency_ms", value=1.0, baseline=0.0, deviation=1.0, threshold=0.5, sigma=9.0,
    ...                  method="zscore", service="payments", model="m", operation="chat", trace_id="",
    ...                  span_id="", time_unix_nano=0)
    >>> b = WireBatch("attacker", 1, FeatureBatch.empty(), anomalies=[a])
    >>> unbound_anomalies(b), b.anomalies
    (1, [])
    """
    if not batch.anomalies:
        return 0
    services = set(batch.batch.strings.get("service", [])) if batch.batch.n else set()
    kept = [a for a in batch.anomalies if a.service in services]
    dropped = len(batch.anomalies) - len(kept)
    if dropped:
        batch.anomalies = kept
    return dropped


class IngestTokens:
    """The configured ingest tokens and the sidecar-id patterns each grants."""

    def __init__(self, fleet_tokens: Iterable[str], sidecar_tokens: Mapping[str, list[str]]) -> None:
        scopes: dict[bytes, set[str]] = {}
        for t in fleet_tokens:
            scopes.setdefault(_digest(t), set()).update(ANY_SIDECAR)
        for pattern, tokens in sidecar_tokens.items():
            for t in tokens:
                scopes.setdefault(_digest(t), set()).add(pattern)
        self._scopes = [(d, tuple(sorted(p))) for d, p in scopes.items()]

    @property
    def enabled(self) -> bool:
        return bool(self._scopes)

    def scope(self, header: str) -> tuple[str, ...] | None:
        """The sidecar-id patterns the ``Authorization`` header's bearer token covers; ``None``: no such token."""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = _digest(token.strip())
        found: tuple[str, ...] | None = None
        for digest, patterns in self._scopes:  # every one, no early exit
            if hmac.compare_digest(given, digest):
                found = patterns
        return found

    @staticmethod
    def covers(scope: tuple[str, ...], sidecar: str) -> bool:
        """Whether a token of ``scope`` may send batches as ``sidecar``.

        >>> IngestTokens.covers(("payments/*",), "payments/api-7d9f"), IngestTokens.covers(("payments/*",), "chat/x")
        (True, False)
        """
        return any(p == "*" or fnmatch.fnmatchcase(sidecar, p) for p in scope)
