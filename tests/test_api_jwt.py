"""JWT bearer tokens verified against a JWKS (file or URL, key rotation), issuer/audience, claim -> role."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from aggregator.api.jwt_auth import JwtConfig, JwtVerifier, looks_like_jwt
from sentinel.config import ConfigError
from tests.conftest import serve
from tests.test_api_support import make_alert

ISSUER, AUDIENCE = "https://idp.example.test/realms/ops", "sentinel"
ROLE_MAP = {"sre-viewers": "viewer", "sre-oncall": "operator", "sre-admins": "admin"}


class Keys:
    """Signing keys the test makes, and the JWKS that publishes their public halves."""

    def __init__(self) -> None:
        self.private: dict[str, Any] = {}

    def add_rsa(self, kid: str) -> None:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def add_ec(self, kid: str) -> None:
        self.private[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, k in self.private.items():
            alg = jwt.algorithms.RSAAlgorithm if isinstance(k, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            jwk = json.loads(alg.to_jwk(k.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys}

    def token(self, kid: str, *, groups: Any = ("sre-viewers",), iss: str = ISSUER, aud: str = AUDIENCE,
              exp_in: float = 300, **extra: Any) -> str:
        k = self.private[kid]
        alg = "RS256" if isinstance(k, rsa.RSAPrivateKey) else "ES256"
        claims = {"iss": iss, "aud": aud, "sub": "alice", "exp": int(time.time() + exp_in),
                  "groups": list(groups) if not isinstance(groups, str) else groups, **extra}
        return jwt.encode(claims, k, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def keys() -> Keys:
    k = Keys()
    k.add_rsa("k1")
    return k


def _file_config(tmp_path: Path, keys: Keys) -> JwtConfig:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    return JwtConfig(jwks_file=str(path), issuer=ISSUER, audience=AUDIENCE, role_claim="groups",
                     role_map=dict(ROLE_MAP))


def test_claims_map_to_the_most_privileged_role(tmp_path: Path, keys: Keys) -> None:
    v = JwtVerifier(_file_config(tmp_path, keys))
    assert looks_like_jwt(keys.token("k1")) and not looks_like_jwt("static-token")
    assert v.role_of(keys.token("k1")) == "viewer"
    assert v.role_of(keys.token("k1", groups=["sre-viewers", "sre-oncall"])) == "operator"
    assert v.role_of(keys.token("k1", groups="sre-admins")) == "admin"
    assert v.role_of(keys.token("k1", groups=["other"])) is None


def test_tokens_that_must_be_refused(tmp_path: Path, keys: Keys) -> None:
    v = JwtVerifier(_file_config(tmp_path, keys))
    assert v.role_of(keys.token("k1", iss="https://evil.test")) is None
    assert v.role_of(keys.token("k1", aud="another-app")) is None
    assert v.role_of(keys.token("k1", exp_in=-120)) is None  # beyond the 30 s leeway
    forger = Keys()
    forger.add_rsa("k1")  # the same key id, another key
    assert v.role_of(forger.token("k1")) is None
    hs = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60, "groups": ["sre-admins"]},
                    "a-shared-secret-of-at-least-32-bytes!", algorithm="HS256", headers={"kid": "k1"})
    assert v.role_of(hs) is None  # a symmetric algorithm never verifies against a public JWKS
    assert v.role_of("eyJ.not.ajwt") is None


def test_a_rotated_jwks_file_is_read_again(tmp_path: Path, keys: Keys) -> None:
    config = _file_config(tmp_path, keys)
    v = JwtVerifier(config)
    keys.add_ec("k2")
    assert v.role_of(keys.token("k2")) is None  # not published yet
    Path(config.jwks_file).write_text(json.dumps(keys.jwks()))
    st = os.stat(config.jwks_file)
    os.utime(config.jwks_file, (st.st_atime, st.st_mtime + 5))  # a new mtime even on coarse clocks
    assert v.role_of(keys.token("k2", groups=["sre-oncall"])) == "operator"


def test_settings_are_checked(tmp_path: Path, keys: Keys) -> None:
    good = _file_config(tmp_path, keys)
    for change, key in (({"issuer": ""}, "jwt.issuer"), ({"audience": ""}, "jwt.audience"),
                        ({"role_map": {}}, "jwt.role_map"), ({"role_map": {"g": "root"}}, "jwt.role_map.g"),
                        ({"algorithms": ("HS256",)}, "jwt.algorithms"),
                        ({"jwks_url": "https://idp.test/jwks"}, "jwt.jwks_url"),
                        ({"jwks_file": str(tmp_path / "missing.json")}, "jwt.jwks_file")):
        bad = JwtConfig(**{**vars(good), **change})
        with pytest.raises(ConfigError, match=f"^{key}"):
            bad.validate()


async def test_the_aggregator_enforces_jwt_roles_from_a_jwks_url(make_aggregator: Any, keys: Keys) -> None:
    served: list[int] = []

    async def jwks(request: web.Request) -> web.Response:
        served.append(1)
        return web.json_response(keys.jwks())

    app = web.Application()
    app.router.add_get("/jwks", jwks)
    async with serve(app) as port:
        agg = await make_aggregator(grpc_listen="", jwt={"jwks_url": f"http://127.0.0.1:{port}/jwks", "issuer": ISSUER,
                                                              "audience": AUDIENCE, "role_claim": "groups",
                                                              "role_map": dict(ROLE_MAP), "jwks_refetch_s": 0.0})
        assert agg.config.auth_enabled
        alert = make_alert()
        agg.alert_store.insert(alert, [])
        viewer, oncall = keys.token("k1"), keys.token("k1", groups=["sre-oncall"])

        def auth(token: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

        async with httpx.AsyncClient(base_url=agg.url, timeout=10) as c:
            assert (await c.get("/api/v1/alerts")).status_code == 401
            assert (await c.get("/api/v1/alerts", headers=auth(viewer))).status_code == 200
            r = await c.post(f"/api/v1/alerts/{alert.alert_id}/ack", headers=auth(viewer))
            assert r.status_code == 403 and "operator" in r.json()["error"]
            r = await c.post(f"/api/v1/alerts/{alert.alert_id}/ack", headers=auth(oncall))
            assert r.status_code == 200 and r.json()["acknowledged_by"] == "alice"
            assert (await c.get("/api/v1/audit", headers=auth(oncall))).status_code == 403
            assert (await c.get("/api/v1/alerts", headers=auth(keys.token("k1", aud="x")))).status_code == 401
            fetched = len(served)
            # Key rotation: a token signed with a new key id makes the aggregator fetch the JWKS again.
            keys.add_ec("k2")
            admin = keys.token("k2", groups=["sre-admins"])
            audit = await c.get("/api/v1/audit", headers=auth(admin))
            assert audit.status_code == 200
            assert len(served) == fetched + 1
            # The audit names the principal (the JWT's sub) and the role it acted with, never the token.
            (ack,) = [e for e in audit.json()["entries"] if e["action"] == "alert.acknowledge"]
            assert (ack["who"], ack["role"]) == ("alice", "operator")
            assert oncall not in audit.text
