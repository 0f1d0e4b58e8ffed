"""Bearer-token roles of the aggregator's HTTP API (aggregator/api/API_SPEC.md, "Auth").

Four kinds of token, from the aggregator's settings: ``viewer_tokens`` read (every GET and the
stream), ``operator_tokens`` also acknowledge alerts and manage silences, ``admin_tokens`` may do
everything, and the ingest ``tokens`` only ever allow ``POST /v1/ingest`` (which checks them itself:
this middleware leaves that route alone), ``POST /api/v1/feedback`` and ``POST /api/v1/security-events``
(user feedback and guardrail events, input like telemetry). With no token of any kind configured there
is no auth.

Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every configured
token of every kind without stopping at a match, so neither the time taken nor the length of a
near miss tells which token (or which kind) was close. Tokens are never logged.

Who made a request (the *principal*, recorded in the audit log, as ``acknowledged_by`` and as the
author of a configuration version) is a JWT's ``sub`` claim, or for a static token its place in the
settings, e.g. ``admin_tokens[0]`` — never the token itself. A reload replaces the tokens and the
JWT settings in place (:meth:`Roles.replace`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from aggregator.api.jwt_auth import JwtVerifier, looks_like_jwt
from aggregator.api.params import error_response

__all__ = [
    "PUBLIC_PATHS",
    "ROLES",
    "Roles",
    "auth_middleware",
    "request_role",
    "request_who",
    "required_role",
    "route_of",
]

#: Least to most privileged; a role may do everything a role before it may. ``ingest`` reads nothing.
ROLES: tuple[str, ...] = ("ingest", "viewer", "operator", "admin")
_RANK = {r: i for i, r in enumerate(ROLES)}

#: No token needed: probes, metrics, the page itself (its API calls carry the token) and the API's description.
PUBLIC_PATHS = frozenset({"/healthz", "/health", "/readyz", "/metrics", "/", "/api/v1/openapi.json"})
PUBLIC_PREFIXES = ("/static/",)
#: The page's static files: aiohttp names the whole static resource by its prefix.
STATIC_ROUTE = "/static"
#: Checked by the ingest handler against the ingest ``tokens``, not here.
INGEST_PATH = "/v1/ingest"

#: Changes that operators may make; every other non-read route needs admin (so a new one is closed by default).
OPERATOR_ROUTES = frozenset({
    ("POST", "/api/v1/alerts/{alert_id}/ack"),
    ("POST", "/api/v1/silences"),
    ("DELETE", "/api/v1/silences/{silence_id}"),
    ("POST", "/api/v1/silences/{silence_id}/expire"),
    ("POST", "/api/v1/alerts/{alert_id}/feedback"),
    ("POST", "/api/v1/security/actions/{action_id}/approve"),
    ("POST", "/api/v1/security/actions/{action_id}/reject"),
})
#: Writes of telemetry-like input that the ingest ``tokens`` (and every other role) may make.
INGEST_ROUTES = frozenset({("POST", "/api/v1/feedback"), ("POST", "/api/v1/security-events")})
#: Reads that need admin: who did what is not every viewer's business.
ADMIN_READ_ROUTES = frozenset({"/api/v1/audit", "/api/v1/config", "/api/v1/config/history"})
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Where the middleware leaves the caller's role for the handlers: typed keys where aiohttp has them (3.14 warns
# about plain string keys), plain keys before.
_ROLE_KEY: Any
_WHO_KEY: Any
if hasattr(web, "RequestKey"):
    _ROLE_KEY, _WHO_KEY = web.RequestKey("sentinel_api_role", str), web.RequestKey("sentinel_api_who", str)
else:  # pragma: no cover - aiohttp < 3.14
    _ROLE_KEY, _WHO_KEY = "sentinel_api_role", "sentinel_api_who"


def request_role(request: web.Request) -> str | None:
    """The caller's role as the auth middleware found it (``admin`` with auth disabled; ``None`` on public paths)."""
    role: str | None = request.get(_ROLE_KEY)
    return role


def request_who(request: web.Request) -> str:
    """Who the caller is, for the audit log, ``acknowledged_by`` and ``created_by``: the principal (a JWT's
    ``sub``, a static token's place such as ``admin_tokens[0]``), or ``anonymous`` without auth."""
    who: str = request.get(_WHO_KEY, "")
    return who


