"""JWT bearer tokens from an identity provider, beside the static tokens (OIDC access or ID tokens).

A JWT (``Authorization: Bearer eyJ...``) is verified with PyJWT against a JWKS — fetched from
``jwt.jwks_url`` (cached for ``jwt.jwks_cache_s``; a token signed with a key id the cache does not
know makes one refetch, at most every ``jwt.jwks_refetch_s``, which is how key rotation is followed
without letting made-up key ids hammer the identity provider) or read from ``jwt.jwks_file``
(re-read when the file changes). It must be signed with one of ``jwt.algorithms``, carry ``exp``,
and match ``jwt.issuer`` and ``jwt.audience`` (``jwt.leeway_s`` of clock skew allowed). Its role is
the most privileged one that ``jwt.role_map`` gives any value of the ``jwt.role_claim`` claim (a
string or a list, e.g. ``groups``); no mapped value: 401 as for an unknown token. Tokens and claims
are never logged; a refused token is logged at debug level with PyJWT's reason only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from sentinel.config import ConfigError, setting

__all__ = ["JWT_ROLES", "JwtConfig", "JwtVerifier", "looks_like_jwt"]

log = logging.getLogger(__name__)

#: Roles a claim may map to (ingest stays with the static ingest tokens).
JWT_ROLES = ("viewer", "operator", "admin")
DEFAULT_ALGORITHMS = ("RS256", "ES256")
_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts, the first a JSON object (``eyJ`` is ``{"`` encoded)."""
    return token.count(".") == 2 and token.startswith("eyJ")


@dataclass
class JwtConfig:
    """JWT verification's settings: the aggregator's ``jwt:`` section (``jwt.<field>``)."""

    jwks_url: str = setting("", "accept JWTs (e.g. OIDC access tokens) signed by a key of this JWKS URL, beside the "
                            "static tokens (aggregator/api/README.md, 'JWT'); empty: off")
    jwks_file: str = setting("", "the same from a JWKS file (re-read when it changes), instead of jwks_url")
    issuer: str = setting("", "the iss a JWT must carry (needed with a JWKS)")
    audience: str = setting("", "the aud a JWT must carry (needed with a JWKS)")
    role_claim: str = setting("roles", "the JWT claim (a string or a list, e.g. groups) mapped to a role")
    role_map: dict[str, str] = setting(None, "claim value -> viewer, operator or admin; a JWT gets the most "
                                       "privileged role of its mapped values", flag=False, factory=dict)
    algorithms: Sequence[str] = setting(DEFAULT_ALGORITHMS, "signature algorithms accepted (asymmetric only)")
    jwks_cache_s: float = setting(300.0, "how long a fetched JWKS is used before it is fetched again")
    jwks_refetch_s: float = setting(30.0, "a token with a key id the cached JWKS lacks (a rotated key) fetches it "
                                    "again, at most this often")
    leeway_s: float = setting(30.0, "clock skew allowed on exp, nbf and iat")

    @property
    def enabled(self) -> bool:
        return bool(self.jwks_url or self.jwks_file)

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.jwks_url and self.jwks_file:
            raise ConfigError("jwt.jwks_url: give jwt.jwks_url or jwt.jwks_file, not both")
        if self.jwks_url and not self.jwks_url.startswith(("https://", "http://")):
            raise ConfigError("jwt.jwks_url: must be an https:// (or http://) URL")
        for key in ("issuer", "audience"):
            if not getattr(self, key):
                raise ConfigError(f"jwt.{key}: needed with jwt.jwks_url or jwt.jwks_file (tokens of other "
                                  "issuers or audiences must not be accepted)")
        if not self.role_claim:
            raise ConfigError("jwt.role_claim: must not be empty")
        if not isinstance(self.role_map, dict) or not self.role_map:
            raise ConfigError("jwt.role_map: a map of claim value to viewer, operator or admin is needed")
        for value, role in self.role_map.items():
            if role not in JWT_ROLES:
                raise ConfigError(f"jwt.role_map.{value}: {role!r} is not one of {', '.join(JWT_ROLES)}")
        bad = [a for a in self.algorithms if a not in _ASYMMETRIC]
        if not self.algorithms or bad:
            raise ConfigError(f"jwt.algorithms: {bad or 'none'}: only asymmetric algorithms "
                              f"({', '.join(sorted(_ASYMMETRIC))}) verify against a JWKS")
        if self.jwks_cache_s <= 0:
            raise ConfigError("jwt.jwks_cache_s: must be greater than 0")
        if self.jwks_refetch_s < 0:
            raise ConfigError("jwt.jwks_refetch_s: must not be negative")
        if self.leeway_s < 0:
            raise ConfigError("jwt.leeway_s: must not be negative")
        if self.jwks_file:
            _read_jwks(self.jwks_file)


def _read_jwks(path: str) -> jwt.PyJWKSet:
    try:
        with open(path, encoding="utf-8") as f:
            return jwt.PyJWKSet.from_dict(json.load(f))
    except OSError as e:
        raise ConfigError(f"jwt.jwks_file: cannot read {path}: {e.strerror}") from None
    except (ValueError, jwt.PyJWTError) as e:
        raise ConfigError(f"jwt.jwks_file: {path} is not a JWKS: {e}") from None


class JwtVerifier:
    """Verifies JWTs and maps their claims to a role; thread-safe."""

    def __init__(self, config: JwtConfig) -> None:
        config.validate()
        self.config = config
        self._lock = threading.Lock()
        self._client = (jwt.PyJWKClient(config.jwks_url, cache_jwk_set=True, lifespan=int(config.jwks_cache_s),
                                        timeout=5, cooldown_duration=config.jwks_refetch_s)
                        if config.jwks_url else None)
        self._file_mtime = 0.0
        self._file_keys: jwt.PyJWKSet | None = None

    def _key(self, token: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        with self._lock:
            mtime = os.stat(self.config.jwks_file).st_mtime
            if self._file_keys is None or mtime != self._file_mtime:  # rotated in place: read again
                self._file_keys, self._file_mtime = _read_jwks(self.config.jwks_file), mtime
            keys = self._file_keys
        for k in keys.keys:
            if kid is None or k.key_id == kid:
                return k.key
        raise jwt.InvalidKeyError(f"no key {kid!r} in {self.config.jwks_file}")

    def role_of(self, token: str) -> str | None:
        found = self.identify(token)
        return found[0] if found else None

    def identify(self, token: str) -> tuple[str, str] | None:
        """(role, principal) of a valid token: the principal is its ``sub`` claim (``jwt:<iss>`` without one)."""
        c = self.config
        try:
            claims = jwt.decode(token, self._key(token), algorithms=list(c.algorithms), audience=c.audience,
                                issuer=c.issuer, leeway=c.leeway_s, options={"require": ["exp", "iss", "aud"]})
        except (jwt.PyJWTError, ConfigError, OSError) as e:
            log.debug("JWT refused: %s", type(e).__name__ if isinstance(e, OSError) else e)
            return None
        role = self.role_from_claims(claims)
        if role is None:
            return None
        sub = claims.get("sub")
        return role, str(sub) if isinstance(sub, str) and sub else f"jwt:{claims.get('iss', '')}"

    def role_from_claims(self, claims: Mapping[str, Any]) -> str | None:
        values = claims.get(self.config.role_claim)
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list):
            return None
        roles = {self.config.role_map[v] for v in values if isinstance(v, str) and v in self.config.role_map}
        for role in reversed(JWT_ROLES):  # the most privileged
            if role in roles:
                return role
        return None
