"""Audit records in Redis: sorted sets scored by the record's time, one for every record
(`P audit`) and one per tenant (`P audit:t:<tenant>`, listed in `P audit:tenants`), so a
tenant's page is one ZREVRANGEBYSCORE and retention one ZREMRANGEBYSCORE per set.
Members are `<random>|<json>`: two identical records stay two."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import msgspec
import redis.asyncio as aioredis

from roost.auth.auditlog import AuditRecord

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(AuditRecord).decode


class RedisAuditStore:
    def __init__(self, url: str, *, prefix: str = "roost:") -> None:
        self.url = url
        self.key = f"{prefix}audit"
        self._client: aioredis.Redis | None = None

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.key}:t:{tenant}"

    async def open(self) -> None:
        if self._client is None:
            self._client = aioredis.Redis.from_url(self.url)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _redis(self) -> aioredis.Redis:
        await self.open()
        assert self._client is not None
        return self._client

    async def append(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        r = await self._redis()
        async with r.pipeline(transaction=False) as pipe:
            for record in records:
                member = secrets.token_hex(4).encode() + b"|" + _encode(record)
                pipe.zadd(self.key, {member: record.at})
                if record.tenant is not None:
                    pipe.zadd(self._tenant_key(record.tenant), {member: record.at})
                    pipe.sadd(f"{self.key}:tenants", record.tenant)
            await pipe.execute()

    async def query(self, tenant: str | None = None, *, since: float | None = None,
                    until: float | None = None, limit: int = 100) -> list[AuditRecord]:
        r = await self._redis()
        key = self.key if tenant is None else self._tenant_key(tenant)
        members: list[bytes] = await r.zrevrangebyscore(  # type: ignore[assignment]
            key, "+inf" if until is None else f"({until!r}",
            "-inf" if since is None else repr(since), start=0, num=limit)
        return [_decode(m.split(b"|", 1)[1]) for m in members]

    async def purge(self, before: float) -> int:
        r = await self._redis()
        tenants: set[bytes] = await r.smembers(f"{self.key}:tenants")  # type: ignore[assignment]
        async with r.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(self.key, "-inf", f"({before!r}")
            for tenant in tenants:
                pipe.zremrangebyscore(self._tenant_key(tenant.decode()), "-inf", f"({before!r}")
            removed = await pipe.execute()
        return int(removed[0])
