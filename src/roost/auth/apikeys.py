"""Checking an API key on every request without asking the store every time.

A verified token is cached in-process, keyed by its sha256 (the secret itself is not kept),
for `cache_ttl_s`: a hit costs a hash and a dict lookup (≈ 1–2 µs, see the note in
`tests/auth/test_apikeys.py`). The TTL is the revocation delay: a key revoked through any
instance is refused by every instance once their cached entry is older than the TTL, without
any message between instances. Unknown or refused tokens are cached for
`negative_cache_ttl_s` so a flood of bad keys costs one store read each per second, not one
per request; both caches are bounded (cleared when full: an attacker cycling tokens can only
make us read the store again, never serve a stale grant past its TTL).

Last-used times are collected in a dict (`key id → time`) and written in one `touch` per
`last_used_flush_s` by `run_flusher` (owned by the app's lifespan), and once more on close.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from roost.auth.config import ApiKeysConfig
from roost.auth.keys import KeyStore, digest, key_id_of, matches
from roost.auth.principal import Principal

V = TypeVar("V")
log = logging.getLogger("roost.auth")


@dataclass(slots=True)
class ApiKeyStatistics:
    hits: int = 0
    misses: int = 0
    refused: int = 0
    cached: int = 0
    pending_last_used: int = 0


class ApiKeyAuthenticator:
    """`await authenticate(token)` → the key's principal, or None when it is not a valid,
    unrevoked, unexpired key."""

    def __init__(self, store: KeyStore, config: ApiKeysConfig, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.config = config
        self.clock = clock  # the cache's time (tests move it)
        self._granted: dict[str, tuple[Principal, float, float | None]] = {}
        self._refused: dict[str, float] = {}
        self._used: dict[str, float] = {}
        self._stats = ApiKeyStatistics()

    def cached(self, token: str) -> Principal | None:
        """The principal when the token is in the cache and fresh: no await, no store."""
        entry = self._granted.get(digest(token))
        if entry is None:
            return None
        principal, until, expires_at = entry
        now = self.clock()
        if now >= until:
            return None
        wall = time.time()
        if expires_at is not None and wall >= expires_at:
            return None
        self._stats.hits += 1
        assert principal.key_id is not None
        self._used[principal.key_id] = wall
        return principal

    async def authenticate(self, token: str) -> Principal | None:
        principal = self.cached(token)
        if principal is not None:
            return principal
        token_digest = digest(token)
        now = self.clock()
        refused_until = self._refused.get(token_digest)
        if refused_until is not None and now < refused_until:
            self._stats.refused += 1
            return None
        self._stats.misses += 1
        key_id = key_id_of(token)
        key = None if key_id is None else await self.store.get(key_id)
        wall = time.time()
        if key is None or not matches(key, token_digest) or not key.usable(wall):
            _remember(self._refused, token_digest,
                      self.clock() + self.config.negative_cache_ttl_s,
                      self.config.cache_max_entries)
            self._stats.refused += 1
            return None
        principal = key.principal()
        _remember(self._granted, token_digest,
                  (principal, self.clock() + self.config.cache_ttl_s, key.expires_at),
                  self.config.cache_max_entries)
        self._used[key.id] = wall
        return principal


    def forget(self, key_id: str) -> None:
        """Drop a key from this instance's cache at once (it was revoked here)."""
        for token_digest, (principal, _, _) in list(self._granted.items()):
            if principal.key_id == key_id:
                del self._granted[token_digest]

    async def flush_last_used(self) -> None:
        if self._used:
            used, self._used = self._used, {}
            await self.store.touch(used)

    async def run_flusher(self) -> None:
        """Write last-used times every `last_used_flush_s` until cancelled."""
        while True:
            await asyncio.sleep(self.config.last_used_flush_s)
            await self.flush_quietly()

    async def flush_quietly(self) -> None:
        try:
            await self.flush_last_used()
        except Exception:  # a store outage: the times are best effort, lost at worst
            log.warning("could not record API keys' last use", exc_info=True)

    def statistics(self) -> ApiKeyStatistics:
        s = self._stats
        return ApiKeyStatistics(s.hits, s.misses, s.refused, len(self._granted), len(self._used))


def _remember(cache: dict[str, V], key: str, value: V, limit: int) -> None:
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
