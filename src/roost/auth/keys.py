"""API keys: the record, the secret's format, and the `KeyStore` protocol.

A key reads `rk_<id>_<secret>`: `id` (public, 12 hex digits) finds the record; `secret` is
32 random bytes from `secrets` (URL-safe base64). Only `sha256(token)` is stored — with
256 bits of entropy a fast hash is what API keys use (a password hash buys nothing against
guessing and would cost milliseconds on every cache miss); `hmac.compare_digest` compares it.
The whole token is shown once, when the key is made.

Backends (`keystores/`): memory, SQLite (its own table in the store's database file),
PostgreSQL (migration 0004) and Redis; `open_key_store(url)` picks one by URL like the
session store does.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from typing import Protocol

import msgspec

from roost.auth.principal import Principal, Role

PREFIX = "rk_"
_TOKEN = re.compile(r"rk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


class ApiKey(msgspec.Struct, kw_only=True):
    """A stored key: never its secret, only the secret's hash."""

    id: str
    tenant: str
    role: Role
    name: str
    hash: str  # hex sha256 of the whole token
    user_id: str | None = None
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    # Its own day/month limits (roost.auth.keybudgets): day_tokens, day_cost, month_tokens,
    # month_cost; None: only the tenant's budget applies.
    budget: dict[str, float] | None = None

    def usable(self, at: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or at < self.expires_at)

    def principal(self) -> Principal:
        budget = None
        if self.budget:
            from roost.auth.budgets import Budget

            budget = Budget.model_validate(self.budget)
        return Principal(self.tenant, self.role, self.user_id, self.id, "api_key", budget)

    def public(self) -> dict[str, object]:
        """What `keys list` and the admin routes show: everything but the hash."""
        return {f: getattr(self, f) for f in self.__struct_fields__ if f != "hash"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def new_key(tenant: str, role: Role, name: str, *, user_id: str | None = None,
            ttl_s: float | None = None, at: float | None = None,
            budget: dict[str, float] | None = None) -> tuple[ApiKey, str]:
    """A new key record and its token (show the token once; store the record)."""
    key_id = secrets.token_hex(6)
    token = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    created = time.time() if at is None else at
    key = ApiKey(id=key_id, tenant=tenant, role=role, name=name, hash=digest(token),
                 user_id=user_id, created_at=created,
                 expires_at=None if ttl_s is None else created + ttl_s, budget=budget or None)
    return key, token


def key_id_of(token: str) -> str | None:
    """The id a well-formed token names; None for anything else."""
    match = _TOKEN.fullmatch(token)
    return match[1] if match else None


def matches(key: ApiKey, token_digest: str) -> bool:
    return hmac.compare_digest(key.hash, token_digest)


class KeyStore(Protocol):
    """Where keys live. Reads happen only on a cache miss (`apikeys.py`); writes are
    rare (create, revoke) or batched (`touch`)."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, key: ApiKey) -> None: ...
    async def get(self, key_id: str) -> ApiKey | None: ...
    async def list(self, tenant: str | None = None) -> list[ApiKey]: ...
    async def revoke(self, key_id: str, at: float) -> bool:
        """Mark revoked; False when there is no such key or it was revoked already."""
        ...
    async def touch(self, used: Mapping[str, float]) -> None:
        """Record last-used times (key id → epoch seconds), never moving one backwards."""
        ...


class MemoryKeyStore:
    """Keys in a dict: for tests and the `memory://` store (gone when the process ends)."""

    def __init__(self) -> None:
        self._keys: dict[str, ApiKey] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def add(self, key: ApiKey) -> None:
        self._keys[key.id] = key

    async def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        return sorted((k for k in self._keys.values() if tenant in (None, k.tenant)),
                      key=lambda k: k.created_at)

    async def revoke(self, key_id: str, at: float) -> bool:
        key = self._keys.get(key_id)
        if key is None or key.revoked_at is not None:
            return False
        key.revoked_at = at
        return True

    async def touch(self, used: Mapping[str, float]) -> None:
        for key_id, at in used.items():
            key = self._keys.get(key_id)
            if key is not None and (key.last_used_at or 0) < at:
                key.last_used_at = at


def open_key_store(url: str, **options: object) -> KeyStore:
    """The key store for a store URL (`memory://`, `sqlite:///…`, `postgresql://…`,
    `redis://…`), built but not open. `options` are the session store's: the PostgreSQL
    `schema` and the Redis `prefix` are honoured, the rest ignored."""
    from roost.errors import ConfigError

    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryKeyStore()
    if scheme == "sqlite":
        from roost.auth.keystores.sqlite import SQLiteKeyStore

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteKeyStore(path or ".roost/roost.db")
    if scheme in ("postgres", "postgresql"):
        try:
            from roost.auth.keystores.postgres import PostgresKeyStore
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("API keys on PostgreSQL need asyncpg: pip install 'roost[postgres]'",
                              [("store.url", str(exc))]) from exc
        schema = options.get("schema")
        return PostgresKeyStore(url, schema=schema if isinstance(schema, str) else None)
    if scheme in ("redis", "rediss"):
        try:
            from roost.auth.keystores.redis import RedisKeyStore
        except ImportError as exc:  # pragma: no cover
            raise ConfigError("API keys on Redis need redis-py: pip install 'roost[redis]'",
                              [("store.url", str(exc))]) from exc
        prefix = options.get("prefix")
        return RedisKeyStore(url, prefix=prefix if isinstance(prefix, str) else "roost:")
    raise ConfigError(f"no API key store for {scheme!r}", [("store.url", url)])
