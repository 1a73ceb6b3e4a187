"""The key spend ledger in Redis: one hash per key and period (`P keyspend:<id>:<period>`,
fields `tokens` and `cost`), kept 40 days after its last write."""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

_TTL_S = 40 * 86400


class RedisKeySpend:
    def __init__(self, url: str, *, prefix: str = "roost:") -> None:
        self.url = url
        self.prefix = prefix
        self._client: aioredis.Redis | None = None

    def _key(self, key_id: str, period: str) -> str:
        return f"{self.prefix}keyspend:{key_id}:{period}"

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

    async def add(self, spend: Mapping[tuple[str, str], tuple[int, float]]) -> None:
        if not spend:
            return
        r = await self._redis()
        async with r.pipeline(transaction=True) as pipe:
            for (key_id, period), (tokens, cost) in spend.items():
                key = self._key(key_id, period)
                pipe.hincrby(key, "tokens", tokens)
                pipe.hincrbyfloat(key, "cost", cost)
                pipe.expire(key, _TTL_S)
            await pipe.execute()

    async def get(self, key_id: str, periods: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        r = await self._redis()
        async with r.pipeline(transaction=False) as pipe:
            for period in periods:
                pipe.hgetall(self._key(key_id, period))
            found = await pipe.execute()
        return {p: (int(f.get("tokens", 0)), float(f.get("cost", 0.0)))
                for p, f in zip(periods, found, strict=True) if f}
