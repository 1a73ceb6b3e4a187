"""API keys in Redis: one hash per key (`P apikey:<id>`) and a set of all ids
(`P apikeys`), under the session store's prefix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import redis.asyncio as aioredis

from roost.auth.keys import ApiKey

# Revoke only a key that exists and is not revoked yet; one round trip, atomic.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'revoked_at', ARGV[1])
"""
# Last-used times only move forward.
_TOUCH = """
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then
    local old = tonumber(redis.call('HGET', key, 'last_used_at') or '0')
    if old == nil or old < tonumber(ARGV[i]) then
      redis.call('HSET', key, 'last_used_at', ARGV[i])
    end
  end
end
return 0
"""


class RedisKeyStore:
    def __init__(self, url: str, *, prefix: str = "roost:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None

    def _key(self, key_id: str) -> str:
        return f"{self.prefix}apikey:{key_id}"

    async def open(self) -> None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url, decode_responses=True)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _redis(self) -> aioredis.Redis:
        await self.open()
        assert self._client is not None
        return self._client

    async def add(self, key: ApiKey) -> None:
        r = await self._redis()
        fields: dict[Any, Any] = {f: msgspec.json.encode(getattr(key, f)).decode()
                  for f in key.__struct_fields__ if getattr(key, f) is not None}
        async with r.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(key.id), mapping=fields)
            pipe.sadd(f"{self.prefix}apikeys", key.id)
            await pipe.execute()

    async def get(self, key_id: str) -> ApiKey | None:
        r = await self._redis()
        fields: dict[str, str] = await r.hgetall(self._key(key_id))  # type: ignore[assignment]
        return _decode(fields) if fields else None

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        r = await self._redis()
        ids: list[str] = sorted(await r.smembers(f"{self.prefix}apikeys"))  # type: ignore[arg-type]
        async with r.pipeline(transaction=False) as pipe:
            for key_id in ids:
                pipe.hgetall(self._key(key_id))
            found = await pipe.execute()
        keys = [_decode(f) for f in found if f]
        return sorted((k for k in keys if tenant in (None, k.tenant)), key=lambda k: k.created_at)

    async def revoke(self, key_id: str, at: float) -> bool:
        r = await self._redis()
        return bool(await r.eval(_REVOKE, 1, self._key(key_id), repr(at)))

    async def touch(self, used: Mapping[str, float]) -> None:
        if used:
            r = await self._redis()
            await r.eval(_TOUCH, len(used), *(self._key(k) for k in used),
                         *(repr(at) for at in used.values()))


def _decode(fields: Mapping[str, Any]) -> ApiKey:
    return ApiKey(**{name: msgspec.json.decode(value) for name, value in fields.items()})
