"""OIDC bearer tokens against a JWKS served over real HTTP, with keys made here."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from jwt.algorithms import RSAAlgorithm

from roost.auth.config import OIDCConfig
from roost.auth.oidc import OIDCAuthenticator
from tests.auth.conftest import secured_app

ISSUER = "https://login.example.test/"
AUDIENCE = "roost"


class JWKSServer:
    """Serves `keys` as a JWKS at /jwks on a free loopback port; counts fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                owner.fetches += 1
                body = json.dumps({"keys": owner.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, kid: str) -> rsa.RSAPrivateKey:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return private


@pytest.fixture
def jwks() -> Iterator[JWKSServer]:
    server = JWKSServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join()


def config(jwks: JWKSServer, **overrides: Any) -> OIDCConfig:
    return OIDCConfig.model_validate({"issuer": ISSUER, "audience": AUDIENCE,
                                      "jwks_url": jwks.url, "role_claim": "roost_role",
                                      "jwks_min_refetch_s": 0, **overrides})


def token(key: Any, kid: str = "k1", *, alg: str = "RS256", **claims: Any) -> str:
    now = time.time()
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "tenant": "acme",
            "roost_role": "operator", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def test_a_valid_token_maps_its_claims(jwks: JWKSServer) -> None:
    key = jwks.add("k1")
    auth = OIDCAuthenticator(config(jwks))
    principal = await auth.authenticate(token(key))
    assert principal is not None
    assert (principal.tenant, principal.role, principal.user_id, principal.subject) == (
        "acme", "operator", "ada", "oidc")
    # A list of roles maps to the strongest Roost role in it; unknown roles → default.
    p = await auth.authenticate(token(key, roost_role=["viewer", "user", "sudo"]))
    assert p is not None and p.role == "user"
    p = await auth.authenticate(token(key, roost_role="sudo"))
    assert p is not None and p.role == "user"
    assert await auth.authenticate(token(key, tenant=None)) is None  # no tenant: refused
    assert jwks.fetches == 1  # fetched once, then cached


def _tampered(t: str) -> str:
    head, body, sig = t.split(".")
    claims = json.loads(jwt.utils.base64url_decode(body))
    claims["roost_role"] = "admin"
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{head}.{forged}.{sig}"


async def test_bad_tokens_are_refused(jwks: JWKSServer) -> None:
    key = jwks.add("k1")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(encoding=Encoding.PEM,
                                               format=PublicFormat.SubjectPublicKeyInfo)
    now = time.time()
    unsigned = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "tenant": "acme",
                           "exp": now + 300}, None, algorithm="none", headers={"kid": "k1"})
    bad = {
        "expired": token(key, exp=now - 3600, iat=now - 7200),
        "wrong audience": token(key, aud="someone-else"),
        "wrong issuer": token(key, iss="https://evil.example.test/"),
        "unknown kid": token(other, kid="k9"),
        "alg none": unsigned,
        "tampered": _tampered(token(key)),
        "signed by another key": token(other, kid="k1"),
        "no exp": jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "tenant": "acme"}, key,
                             algorithm="RS256", headers={"kid": "k1"}),
        "not a jwt": "a.b.c",
    }
    with pytest.raises(jwt.PyJWTError):  # PyJWT itself refuses to HMAC with a PEM key
        jwt.encode({"x": 1}, public_pem, algorithm="HS256")
    auth = OIDCAuthenticator(config(jwks))
    for name, t in bad.items():
        assert await auth.authenticate(t) is None, name
    assert await auth.authenticate(token(key)) is not None


async def test_rotation_refetches_for_an_unknown_kid_at_a_limited_rate(jwks: JWKSServer) -> None:
    old = jwks.add("k1")
    auth = OIDCAuthenticator(config(jwks, jwks_min_refetch_s=3600))
    assert await auth.authenticate(token(old)) is not None
    assert jwks.fetches == 1
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for i in range(20):  # a flood of unknown kids: at most one refetch per interval
        assert await auth.authenticate(token(forged, kid=f"x{i}")) is None
    assert jwks.fetches == 1

    rotating = OIDCAuthenticator(config(jwks, jwks_min_refetch_s=0))
    assert await rotating.authenticate(token(old)) is not None
    new = jwks.add("k2")  # the issuer rotates
    assert await rotating.authenticate(token(new, kid="k2")) is not None


async def test_oidc_over_http_next_to_api_keys(jwks: JWKSServer) -> None:
    key = jwks.add("k1")
    async with secured_app({"url": "memory://"}, oidc=config(jwks).model_dump()) as app:
        ok = await app.client.get("/v1/sessions",
                                  headers={"Authorization": f"Bearer {token(key)}"})
        assert ok.status_code == 200
        viewer = token(key, roost_role="viewer")
        r = await app.client.post("/v1/agents/echo/sessions", json={},
                                  headers={"Authorization": f"Bearer {viewer}"})
        assert r.status_code == 403
        expired = token(key, exp=time.time() - 3600)
        r = await app.client.get("/v1/sessions", headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and "www-authenticate" in r.headers
        assert (await app.client.get("/v1/sessions", headers=app.as_("viewer"))
                ).status_code == 200
