"""Who may send what on ``POST /v1/ingest``: ingest tokens, and the sidecar ids each one covers.

A token from ``tokens`` is a fleet token: whoever holds it may send batches under any sidecar id
(and so could claim another sidecar's id and next ``seq``, which the real batch would then find
taken: answered ``duplicate`` and dropped). A token from ``sidecar_tokens`` is bound to the
sidecar ids matching its patterns (``fnmatch`` globs, e.g. ``payments/*`` for every pod of the
``payments`` namespace, whose sidecar ids are ``namespace/pod``); a batch under another id is
refused with 403 and stored nowhere.

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

__all__ = ["ANY_SIDECAR", "IngestTokens", "parse_sidecar_tokens"]

#: The scope of a fleet token: every sidecar id.
ANY_SIDECAR: tuple[str, ...] = ("*",)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def parse_sidecar_tokens(raw: Any) -> dict[str, list[str]]:
    """``sidecar_tokens`` as {pattern: [token, …]}; a single token may be given as a string."""
    if not isinstance(raw, Mapping):
        raise ConfigError("sidecar_tokens: must be a map of sidecar-id pattern to tokens")
    out: dict[str, list[str]] = {}
    for pattern, tokens in raw.items():
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError("sidecar_tokens: every key must be a non-empty sidecar-id pattern")
        tokens = [tokens] if isinstance(tokens, str) else tokens
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ConfigError(f"sidecar_tokens.{pattern}: must be a token or a list of non-empty tokens")
        out[pattern] = list(tokens)
    return out


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
