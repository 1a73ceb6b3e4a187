"""The run queue and schedules on Redis, under the session store's prefix `P`:

- `P%bq`, `P%bqready`, `P%bqrank` — the queue: members `<tenant base>|<run id>`, waiting
  until due in `P%bq` (by due time), then in `P%bqready` (by fair rank); `P%bqrank` holds
  every entry's rank, `P%bqlast` each tenant's newest rank, `P%bqserved` the newest claimed
  rank (the fair queue's clock, see `roost.background.store`);
- `P%sched` — a hash of schedules (`<tenant base>|<id>` → JSON), and `P%schedlast` beside it
  (→ `<last tick>|<last run id>`), written by tick claims without re-encoding the JSON;
- `P%tick:<tenant base>|<id>:<tick>` — one key per fired tick, `SET NX` with a lifetime.

The claim is one Lua script: due members taken off the queue and their runs claimed as the
session store's `claim_run` does (status, owner, lease on the Redis clock, attempt, the status
and ownership indexes), so a claim is atomic with respect to every other store command.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from roost.background.records import Schedule
from roost.sessions.records import RunRecord, now
from roost.sessions.redis import _LUA_HELPERS, _escape, _redis_errors, _run_from_fields
from roost.sessions.store import Store

# KEYS: delayed, ranks, ready, last ranks, served. ARGV: member, due, tenant.
_ENQUEUE = """
local floor = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')[2]
if not floor then floor = redis.call('GET', KEYS[5]) or 0 end
local last = redis.call('HGET', KEYS[4], ARGV[3])
local rank = tonumber(floor)
if last and tonumber(last) + 1 > rank then rank = tonumber(last) + 1 end
redis.call('HSET', KEYS[4], ARGV[3], rank)
redis.call('ZADD', KEYS[2], rank, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""

# KEYS: delayed, ranks, ready, served. ARGV: owner, ttl ms, prefix, limit.
# Due entries move from `delayed` (by due time) to `ready` (by rank), a bounded number per
# call; then the lowest ranks of `ready` are claimed. Returns the claimed runs' read fields.
_CLAIM = _LUA_HELPERS + """
local now = clock()
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', fmt_time(now),
                              'LIMIT', 0, 1000)) do
  redis.call('ZREM', KEYS[1], m)
  local rank = redis.call('ZSCORE', KEYS[2], m)
  if rank then redis.call('ZADD', KEYS[3], rank, m) end
end
local picked = redis.call('ZRANGE', KEYS[3], 0, tonumber(ARGV[4]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #picked, 2 do
  local m = picked[i]
  redis.call('ZREM', KEYS[3], m)
  redis.call('ZREM', KEYS[2], m)
  redis.call('SET', KEYS[4], picked[i + 1])
  local base, run_id = string.match(m, '^(.*)|([^|]*)$')
  local rk = base .. 'r:' .. run_id
  local f = redis.call('HMGET', rk, 'st', 'o', 'at', 'j')
  if f[1] == 'queued' and (not f[2] or f[2] == '') then
    local attempt = f[3]
    if not attempt then attempt = cjson.decode(f[4]).attempt end
    local lease = fmt_time(now + tonumber(ARGV[2]) / 1000)
    redis.call('HSET', rk, 'st', 'running', 'o', ARGV[1], 'le', lease,
      'at', string.format('%d', tonumber(attempt) + 1), 'er', '', 'ru', fmt_time(now))
    local score = redis.call('ZSCORE', base .. 'runs', run_id)
    redis.call('ZREM', base .. 'rs:queued', run_id)
    if score then redis.call('ZADD', base .. 'rs:running', score, run_id) end
    index_ownership(ARGV[3], rk, 'running', ARGV[1], lease, f[2])
    table.insert(out, redis.call('HMGET', rk, 'j', 'st', 'o', 'le', 'at', 'er', 'ru'))
  end
end
return out
"""

# KEYS: the tick key, the last-tick hash. ARGV: ttl ms, field, tick, run id.
_CLAIM_TICK = """
if not redis.call('SET', KEYS[1], ARGV[4], 'NX', 'PX', ARGV[1]) then return 0 end
local old = redis.call('HGET', KEYS[2], ARGV[2])
if not old or tonumber(string.match(old, '^([^|]*)')) < tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3] .. '|' .. ARGV[4])
end
return 1
"""


class RedisBackground:
    def __init__(self, url: str, store: Store, *, prefix: str = "roost:",
                 tick_retention_s: float = 86_400.0) -> None:
        self.url = url
        self.prefix = prefix
        self._queue = f"{prefix}%bq"  # delayed: by due time
        self._ranks = f"{prefix}%bqrank"  # every entry, by rank
        self._ready = f"{prefix}%bqready"  # due entries, by rank
        self._last_rank = f"{prefix}%bqlast"  # tenant → its newest rank
        self._served = f"{prefix}%bqserved"  # the newest claimed rank: the virtual clock
        self._schedules = f"{prefix}%sched"
        self._last = f"{prefix}%schedlast"
        self._retention_ms = int(tick_retention_s * 1000)
        self._client: aioredis.Redis | None = None
        self._claim: Any = None
        self._enqueue: Any = None
        self._claim_tick: Any = None

    def _base(self, tenant: str) -> str:
        return f"{self.prefix}{_escape(tenant)}:"

    def _member(self, tenant: str, item_id: str) -> str:
        return f"{self._base(tenant)}|{item_id}"

    async def open(self) -> None:
        if self._client is None:
            client = aioredis.Redis.from_url(self.url)
            self._claim = client.register_script(_CLAIM)
            self._enqueue = client.register_script(_ENQUEUE)
            self._claim_tick = client.register_script(_CLAIM_TICK)
            self._client = client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _redis(self) -> aioredis.Redis:
        await self.open()
        assert self._client is not None
        return self._client

    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        r = await self._redis()
        with _redis_errors("enqueue"):
            await self._enqueue([self._queue, self._ranks, self._ready, self._last_rank,
                                 self._served],
                                [self._member(run.tenant, run.id), not_before, run.tenant],
                                client=r)

    async def claim(self, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
        r = await self._redis()
        with _redis_errors("claim"):
            found = await self._claim([self._queue, self._ranks, self._ready, self._served],
                                      [owner, int(ttl_s * 1000), self.prefix, limit], client=r)
        runs = [_run_from_fields(fields) for fields in found]
        return [run for run in runs if run is not None]

    async def remove(self, tenant: str, run_id: str) -> bool:
        r = await self._redis()
        with _redis_errors("remove"):
            member = self._member(tenant, run_id)
            async with r.pipeline(transaction=True) as pipe:
                pipe.zrem(self._ranks, member)
                pipe.zrem(self._ready, member)
                pipe.zrem(self._queue, member)
                removed, *_ = await pipe.execute()
        return bool(removed)

    async def next_due(self) -> float | None:
        r = await self._redis()
        with _redis_errors("next_due"):
            ready = await r.zcard(self._ready)
            first = await r.zrange(self._queue, 0, 0, withscores=True)
        if ready:
            return now()
        return float(first[0][1]) if first else None

    async def depth(self) -> int:
        r = await self._redis()
        with _redis_errors("depth"):
            return int(await r.zcard(self._ranks))

    async def put_schedule(self, schedule: Schedule) -> None:
        r = await self._redis()
        field = self._member(schedule.tenant, schedule.id)
        with _redis_errors("put_schedule"):
            # The last tick is the tick claims' to write (`P%schedlast`), never this.
            await r.hset(self._schedules, field, msgspec.json.encode(schedule))

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        r = await self._redis()
        field = self._member(tenant, schedule_id)
        with _redis_errors("get_schedule"):
            raw: Any = await r.hget(self._schedules, field)
            last: Any = await r.hget(self._last, field)
        return None if raw is None else _schedule(raw, last)

    async def list_schedules(self, tenant: str | None, agent: str | None = None
                             ) -> list[Schedule]:
        r = await self._redis()
        with _redis_errors("list_schedules"):
            raw: Any = await r.hgetall(self._schedules)
            last: Any = await r.hgetall(self._last)
        prefix = None if tenant is None else (self._base(tenant) + "|").encode()
        found = [_schedule(value, last.get(field)) for field, value in raw.items()
                 if prefix is None or field.startswith(prefix)]
        return sorted((s for s in found if agent in (None, s.agent)),
                      key=lambda s: (s.created_at, s.id))

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        r = await self._redis()
        field = self._member(tenant, schedule_id)
        with _redis_errors("delete_schedule"):
            async with r.pipeline(transaction=True) as pipe:
                pipe.hdel(self._schedules, field)
                pipe.hdel(self._last, field)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def claim_tick(self, tenant: str, schedule_id: str, tick: float, run_id: str
                         ) -> bool:
        r = await self._redis()
        field = self._member(tenant, schedule_id)
        key = f"{self.prefix}%tick:{field}:{tick!r}"
        with _redis_errors("claim_tick"):
            return bool(await self._claim_tick([key, self._last],
                                               [self._retention_ms, field, repr(tick), run_id],
                                               client=r))

    async def prune_ticks(self, before: float) -> int:
        return 0  # tick keys expire on their own (tick_retention_s)


def _schedule(raw: bytes, last: bytes | None) -> Schedule:
    schedule = msgspec.json.decode(raw, type=Schedule)
    if last:
        tick, _, run_id = last.decode().partition("|")
        if schedule.last_tick is None or float(tick) > schedule.last_tick:
            schedule.last_tick = float(tick)
            schedule.last_run_id = run_id or None
    return schedule
