"""The outbox in Redis, under the session store's prefix: the deliveries (`P wh:doc`, with
their states in `P wh:state`), the open ones by due time (sorted set `P wh:due`), the leases
(`P wh:lease`: owner and expiry) and the secrets (`P wh:secret`). Every change is one Lua
script on the server's clock (`TIME`), so claims from many instances are atomic.

A claim looks at the first `scan` due entries only (bounded work per call): a tenant with
more than that many overdue deliveries can delay others' by one poll at most, since each
claim leases what it takes and the next claim sees the entries after them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import redis.asyncio as aioredis

from roost.webhooks.records import Delivery

SEP = "\x1f"

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""
# KEYS: doc, state, due; ARGV: field, doc, state, next_at
_ARM = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"""
# KEYS: state, due; ARGV: field, at
_WAKE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'armed' then return 0 end
local cur = redis.call('ZSCORE', KEYS[2], ARGV[1])
if cur and tonumber(cur) > tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
end
return 1
"""
# KEYS: doc, due, lease; ARGV: owner, lease_s, limit, per_tenant, scan, excluded tenants…
_CLAIM = _CLOCK + """
local fields = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
local taken, per, out = 0, {}, {}
for i = 6, #ARGV do per[ARGV[i]] = math.huge end
for _, field in ipairs(fields) do
  if taken >= tonumber(ARGV[3]) then break end
  local lease = redis.call('HGET', KEYS[3], field)
  local free = true
  if lease then
    local until_ = tonumber(string.match(lease, '\\31(.*)$'))
    if until_ and until_ >= now then free = false end
  end
  local tenant = string.match(field, '^(.-)\\31')
  if free and (per[tenant] or 0) < tonumber(ARGV[4]) then
    per[tenant] = (per[tenant] or 0) + 1
    redis.call('HSET', KEYS[3], field, ARGV[1] .. '\\31' .. (now + tonumber(ARGV[2])))
    table.insert(out, redis.call('HGET', KEYS[1], field))
    taken = taken + 1
  end
end
return out
"""
# KEYS: doc, state, due, lease; ARGV: field, owner, doc, state, next_at, open (1/0)
_SAVE = """
local lease = redis.call('HGET', KEYS[4], ARGV[1])
if not lease or string.match(lease, '^(.-)\\31') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
redis.call('HDEL', KEYS[4], ARGV[1])
return 1
"""


class RedisWebhooks:
    def __init__(self, url: str, *, prefix: str = "roost:", scan: int = 1000) -> None:
        self.url = url
        self.prefix = prefix
        self.scan = scan
        p = f"{prefix}wh:"
        self._doc, self._state, self._due = f"{p}doc", f"{p}state", f"{p}due"
        self._lease, self._secret = f"{p}lease", f"{p}secret"
        self._client: aioredis.Redis | None = None

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

    async def _eval(self, script: str, keys: list[str], *args: Any) -> Any:
        from roost.sessions.redis import _redis_errors as redis_errors

        r = await self._redis()
        with redis_errors("webhooks"):
            return await r.eval(script, len(keys), *keys, *args)

    async def arm(self, delivery: Delivery) -> bool:
        return bool(await self._eval(_ARM, [self._doc, self._state, self._due],
                                     _field(delivery.tenant, delivery.run_id),
                                     _encode(delivery), delivery.state, delivery.next_at))

    async def get(self, tenant: str, run_id: str) -> Delivery | None:
        from roost.sessions.redis import _redis_errors as redis_errors

        r = await self._redis()
        with redis_errors("webhooks.get"):
            doc = await r.hget(self._doc, _field(tenant, run_id))
        return None if doc is None else msgspec.json.decode(doc, type=Delivery)

    async def wake(self, tenant: str, run_id: str, at: float) -> None:
        await self._eval(_WAKE, [self._state, self._due], _field(tenant, run_id), at)

    async def claim(self, owner: str, lease_s: float, limit: int, per_tenant: int,
                    exclude: Sequence[str] = ()) -> list[Delivery]:
        docs = await self._eval(_CLAIM, [self._doc, self._due, self._lease], owner, lease_s,
                                limit, per_tenant, self.scan, *exclude)
        return [msgspec.json.decode(doc, type=Delivery) for doc in docs if doc]

    async def save(self, delivery: Delivery, owner: str) -> bool:
        return bool(await self._eval(
            _SAVE, [self._doc, self._state, self._due, self._lease],
            _field(delivery.tenant, delivery.run_id), owner, _encode(delivery),
            delivery.state, delivery.next_at, "1" if delivery.open else "0"))

    async def get_secret(self, tenant: str) -> str | None:
        from roost.sessions.redis import _redis_errors as redis_errors

        r = await self._redis()
        with redis_errors("webhooks.get_secret"):
            value = await r.hget(self._secret, tenant)
        return None if value is None else str(value)

    async def put_secret(self, tenant: str, secret: str, *, replace: bool = True) -> str:
        from roost.sessions.redis import _redis_errors as redis_errors

        r = await self._redis()
        with redis_errors("webhooks.put_secret"):
            if replace:
                await r.hset(self._secret, tenant, secret)
                return secret
            await r.hsetnx(self._secret, tenant, secret)
            return str(await r.hget(self._secret, tenant))


def _field(tenant: str, run_id: str) -> str:
    return f"{tenant}{SEP}{run_id}"


def _encode(delivery: Delivery) -> str:
    return msgspec.json.encode(delivery).decode()