def required_role(method: str, route: str) -> str | None:
    """The least role a request needs (``None``: public). ``route`` is the route's path template."""
    if route in PUBLIC_PATHS or route == STATIC_ROUTE or route.startswith(PUBLIC_PREFIXES):
        return None
    if method in _READ_METHODS:
        return "admin" if route in ADMIN_READ_ROUTES else "viewer"
    if (method, route) in OPERATOR_ROUTES:
        return "operator"
    if (method, route) in INGEST_ROUTES:
        return "ingest"
    return "admin"


def _digest(token: str) -> bytes:
    # Same-length digests: compare_digest's time then depends on neither token's length.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Roles:
    """The configured tokens, the role each one grants and the name it is recorded under."""

    def __init__(self, viewer_tokens: Iterable[str] = (), operator_tokens: Iterable[str] = (),
                 admin_tokens: Iterable[str] = (), ingest_tokens: Iterable[str] | Iterable[tuple[str, str]] = (), *,
                 jwt: JwtVerifier | None = None) -> None:
        self.jwt = jwt  # JWTs from an identity provider, beside the static tokens (aggregator/api/jwt_auth.py)
        self._tokens: list[tuple[bytes, int, str]] = []
        for role, key, tokens in (("ingest", "tokens", ingest_tokens), ("viewer", "viewer_tokens", viewer_tokens),
                                  ("operator", "operator_tokens", operator_tokens),
                                  ("admin", "admin_tokens", admin_tokens)):
            for i, t in enumerate(tokens):
                name, token = t if isinstance(t, tuple) else (f"{key}[{i}]", t)
                if token:
                    self._tokens.append((_digest(token), _RANK[role], name))

    def replace(self, other: Roles) -> None:
        """Take ``other``'s tokens and JWT verifier (a reload); one assignment each, so a request sees either."""
        self._tokens, self.jwt = other._tokens, other.jwt

    @property
    def enabled(self) -> bool:
        """Whether any token of any kind (or a JWKS) is configured (if not, the API is open)."""
        return bool(self._tokens) or self.jwt is not None

    def identify(self, token: str) -> tuple[str, str] | None:
        """(the most privileged role ``token`` grants, its principal), or ``None`` for an unknown token."""
        given = _digest(token)
        best, name = -1, ""
        for digest, rank, token_name in self._tokens:  # every one, no early exit
            hit = hmac.compare_digest(given, digest)
            if hit and rank > best:
                best, name = rank, token_name
        if best < 0 and self.jwt is not None and looks_like_jwt(token):
            return self.jwt.identify(token)
        return (ROLES[best], name) if best >= 0 else None

    def role_of(self, token: str) -> str | None:
        """The most privileged role ``token`` grants, or ``None`` for an unknown token."""
        found = self.identify(token)
        return found[0] if found else None

    async def identify_async(self, token: str) -> tuple[str, str] | None:
        """:meth:`identify` off the event loop when it may fetch a JWKS (a JWT with a JWKS URL)."""
        jwt = self.jwt
        if jwt is not None and jwt.config.jwks_url and looks_like_jwt(token):
            return await asyncio.to_thread(self.identify, token)
        return self.identify(token)


def route_of(request: web.Request) -> str | None:
    """The matched route's path template (``/api/v1/alerts/{alert_id}``), or ``None`` when nothing matched."""
    info = request.match_info
    if info.http_exception is not None:
        return None
    resource = info.route.resource
    return resource.canonical if resource is not None else None


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def auth_middleware(roles: Roles) -> Middleware:
    """Apply the role table per route; :func:`request_role` and :func:`request_who` then tell the handlers the caller.

    Unmatched paths pass through to aiohttp's 404/405 (the route list is public in the OpenAPI document anyway).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path == INGEST_PATH:
            return await handler(request)
        route = route_of(request)
        if route is None:
            return await handler(request)
        need = required_role(request.method, route)
        if need is None:
            return await handler(request)
        if not roles.enabled:
            request[_ROLE_KEY], request[_WHO_KEY] = "admin", "anonymous"
            return await handler(request)
        token = bearer_token(request)
        found = await roles.identify_async(token) if token is not None else None
        if found is None:
            return error_response(401, "missing or unknown bearer token",
                                  headers={"WWW-Authenticate": 'Bearer realm="sentinel"'})
        role, who = found
        if _RANK[role] < _RANK[need]:
            return error_response(403, f"this needs the {need} role; the token has the {role} role")
        request[_ROLE_KEY], request[_WHO_KEY] = role, who
        return await handler(request)

    return middleware
