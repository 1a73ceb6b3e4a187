"""OIDC / JWT bearer tokens, verified with PyJWT against the issuer's JWKS.

Checks, in order (any failure → None, which the edge answers 401):
1. the header names an algorithm from `oidc.algorithms` (so `alg: none` and HS256 tricks
   with a public key never reach a verifier) and a `kid`;
2. the `kid` is in the cached JWKS; an unknown `kid` (the issuer rotated keys) refetches
   the JWKS, at most once per `jwks_min_refetch_s` so a flood of forged kids cannot turn
   us into a load generator against the issuer; the JWKS is also refetched when older than
   `jwks_cache_s`;
3. signature, `exp` (required), `nbf`, `iss`, `aud`, with `leeway_s` of clock skew;
4. the claims name a tenant and a Roost role (or the configured defaults apply).

Verified tokens are cached by their sha256 for the API-key cache TTL (never past `exp`),
so a client reusing its token pays the signature check once per TTL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

import jwt

from roost.auth.config import OIDCConfig
from roost.auth.keys import digest
from roost.auth.principal import ROLES, Principal, Role

log = logging.getLogger("roost.auth")

_RANK = {role: i for i, role in enumerate(ROLES)}  # admin first


def _rank(role: Role) -> int:
    return _RANK[role]


class JWKSCache:
    """The issuer's signing keys by `kid`, fetched lazily and refetched on rotation."""

    def __init__(self, config: OIDCConfig) -> None:
        self.config = config
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self.config.jwks_cache_s
        if kid in self._keys and not stale:
            return self._keys[kid]
        async with self._lock:
            # Another request may have refetched while we waited.
            now = time.monotonic()
            stale = now - self._fetched_at > self.config.jwks_cache_s
            unknown = kid not in self._keys
            if stale or (unknown and now - self._fetched_at >= self.config.jwks_min_refetch_s):
                await self._refetch()
        return self._keys.get(kid)

    async def _refetch(self) -> None:
        self._fetched_at = time.monotonic()  # counts failures too: no retry storm
        self.fetches += 1
        try:
            body = await asyncio.to_thread(self._get)
            keys: dict[str, jwt.PyJWK] = {}
            for data in json.loads(body).get("keys", []):
                if "kid" not in data or data.get("use", "sig") != "sig":
                    continue
                try:
                    keys[data["kid"]] = jwt.PyJWK(data)
                except jwt.PyJWTError:
                    continue  # an algorithm or key type we do not verify
            self._keys = keys
        except (OSError, ValueError):
            log.warning("could not fetch the JWKS from %s", self.config.jwks_url, exc_info=True)

    def _get(self) -> bytes:
        with urllib.request.urlopen(self.config.jwks_url,
                                    timeout=self.config.fetch_timeout_s) as response:
            data: bytes = response.read(1 << 20)
            return data


class OIDCAuthenticator:
    def __init__(self, config: OIDCConfig, *, cache_ttl_s: float = 5.0,
                 cache_max_entries: int = 100_000) -> None:
        self.config = config
        self.jwks = JWKSCache(config)
        self._cache_ttl_s = cache_ttl_s
        self._cache_max = cache_max_entries
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def authenticate(self, token: str) -> Principal | None:
        token_digest = digest(token)
        entry = self._verified.get(token_digest)
        if entry is not None and time.time() < entry[1]:
            return entry[0]
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in self.config.algorithms or not isinstance(kid, str):
            return None
        key = await self.jwks.key(kid)
        if key is None:
            return None
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=self.config.audience,
                issuer=self.config.issuer, leeway=self.config.leeway_s,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.PyJWTError:
            return None
        principal = self._principal(claims)
        if principal is not None:
            until = min(time.time() + self._cache_ttl_s, float(claims["exp"]))
            if len(self._verified) >= self._cache_max:
                self._verified.clear()
            self._verified[token_digest] = (principal, until)
        return principal

    def _principal(self, claims: dict[str, Any]) -> Principal | None:
        c = self.config
        tenant = claims.get(c.tenant_claim, c.default_tenant)
        if not isinstance(tenant, str) or not tenant:
            return None
        raw = claims.get(c.role_claim)
        names = raw if isinstance(raw, list) else [raw]
        roles: list[Role] = [r for r in names if r in _RANK]
        role = c.default_role
        if roles:
            best: Role = min(roles, key=_rank)
            role = best
        if role is None:
            return None
        user = claims.get(c.user_claim)
        return Principal(tenant, role, user if isinstance(user, str) else None, None, "oidc")
