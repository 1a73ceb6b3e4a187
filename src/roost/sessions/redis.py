"""The Redis session store: shared sessions with native TTLs.

    >>> store = RedisStore("redis://cache:6379/0", prefix="roost:")
    >>> await store.open()

Key layout. `P` is the prefix, `T` the tenant with `%` and `:` percent-escaped (so a tenant
can never forge another tenant's keys: the first `:` after `P` always ends the tenant):

    P T:s:{session}        hash   a agent · uid user_id · st state JSON · md metadata JSON ·
                                  v version · q last_seq · c created_at · u updated_at ·
                                  x expires_at · xm expires_at in ms · xk its `P exp` member
    P T:e:{session}        zset   the event log: score = seq, member = b"{seq}:" + event JSON
    P T:sr:{session}       zset   run ids of the session, score = created_at
    P T:r:{run}            hash   j run JSON · st status · sid session id · a agent ·
                                  m model · us usage JSON (a, m, us: written since usage
                                  summaries; usage_summary falls back to j without them)
    P T:runs               zset   run ids of the tenant, score = created_at
    P T:rs:{status}        zset   run ids by status, score = created_at
    P T:idx:all            zset   session ids, score = created_at (list_sessions)
    P T:idx:a:{agent}      zset   … of one agent
    P T:idx:u:{user_id}    zset   … of one user
    P T:lease:{session}    string the owner, with PX = the lease's TTL
    P exp                  zset   every session with an expires_at, score = expires_at,
                                  member = JSON [tenant, id, agent, user_id]
    P T:re:{session}       zset   the log by run, lexically: run id NUL seq (20 digits)
    P T:ik:{scope}:{key}   hash   an idempotency record (f v c x), native TTL; scope escaped
    P claim                zset   run keys of queued/running runs with a lease, by expiry
    P claimi               zset   run keys of interrupted runs, by lease (0: no live owner)
    P %own:{owner}         set    run keys of the owner's runs (pruned by renewals)
    P %ownl:{owner}        set    lease keys the owner holds (pruned by renewals)
    P agents               hash   JSON [scope, agent] → lifecycle state

A run hash also holds o owner · le lease_expires_at · at attempt · er error JSON · ru
updated_at beside st: the fields a claim or a renewal changes in Lua (whose cjson would lose
float precision re-encoding j); they override j when read. Global keys never collide with a
tenant's: those have a `:` right after the escaped tenant, which never starts with `%o`.
Leases and idempotency records are on the Redis clock (`TIME` inside the scripts).

Timestamps are stored as `repr(float)` and scores as doubles: both round-trip exactly. Ties
in a listing are ordered by id in byte order, as on the SQL backends (`COLLATE "C"`).

Atomicity: every write that checks something (create, append, patch, put_run, delete, leases)
is one Lua script (EVALSHA, loaded at `open`), so a compare-and-set append (version check, seq
assignment, event writes, run upsert, TTL refresh) is atomic and costs one round trip. Scripts
name some keys they compute (index and run keys), so this store targets a single Redis
(standalone or Sentinel), not Redis Cluster.

TTLs: a session with `expires_at` gets PEXPIREAT on all its keys, set again on every write so
keys created later (the event log, runs) expire with it. `expire_sessions(now)` sweeps `P exp`
by score: it deletes what is left of each session due by `now` and removes it from the
indexes, and counts it. With `default_ttl_s`, a session *without* `expires_at` gets a sliding
idle TTL instead (PEXPIRE, refreshed by every write to it): a safety net that keeps an
abandoned Redis from filling up. Index entries left behind by a native expiry are skipped by
listings and removed lazily.

Outages: connection refused/reset, timeouts (`socket_timeout_s`), a loading or read-only
server, and waiting longer than `socket_timeout_s` for one of the `max_connections` pooled
connections all become `StoreUnavailable`. The client does not retry on its own: a retried append
whose first attempt did land would come back as a spurious `VersionConflict`. Connections
broken by an outage are replaced on next use, so the store recovers by itself.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator, Collection, Iterator, Sequence
from contextlib import aclosing, contextmanager
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from roost.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    RunNotFound,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from roost.sessions import codec
from roost.sessions.records import Event, IdempotencyRecord, Page, RunRecord, Session
from roost.sessions.store import CLAIMABLE_STATUSES, MAX_LIST_RUNS
from roost.sessions.usage import UsageSummer, UsageTotals, check_window

__all__ = ["RedisStore"]

_UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    rex.ConnectionError,  # incl. BusyLoadingError, MaxConnectionsError
    rex.TimeoutError,
    rex.ReadOnlyError,  # a failover left us on a replica
    rex.MasterDownError,
    rex.TryAgainError,
    rex.OutOfMemoryError,  # maxmemory reached with noeviction: refused until freed
    OSError,
    TimeoutError,
)


@contextmanager
def _redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py's exceptions into Roost's tree; Roost's own errors pass through."""
    try:
        yield
    except _UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"redis: {what}: {type(exc).__name__}: {exc}") from exc
    except rex.RedisError as exc:
        raise StoreError(f"redis: {what}: {type(exc).__name__}: {exc}") from exc


# -- Lua ----------------------------------------------------------------------------------
# Shared helpers, prepended to the scripts that need them. Lua numbers are doubles: format
# integers with %d, never tostring (which switches to exponent notation past 1e14).
_LUA_HELPERS = """
local function zadd_many(key, pairs)
  -- unpack() is bounded by the Lua C stack: write in slices.
  for i = 1, #pairs, 1000 do
    redis.call('ZADD', key, unpack(pairs, i, math.min(i + 999, #pairs)))
  end
end

local function refresh_ttl(xm, ttl_ms, keys)
  if xm then
    for _, k in ipairs(keys) do redis.call('PEXPIREAT', k, xm) end
  elseif ttl_ms ~= '' then
    for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ttl_ms) end
  end
end

local TERMINAL = {completed = true, failed = true, cancelled = true, timed_out = true,
                  interrupted = true, budget_exceeded = true}

local function fmt_time(t)
  return string.format('%.17g', t)
end

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- The fleet's indexes of one run: its owner's set, and the claimable sets by lease expiry.
local function index_ownership(prefix, run_key, status, owner, lease, old_owner)
  if old_owner and old_owner ~= '' and old_owner ~= owner then
    redis.call('SREM', prefix .. '%own:' .. old_owner, run_key)
  end
  if owner ~= '' then
    if TERMINAL[status] then
      redis.call('SREM', prefix .. '%own:' .. owner, run_key)
    else
      redis.call('SADD', prefix .. '%own:' .. owner, run_key)
    end
  end
  -- A waiting run has no owner: its lease is the wait's deadline (the timeout scan).
  if (status == 'queued' or status == 'running' or (status == 'waiting' and owner == ''))
      and lease ~= '' then
    redis.call('ZADD', prefix .. 'claim', lease, run_key)
  else
    redis.call('ZREM', prefix .. 'claim', run_key)
  end
  if status == 'interrupted' then
    local score = 0
    if owner ~= '' and lease ~= '' then score = lease end
    redis.call('ZADD', prefix .. 'claimi', score, run_key)
  else
    redis.call('ZREM', prefix .. 'claimi', run_key)
  end
end

local function upsert_run(base, run_key, run_id, session_id, status, score, json,
                          agent, model, usage, owner, lease, attempt, err, updated, prefix)
  local old = redis.call('HMGET', run_key, 'st', 'sid', 'o', 'le')
  if old[1] and old[1] ~= status then
    redis.call('ZREM', base .. 'rs:' .. old[1], run_id)
  end
  if old[2] and old[2] ~= session_id then
    redis.call('ZREM', base .. 'sr:' .. old[2], run_id)
  end
  -- A write never shortens a lease its owner holds (see records.kept_lease).
  if lease ~= '' and old[3] == owner and old[4] and old[4] ~= ''
      and tonumber(old[4]) > tonumber(lease) then
    lease = old[4]
  end
  -- agent, model and usage beside the JSON: usage_summary reads these few bytes per run
  -- instead of the whole record (input and output included). Status and the fields a
  -- claim or a renewal changes are beside it too, and override the JSON when read.
  redis.call('HSET', run_key, 'j', json, 'st', status, 'sid', session_id,
    'a', agent, 'm', model, 'us', usage, 'o', owner, 'le', lease, 'at', attempt,
    'er', err, 'ru', updated)
  redis.call('ZADD', base .. 'sr:' .. session_id, score, run_id)
  redis.call('ZADD', base .. 'runs', score, run_id)
  redis.call('ZADD', base .. 'rs:' .. status, score, run_id)
  index_ownership(prefix, run_key, status, owner, lease, old[3])
end
"""

# KEYS: s, e, idx:all, idx:a, idx:u, exp
# ARGV: created score, id, has_user, xk | '', x score, xm, default ttl ms | '', field, value…
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
-- A log left by an earlier session of this id (natively expired) must not leak into this one.
redis.call('UNLINK', KEYS[2])
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('ZADD', KEYS[5], ARGV[1], ARGV[2]) end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[6], ARGV[5], ARGV[4])
  redis.call('PEXPIREAT', KEYS[1], ARGV[6])
elseif ARGV[7] ~= '' then
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
end
return 1
"""

# KEYS: s, e, sr, re
# ARGV: expected version, updated_at, default ttl ms | '', base, session id, run id | '',
#       run status, run score, run json, run agent, run model, run usage JSON, run owner,
#       lease, attempt, error, run updated_at, prefix, n, n event JSONs, n run ids | ''
# Returns {-1} no session, {-2, version} conflict, {new version, previous last_seq}.
_APPEND = (
    _LUA_HELPERS
    + """
local cur = redis.call('HMGET', KEYS[1], 'v', 'q', 'xm')
if not cur[1] then return {-1} end
local v = tonumber(cur[1])
if v ~= tonumber(ARGV[1]) then return {-2, v} end
local q = tonumber(cur[2])
local n = tonumber(ARGV[19])
if n > 0 then
  local pairs = {}
  local by_run = {}
  for i = 1, n do
    local seq = string.format('%d', q + i)
    pairs[2 * i - 1] = seq
    pairs[2 * i] = seq .. ':' .. ARGV[19 + i]
    local run_id = ARGV[19 + n + i]
    if run_id ~= '' then
      -- The log again by run, lexically: run id, NUL, zero-padded seq (see read_run_events).
      by_run[#by_run + 1] = 0
      by_run[#by_run + 1] = run_id .. '\\0' .. string.format('%020d', q + i)
    end
  end
  zadd_many(KEYS[2], pairs)
  if #by_run > 0 then zadd_many(KEYS[4], by_run) end
end
redis.call('HSET', KEYS[1], 'v', string.format('%d', v + 1),
  'q', string.format('%d', q + n), 'u', ARGV[2])
local touched = {KEYS[1], KEYS[2], KEYS[3], KEYS[4]}
if ARGV[6] ~= '' then
  local run_key = ARGV[4] .. 'r:' .. ARGV[6]
  upsert_run(ARGV[4], run_key, ARGV[6], ARGV[5], ARGV[7], ARGV[8], ARGV[9],
    ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16], ARGV[17], ARGV[18])
  touched[5] = run_key
end
refresh_ttl(cur[3], ARGV[3], touched)
return {v + 1, q}
"""
)

# KEYS: s, e, sr, re
# ARGV: version read, state JSON, updated_at, default ttl ms | ''
_PATCH = (
    _LUA_HELPERS
    + """
local cur = redis.call('HMGET', KEYS[1], 'v', 'xm')
if not cur[1] then return {-1} end
local v = tonumber(cur[1])
if v ~= tonumber(ARGV[1]) then return {-2, v} end
redis.call('HSET', KEYS[1], 'v', string.format('%d', v + 1), 'st', ARGV[2], 'u', ARGV[3])
refresh_ttl(cur[2], ARGV[4], {KEYS[1], KEYS[2], KEYS[3], KEYS[4]})
return {v + 1}
"""
)

# KEYS: s, sr, run key
# ARGV: base, run id, session id, status, score, json, default ttl ms | '', agent, model,
#       usage JSON, owner | '', lease | '', attempt, error JSON | '', updated_at, prefix
_PUT_RUN = (
    _LUA_HELPERS
    + """
local xm = redis.call('HGET', KEYS[1], 'xm')
if not xm and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
upsert_run(ARGV[1], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12], ARGV[13], ARGV[14], ARGV[15], ARGV[16])
refresh_ttl(xm, ARGV[7], {KEYS[1], KEYS[2], KEYS[3]})
return 1
"""
)

# KEYS: s, e, sr, lease, idx:all, runs, exp, re
# ARGV: id, base, sweep now | '', then for a sweep (the hash may have expired natively):
#       agent, has_user, user, exp member; and always the prefix (ARGV[8])
# Returns {existed, removed from exp}.
_DELETE = """
local id, base = ARGV[1], ARGV[2]
local sweep = ARGV[3] ~= ''
if sweep then
  -- Re-check under the script's atomicity: the session may have been deleted and
  -- re-created with a later expires_at since the sweeper read `exp`.
  local score = redis.call('ZSCORE', KEYS[7], ARGV[7])
  if not score or tonumber(score) > tonumber(ARGV[3]) then return {0, 0} end
end
local f = redis.call('HMGET', KEYS[1], 'a', 'uid', 'xk')
local existed = 0
local agent, user, xk = f[1], f[2], f[3]
if agent then
  existed = 1
elseif sweep then
  agent, xk = ARGV[4], ARGV[7]
  if ARGV[5] == '1' then user = ARGV[6] end
end
local runs = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, r in ipairs(runs) do
  local rk = base .. 'r:' .. r
  local f = redis.call('HMGET', rk, 'st', 'o')
  if f[1] then redis.call('ZREM', base .. 'rs:' .. f[1], r) end
  if f[2] and f[2] ~= '' then redis.call('SREM', ARGV[8] .. '%own:' .. f[2], rk) end
  redis.call('ZREM', ARGV[8] .. 'claim', rk)
  redis.call('ZREM', ARGV[8] .. 'claimi', rk)
  redis.call('UNLINK', rk)
  redis.call('ZREM', KEYS[6], r)
end
local holder = redis.call('GET', KEYS[4])
if holder then redis.call('SREM', ARGV[8] .. '%ownl:' .. holder, KEYS[4]) end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[8])
redis.call('ZREM', KEYS[5], id)
if agent then redis.call('ZREM', base .. 'idx:a:' .. agent, id) end
if user then redis.call('ZREM', base .. 'idx:u:' .. user, id) end
local removed = 0
if xk then removed = redis.call('ZREM', KEYS[7], xk) end
return {existed, removed}
"""

# KEYS: s, lease, the owner's lease set. ARGV: owner, ttl ms.
# Returns 1 taken, 0 held by another, -1 no session.
_ACQUIRE_LEASE = """
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[1] or (not cur) then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('SADD', KEYS[3], KEYS[2])
  return 1
end
return 0
"""

# KEYS: lease, the owner's lease set. ARGV: owner.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SREM', KEYS[2], KEYS[1])
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# The fields of a run hash a reader needs: the JSON, and the fields that override it.
_RUN_READ = ("j", "st", "o", "le", "at", "er", "ru")

# KEYS: run key. ARGV: owner, ttl ms, prefix, base, run id, status… On the Redis clock.
# Returns {-1} no such run, {0} not claimable, {1, the run's read fields…}.
_CLAIM_RUN = (
    _LUA_HELPERS
    + """
local f = redis.call('HMGET', KEYS[1], 'st', 'o', 'le', 'at', 'j')
if not f[1] then return {-1} end
local allowed = false
for i = 6, #ARGV do
  if ARGV[i] == f[1] then allowed = true end
end
if not allowed then return {0} end
local now = clock()
if f[2] and f[2] ~= '' and f[3] and f[3] ~= '' and tonumber(f[3]) > now then return {0} end
local attempt = f[4]
-- Written before ownership existed: the attempt is only in the JSON (an integer, which
-- cjson reads exactly).
if not attempt then attempt = cjson.decode(f[5]).attempt end
local lease = fmt_time(now + tonumber(ARGV[2]) / 1000)
redis.call('HSET', KEYS[1], 'st', 'running', 'o', ARGV[1], 'le', lease,
  'at', string.format('%d', tonumber(attempt) + 1), 'er', '', 'ru', fmt_time(now))
if f[1] ~= 'running' then
  local base, run_id = ARGV[4], ARGV[5]
  local score = redis.call('ZSCORE', base .. 'runs', run_id)
  redis.call('ZREM', base .. 'rs:' .. f[1], run_id)
  if score then redis.call('ZADD', base .. 'rs:running', score, run_id) end
end
index_ownership(ARGV[3], KEYS[1], 'running', ARGV[1], lease, f[2])
local out = redis.call('HMGET', KEYS[1], 'j', 'st', 'o', 'le', 'at', 'er', 'ru')
table.insert(out, 1, 1)
return out
"""
)

# KEYS: the owner's run set, the owner's lease set. ARGV: owner, ttl ms, prefix.
# Returns how many runs it renewed. Entries no longer the owner's are dropped on the way.
_RENEW_OWNERSHIP = (
    _LUA_HELPERS
    + """
local now = clock()
local lease = fmt_time(now + tonumber(ARGV[2]) / 1000)
local renewed = 0
for _, rk in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local f = redis.call('HMGET', rk, 'st', 'o')
  if f[2] == ARGV[1] and f[1] and not TERMINAL[f[1]] then
    redis.call('HSET', rk, 'le', lease)
    if f[1] == 'queued' or f[1] == 'running' then
      redis.call('ZADD', ARGV[3] .. 'claim', lease, rk)
    end
    renewed = renewed + 1
  else
    redis.call('SREM', KEYS[1], rk)
  end
end
for _, lk in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if redis.call('GET', lk) == ARGV[1] then
    redis.call('PEXPIRE', lk, ARGV[2])
  else
    redis.call('SREM', KEYS[2], lk)
  end
end
return renewed
"""
)

# Read-only. KEYS: claim, claimi. ARGV: limit, include interrupted (1 | 0).
# Returns, per run, flat: run key, score, the run's read fields (false when it is gone).
_CLAIMABLE_RUNS = (
    _LUA_HELPERS
    + """
local now = fmt_time(clock())
local out = {}
local function add(key)
  local found = redis.call('ZRANGE', key, '-inf', now, 'BYSCORE', 'LIMIT', 0, ARGV[1],
                           'WITHSCORES')
  for i = 1, #found, 2 do
    out[#out + 1] = found[i]
    out[#out + 1] = found[i + 1]
    local f = redis.call('HMGET', found[i], 'j', 'st', 'o', 'le', 'at', 'er', 'ru')
    for j = 1, 7 do out[#out + 1] = f[j] end
  end
end
add(KEYS[1])
if ARGV[2] == '1' then add(KEYS[2]) end
return out
"""
)

# Read-only. KEYS: s, re, e. ARGV: run id, after, limit.
# Returns {0} no session, else {1, event member…}.
_READ_RUN_EVENTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local run = ARGV[1]
local marks = redis.call('ZRANGE', KEYS[2],
  '[' .. run .. '\\0' .. string.format('%020d', tonumber(ARGV[2]) + 1),
  '(' .. run .. '\\1', 'BYLEX', 'LIMIT', 0, ARGV[3])
local out = {1}
for _, m in ipairs(marks) do
  local seq = string.sub(m, #run + 2)
  local e = redis.call('ZRANGE', KEYS[3], seq, seq, 'BYSCORE')
  if e[1] then out[#out + 1] = e[1] end
end
return out
"""

# KEYS: the record's hash. ARGV: fingerprint, value, ttl ms. On the Redis clock; the key
# expires natively at expires_at. Returns {stored (1 | 0), fingerprint, value, c, x}.
_CLAIM_IDEMPOTENCY_KEY = (
    _LUA_HELPERS
    + """
local now = clock()
local cur = redis.call('HMGET', KEYS[1], 'f', 'v', 'c', 'x')
if cur[1] and tonumber(cur[4]) > now then return {0, cur[1], cur[2], cur[3], cur[4]} end
local c, x = fmt_time(now), fmt_time(now + tonumber(ARGV[3]) / 1000)
redis.call('HSET', KEYS[1], 'f', ARGV[1], 'v', ARGV[2], 'c', c, 'x', x)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, ARGV[1], ARGV[2], c, x}
"""
)

# Read-only. ARGV: base, run id… Returns a, m, st, us of each run, flat (nil when missing).
# One call per page instead of a pipelined HMGET per run: redis-py spends ~15 us of client
# CPU packing and parsing each command, most of a summary's cost.
_USAGE_FIELDS = """
local out = {}
for i = 2, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. 'r:' .. ARGV[i], 'a', 'm', 'st', 'us')
  -- HMGET gives false for a missing field: a value, so the array keeps its length.
  for j = 1, 4 do out[#out + 1] = f[j] end
end
return out
"""


# -- encoding -----------------------------------------------------------------------------
_event_decoder = msgspec.json.Decoder(Event)
_run_decoder = msgspec.json.Decoder(RunRecord)
_exp_member_decoder = msgspec.json.Decoder(tuple[str, str, str, str | None])
_agent_key_decoder = msgspec.json.Decoder(tuple[str, str])


def _escape(tenant: str) -> str:
    return tenant.replace("%", "%25").replace(":", "%3A")


def _ms_at(epoch_s: float) -> int:
    # Round up: a key must not vanish before the session's expires_at.
    return math.ceil(epoch_s * 1000)


def _session_from_hash(tenant: str, session_id: str, h: dict[Any, Any]) -> Session:
    uid = h.get(b"uid")
    x = h.get(b"x")
    return Session(
        id=session_id,
        tenant=tenant,
        agent=h[b"a"].decode(),
        user_id=None if uid is None else uid.decode(),
        state=codec.decode_object(h[b"st"]),
        metadata=codec.decode_object(h[b"md"]),
        version=int(h[b"v"]),
        last_seq=int(h[b"q"]),
        created_at=float(h[b"c"]),
        updated_at=float(h[b"u"]),
        expires_at=None if x is None else float(x),
    )


def _event_from_member(member: bytes) -> Event:
    seq, _, payload = member.partition(b":")
    event = _event_decoder.decode(payload)
    event.seq = int(seq)
    return event


class _Keys:
    """Key names of one tenant (see the module docstring)."""

    __slots__ = ("base",)

    def __init__(self, prefix: str, tenant: str) -> None:
        self.base = f"{prefix}{_escape(tenant)}:"

    def session(self, session_id: str) -> str:
        return f"{self.base}s:{session_id}"

    def events(self, session_id: str) -> str:
        return f"{self.base}e:{session_id}"

    def session_runs(self, session_id: str) -> str:
        return f"{self.base}sr:{session_id}"

    def run(self, run_id: str) -> str:
        return f"{self.base}r:{run_id}"

    def lease(self, session_id: str) -> str:
        return f"{self.base}lease:{session_id}"

    def run_events(self, session_id: str) -> str:
        return f"{self.base}re:{session_id}"

    def idempotency(self, scope: str, key: str) -> str:
        return f"{self.base}ik:{_escape(scope)}:{key}"

    def runs(self, status: str | None = None) -> str:
        return f"{self.base}runs" if status is None else f"{self.base}rs:{status}"

    def index(self, agent: str | None = None, user_id: str | None = None) -> str:
        if user_id is not None:
            return f"{self.base}idx:u:{user_id}"
        if agent is not None:
            return f"{self.base}idx:a:{agent}"
        return f"{self.base}idx:all"


class RedisStore:
    """A `Store` on Redis (redis-py asyncio, Lua for every compare-and-set).

    `prefix` namespaces every key; `clear_prefix_on_close` deletes them all on `close()`
    (for tests). `socket_timeout_s` bounds connecting, every command, and the wait for a free
    connection when all `max_connections` are busy. `default_ttl_s` is an idle TTL for
    sessions created without `expires_at` (see the module docstring).
    """

    backend = "redis"

    #: entries fetched per round trip by listings and the expiry sweep
    scan_batch_size = 200
    #: patch_state without expected_version retries its read-merge-write this many times
    patch_attempts = 50

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "roost:",
        clear_prefix_on_close: bool = False,
        socket_timeout_s: float = 2.0,
        default_ttl_s: float | None = None,
        max_connections: int = 50,
    ) -> None:
        problems = []
        if socket_timeout_s <= 0:
            problems.append(("store.socket_timeout_s", "must be > 0"))
        if default_ttl_s is not None and default_ttl_s <= 0:
            problems.append(("store.default_ttl_s", "must be > 0 or unset"))
        if clear_prefix_on_close and not prefix:
            problems.append(("store.prefix", "refusing to clear an empty prefix on close"))
        if max_connections < 1:
            problems.append(("store.max_connections", "must be >= 1"))
        if problems:
            raise ConfigError("invalid redis store options", problems)
        self._url = url
        self._prefix = prefix
        self._clear_on_close = clear_prefix_on_close
        self._timeout = socket_timeout_s
        self._max_connections = max_connections
        self._ttl_ms = "" if default_ttl_s is None else str(max(1, round(default_ttl_s * 1000)))
        self._exp_key = f"{prefix}exp"
        self._client: aioredis.Redis | None = None
        self._open_lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------
    async def open(self) -> None:
        async with self._open_lock:
            if self._client is not None:
                return
            try:
                # A blocking pool: a burst beyond max_connections waits (up to the socket
                # timeout) for a free connection instead of failing at once.
                pool = aioredis.BlockingConnectionPool.from_url(
                    self._url,
                    max_connections=self._max_connections,
                    timeout=self._timeout,
                    decode_responses=False,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                )
            except ValueError as exc:  # malformed URL: nothing to retry
                raise ConfigError(f"redis: {exc}", [("store.url", str(exc))]) from exc
            client = aioredis.Redis.from_pool(pool)
            self._create = client.register_script(_CREATE)
            self._append = client.register_script(_APPEND)
            self._patch = client.register_script(_PATCH)
            self._put_run = client.register_script(_PUT_RUN)
            self._delete = client.register_script(_DELETE)
            self._acquire = client.register_script(_ACQUIRE_LEASE)
            self._release = client.register_script(_RELEASE_LEASE)
            self._usage_fields = client.register_script(_USAGE_FIELDS)
            self._claim_run = client.register_script(_CLAIM_RUN)
            self._renew = client.register_script(_RENEW_OWNERSHIP)
            self._claimable = client.register_script(_CLAIMABLE_RUNS)
            self._read_run_events = client.register_script(_READ_RUN_EVENTS)
            self._claim_key = client.register_script(_CLAIM_IDEMPOTENCY_KEY)
            try:
                with _redis_errors("open"):
                    await client.ping()
                    # Load up front so the first calls are plain EVALSHAs. After a Redis
                    # restart flushes the script cache, redis-py reloads on NOSCRIPT.
                    for script in (
                        self._create, self._append, self._patch, self._put_run,
                        self._delete, self._acquire, self._release, self._usage_fields,
                        self._claim_run, self._renew, self._claimable,
                        self._read_run_events, self._claim_key,
                    ):  # fmt: skip
                        await client.script_load(script.script)
            except BaseException:
                await client.aclose()
                raise
            self._client = client

    async def close(self) -> None:
        async with self._open_lock:
            client, self._client = self._client, None
            if client is None:
                return
            try:
                if self._clear_on_close:
                    with _redis_errors("clear prefix"):
                        await self._clear_prefix(client)
            finally:
                await client.aclose()

    async def _clear_prefix(self, client: aioredis.Redis) -> None:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._prefix) + "*"
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)

    async def ping(self) -> None:
        client = self._redis()
        with _redis_errors("ping"):
            await client.ping()

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("redis store is not open")
        return self._client

    # -- sessions ---------------------------------------------------------------
    async def create_session(self, session: Session) -> Session:
        client = self._redis()
        k = _Keys(self._prefix, session.tenant)
        fields: list[Any] = [
            b"a", session.agent,
            b"st", codec.encode(session.state),
            b"md", codec.encode(session.metadata),
            b"v", session.version,
            b"q", session.last_seq,
            b"c", repr(session.created_at),
            b"u", repr(session.updated_at),
        ]  # fmt: skip
        if session.user_id is not None:
            fields += [b"uid", session.user_id]
        x = xm = ""
        xk: bytes | str = ""
        if session.expires_at is not None:
            x, xm = repr(session.expires_at), str(_ms_at(session.expires_at))
            xk = codec.encode([session.tenant, session.id, session.agent, session.user_id])
            fields += [b"x", x, b"xm", xm, b"xk", xk]
        keys = [
            k.session(session.id),
            k.events(session.id),
            k.index(),
            k.index(agent=session.agent),
            k.index(user_id=session.user_id or ""),
            self._exp_key,
        ]
        args = [
            repr(session.created_at),
            session.id,
            "1" if session.user_id is not None else "0",
            xk, x, xm, self._ttl_ms,
            *fields,
        ]  # fmt: skip
        with _redis_errors("create_session"):
            created = await self._create(keys, args, client=client)
        if not created:
            raise Conflict(f"session {session.id} already exists", session_id=session.id)
        return session

    async def get_session(self, tenant: str, session_id: str) -> Session:
        client = self._redis()
        with _redis_errors("get_session"):
            h = await client.hgetall(_Keys(self._prefix, tenant).session(session_id))
        if not h:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        return _session_from_hash(tenant, session_id, h)

    async def list_sessions(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        _check_limit(limit, minimum=1)
        after = codec.decode_cursor(cursor) if cursor is not None else None
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        # The most selective index; with both filters the agent is checked per session.
        index = k.index(agent=agent, user_id=user_id)
        check_agent = agent if user_id is not None else None
        want = limit + 1  # one more tells whether there is a next page
        found: list[Session] = []
        dangling: list[bytes] = []
        with _redis_errors("list_sessions"):
            pages = self._index_pages(client, index, after, want)
            async with aclosing(pages):
                async for ids in pages:
                    pipe = client.pipeline(transaction=False)
                    for raw_id in ids:
                        pipe.hgetall(k.session(raw_id.decode()))
                    for raw_id, h in zip(ids, await pipe.execute(), strict=True):
                        if not h:
                            dangling.append(raw_id)  # expired natively, sweep not run yet
                            continue
                        session = _session_from_hash(tenant, raw_id.decode(), h)
                        if check_agent is None or session.agent == check_agent:
                            found.append(session)
                            if len(found) == want:
                                break
                    if len(found) == want:
                        break
            if dangling:
                await client.zrem(index, *dangling)
        items = found[:limit]
        next_cursor = None
        if len(found) > limit:
            next_cursor = codec.encode_cursor(items[-1].created_at, items[-1].id)
        return Page(items=items, next_cursor=next_cursor)

    async def _index_pages(
        self,
        client: aioredis.Redis,
        index: str,
        after: tuple[float, str] | None,
        want: int,
    ) -> AsyncGenerator[list[bytes], None]:
        """Yield slices of ids from `index`, newest first by (score, id), after the cursor."""
        upper = "+inf"
        if after is not None:
            score, last_id = after
            # Ties on the cursor's score: Redis orders them by id bytes, so keep those below
            # the cursor's id (bytes compare like memcmp, as Redis does).
            ties: list[bytes] = cast(
                list[bytes],
                await client.zrange(index, repr(score), repr(score), desc=True, byscore=True),
            )
            last = last_id.encode()
            below = [t for t in ties if t < last]
            if below:
                yield below
            upper = f"({score!r}"
        offset = 0
        while True:
            size = max(want, self.scan_batch_size)
            ids: list[bytes] = cast(
                list[bytes],
                await client.zrange(
                    index, upper, "-inf", desc=True, byscore=True, offset=offset, num=size
                ),
            )
            if ids:
                yield ids
            if len(ids) < size:
                return
            offset += len(ids)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        with _redis_errors("delete_session"):
            existed, _ = await self._delete(
                self._delete_keys(k, session_id),
                [session_id, k.base, "", "", "", "", "", self._prefix],
                client=client,
            )
        return bool(existed)

    def _delete_keys(self, k: _Keys, session_id: str) -> list[str]:
        return [
            k.session(session_id),
            k.events(session_id),
            k.session_runs(session_id),
            k.lease(session_id),
            k.index(),
            k.runs(),
            self._exp_key,
            k.run_events(session_id),
        ]

    async def patch_state(
        self,
        tenant: str,
        session_id: str,
        delta: dict[str, Any],
        expected_version: int | None = None,
    ) -> Session:
        delta = codec.decode_object(codec.encode(delta))  # refuse what JSON cannot hold, early
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        keys = [
            k.session(session_id),
            k.events(session_id),
            k.session_runs(session_id),
            k.run_events(session_id),
        ]
        # State merges happen here, not in Lua: Lua's cjson loses float precision and cannot
        # tell {} from []. So: read, merge, then compare-and-set on the version we read.
        for _ in range(self.patch_attempts):
            with _redis_errors("patch_state"):
                h = await client.hgetall(keys[0])
            if not h:
                raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
            session = _session_from_hash(tenant, session_id, h)
            if expected_version is not None and session.version != expected_version:
                raise VersionConflict(session_id, expected_version, session.version)
            for key, value in delta.items():
                if value is None:
                    session.state.pop(key, None)
                else:
                    session.state[key] = value
            updated_at = time.time()
            args: list[Any] = [
                session.version,
                codec.encode(session.state),
                repr(updated_at),
                self._ttl_ms,
            ]
            with _redis_errors("patch_state"):
                result = await self._patch(keys, args, client=client)
            if result[0] == -1:
                raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
            if result[0] == -2:
                if expected_version is not None:
                    raise VersionConflict(session_id, expected_version, int(result[1]))
                continue  # someone wrote in between: merge again onto the new state
            session.version = int(result[0])
            session.updated_at = updated_at
            return session
        raise VersionConflict(session_id, session.version, None)

    # -- the event log ----------------------------------------------------------
    async def append(
        self,
        tenant: str,
        session_id: str,
        events: list[Event],
        expected_version: int,
        run: RunRecord | None = None,
    ) -> int:
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        run_args: list[Any] = ["", "", "", "", "", "", "", "", "", "", "", ""]
        if run is not None:
            if run.tenant != tenant or run.session_id != session_id:
                raise InvalidInput(
                    f"run {run.id} belongs to session {run.session_id} of tenant {run.tenant}, "
                    f"not session {session_id} of tenant {tenant}",
                    field="run",
                )
            run_args = [run.id, run.status, repr(run.created_at), *_run_fields(run),
                        *_ownership_fields(run)]
        args = [
            expected_version,
            repr(time.time()),
            self._ttl_ms,
            k.base,
            session_id,
            *run_args,
            self._prefix,
            len(events),
            *[codec.encode(e) for e in events],
            *[e.run_id or "" for e in events],
        ]
        keys = [
            k.session(session_id),
            k.events(session_id),
            k.session_runs(session_id),
            k.run_events(session_id),
        ]
        with _redis_errors("append"):
            result = await self._append(keys, args, client=client)
        if result[0] == -1:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        if result[0] == -2:
            raise VersionConflict(session_id, expected_version, int(result[1]))
        version, first = int(result[0]), int(result[1])
        for i, event in enumerate(events, 1):
            event.seq = first + i
        return version

    async def read_events(
        self, tenant: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        with _redis_errors("read_events"):
            pipe = client.pipeline(transaction=False)
            pipe.exists(k.session(session_id))
            if limit:
                pipe.zrange(
                    k.events(session_id), f"({after}", "+inf", byscore=True, offset=0, num=limit
                )
            exists, *members = await pipe.execute()
        return self._events(session_id, exists, members)

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        _check_limit(limit, minimum=0)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        with _redis_errors("tail_events"):
            pipe = client.pipeline(transaction=False)
            pipe.exists(k.session(session_id))
            if limit:
                pipe.zrange(k.events(session_id), -limit, -1)
            exists, *members = await pipe.execute()
        return self._events(session_id, exists, members)

    @staticmethod
    def _events(session_id: str, exists: int, members: Sequence[list[bytes]]) -> list[Event]:
        if not exists:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        if not members:
            return []
        try:
            return [_event_from_member(m) for m in members[0]]
        except (msgspec.DecodeError, ValueError) as exc:
            raise StoreError(f"stored event does not decode: {exc}") from exc

    # -- runs -------------------------------------------------------------------
    async def put_run(self, run: RunRecord) -> None:
        client = self._redis()
        k = _Keys(self._prefix, run.tenant)
        keys = [k.session(run.session_id), k.session_runs(run.session_id), k.run(run.id)]
        json, agent, model, usage = _run_fields(run)
        args: list[Any] = [
            k.base,
            run.id,
            run.session_id,
            run.status,
            repr(run.created_at),
            json,
            self._ttl_ms,
            agent,
            model,
            usage,
            *_ownership_fields(run),
            self._prefix,
        ]
        with _redis_errors("put_run"):
            done = await self._put_run(keys, args, client=client)
        if not done:
            raise SessionNotFound(
                f"run {run.id}: session {run.session_id} not found", session_id=run.session_id
            )

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        client = self._redis()
        with _redis_errors("get_run"):
            fields = await client.hmget(_Keys(self._prefix, tenant).run(run_id), _RUN_READ)
        run = _run_from_fields(fields)
        if run is None:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        return run

    async def list_runs(
        self,
        tenant: str,
        *,
        session_id: str | None = None,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        since, until = check_window(since, until)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        # Every run index is scored by created_at: the window is a score range of the index
        # used; the other filters are checked per run.
        index = k.session_runs(session_id) if session_id is not None else k.runs(status)
        found: list[RunRecord] = []
        dangling: list[bytes] = []
        size = max(limit, self.scan_batch_size)
        with _redis_errors("list_runs"):
            pages = self._window(client, index, since, until, size, newest_first=True)
            async with aclosing(pages):
                async for entries in pages:
                    pipe = client.pipeline(transaction=False)
                    for raw_id, _ in entries:
                        pipe.hmget(k.run(raw_id.decode()), _RUN_READ)
                    for (raw_id, _), fields in zip(entries, await pipe.execute(), strict=True):
                        run = _run_from_fields(fields)
                        if run is None:
                            dangling.append(raw_id)  # expired natively with its session
                            continue
                        if (status is None or run.status == status) and (
                            agent is None or run.agent == agent
                        ):
                            found.append(run)
                            if len(found) == limit:
                                break
                    if len(found) == limit:
                        break
            if dangling:
                await client.zrem(index, *dangling)
        return found

    async def usage_summary(
        self,
        tenant: str,
        *,
        group_by: Sequence[str] = ("agent", "model"),
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        summer = UsageSummer(group_by)
        since, until = check_window(since, until)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        index = k.runs()
        dangling: list[bytes] = []
        with _redis_errors("usage_summary"):
            pages = self._window(
                client, index, since, until, self.scan_batch_size, newest_first=False
            )
            async with aclosing(pages):
                async for entries in pages:
                    flat = await self._usage_fields(
                        args=[k.base, *(raw_id for raw_id, _ in entries)], client=client
                    )
                    fields = [flat[i : i + 4] for i in range(0, len(flat), 4)]
                    legacy: list[bytes] = []
                    for (raw_id, score), (a, m, st, us) in zip(entries, fields, strict=True):
                        if st is None:
                            dangling.append(raw_id)  # expired natively with its session
                        elif us is None:
                            legacy.append(raw_id)  # written before a/m/us existed
                        else:
                            summer.add(agent=a.decode(), model=m.decode(), status=st.decode(),
                                       created_at=score, usage=codec.decode_usage(us))
                    if legacy:
                        pipe = client.pipeline(transaction=False)
                        for raw_id in legacy:
                            pipe.hget(k.run(raw_id.decode()), "j")
                        for raw_id, raw in zip(legacy, await pipe.execute(), strict=True):
                            if raw is None:
                                dangling.append(raw_id)
                                continue
                            run = codec.decode_run(raw)
                            summer.add(agent=run.agent, model=run.model, status=run.status,
                                       created_at=run.created_at, usage=run.usage)
            if dangling:
                await client.zrem(index, *dangling)
        return summer.totals()

    async def _window(
        self,
        client: aioredis.Redis,
        index: str,
        since: float | None,
        until: float | None,
        size: int,
        *,
        newest_first: bool,
    ) -> AsyncGenerator[list[tuple[bytes, float]], None]:
        """Yield slices of (id, created_at) from a run index, each entry once, over
        [since, until), newest or oldest first.

        Pages resume from the last (score, id) seen, not from an offset: a run written or
        deleted meanwhile cannot shift an entry into a page twice (a summary would count
        it twice) or out of every page.
        """
        low = "-inf" if since is None else repr(since)
        high = "+inf" if until is None else f"({until!r}"
        last: tuple[float, bytes] | None = None
        while True:
            start, end = (high, low) if newest_first else (low, high)
            page = cast(
                list[tuple[bytes, float]],
                await client.zrange(index, start, end, desc=newest_first, byscore=True,
                                    offset=0, num=size, withscores=True),
            )
            fresh = page
            if last is not None:
                # The page starts at the last score seen, inclusive: drop the ties already
                # yielded (Redis orders ties by id bytes, as `bytes` compare).
                score, seen = last
                if newest_first:
                    fresh = [e for e in page if e[1] < score or e[0] < seen]
                else:
                    fresh = [e for e in page if e[1] > score or e[0] > seen]
            if fresh:
                yield fresh
            if len(page) < size:
                return
            if not fresh:
                size *= 2  # a full page of ties already seen: look further at that score
                continue
            last = (fresh[-1][1], fresh[-1][0])
            if newest_first:
                high = repr(last[0])
            else:
                low = repr(last[0])

    # -- leases -----------------------------------------------------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        if not ttl_s > 0:
            raise InvalidInput("lease ttl_s must be positive", field="ttl_s")
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        with _redis_errors("acquire_lease"):
            got = await self._acquire(
                [k.session(session_id), k.lease(session_id), self._owned_leases(owner)],
                [owner, ttl_ms],
                client=client,
            )
        if got == -1:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        return bool(got)

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        client = self._redis()
        with _redis_errors("release_lease"):
            await self._release(
                [_Keys(self._prefix, tenant).lease(session_id), self._owned_leases(owner)],
                [owner],
                client=client,
            )

    def _owned_leases(self, owner: str) -> str:
        return f"{self._prefix}%ownl:{owner}"

    def _owned_runs(self, owner: str) -> str:
        return f"{self._prefix}%own:{owner}"

    # -- maintenance ------------------------------------------------------------
    async def expire_sessions(self, now: float) -> int:
        client = self._redis()
        total = 0
        with _redis_errors("expire_sessions"):
            while True:
                members: list[bytes] = cast(
                    list[bytes],
                    await client.zrange(
                        self._exp_key,
                        "-inf",
                        repr(now),
                        byscore=True,
                        offset=0,
                        num=self.scan_batch_size,
                    ),
                )
                if not members:
                    return total
                pipe = client.pipeline(transaction=False)
                for member in members:
                    tenant, session_id, agent, user_id = _exp_member_decoder.decode(member)
                    k = _Keys(self._prefix, tenant)
                    args: list[Any] = [
                        session_id,
                        k.base,
                        repr(now),
                        agent,
                        "1" if user_id is not None else "0",
                        user_id or "",
                        member,
                        self._prefix,
                    ]
                    await self._delete(self._delete_keys(k, session_id), args, client=pipe)
                results = await pipe.execute()
                total += sum(int(removed) for _, removed in results)
                if len(members) < self.scan_batch_size:
                    return total


    # -- the fleet --------------------------------------------------------------
    async def read_run_events(
        self, tenant: str, session_id: str, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        keys = [k.session(session_id), k.run_events(session_id), k.events(session_id)]
        with _redis_errors("read_run_events"):
            found = await self._read_run_events(keys, [run_id, after, limit], client=client)
        if not found[0]:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        try:
            return [_event_from_member(m) for m in found[1:]]
        except (msgspec.DecodeError, ValueError) as exc:
            raise StoreError(f"stored event does not decode: {exc}") from exc

    async def claim_run(
        self,
        tenant: str,
        run_id: str,
        owner: str,
        ttl_s: float,
        *,
        statuses: Collection[str] = CLAIMABLE_STATUSES,
    ) -> RunRecord | None:
        ttl_ms = _ttl_ms(ttl_s)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        args: list[Any] = [owner, ttl_ms, self._prefix, k.base, run_id, *statuses]
        with _redis_errors("claim_run"):
            result = await self._claim_run([k.run(run_id)], args, client=client)
        if result[0] == -1:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        return _run_from_fields(result[1:]) if result[0] == 1 else None

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        ttl_ms = _ttl_ms(ttl_s)
        client = self._redis()
        keys = [self._owned_runs(owner), self._owned_leases(owner)]
        with _redis_errors("renew_ownership"):
            return int(await self._renew(keys, [owner, ttl_ms, self._prefix], client=client))

    async def claimable_runs(
        self, *, include_interrupted: bool = False, limit: int = 100
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        client = self._redis()
        keys = [f"{self._prefix}claim", f"{self._prefix}claimi"]
        with _redis_errors("claimable_runs"):
            flat = await self._claimable(
                keys, [limit, "1" if include_interrupted else "0"], client=client)
        found: list[tuple[float, RunRecord]] = []
        dangling: list[bytes] = []
        for i in range(0, len(flat), 9):
            run = _run_from_fields(flat[i + 2 : i + 9])
            if run is None:
                dangling.append(flat[i])  # expired natively with its session
            else:
                found.append((float(flat[i + 1]), run))
        if dangling:
            with _redis_errors("claimable_runs"):
                await client.zrem(keys[0], *dangling)
                await client.zrem(keys[1], *dangling)
        found.sort(key=lambda e: (e[0], e[1].tenant, e[1].id))
        return [run for _, run in found[:limit]]

    async def claim_idempotency_key(
        self, tenant: str, scope: str, key: str, fingerprint: str, value: str, ttl_s: float
    ) -> tuple[bool, IdempotencyRecord]:
        ttl_ms = _ttl_ms(ttl_s)
        client = self._redis()
        k = _Keys(self._prefix, tenant)
        with _redis_errors("claim_idempotency_key"):
            stored, f, v, c, x = await self._claim_key(
                [k.idempotency(scope, key)], [fingerprint, value, ttl_ms], client=client)
        return bool(stored), IdempotencyRecord(
            fingerprint=f.decode(), value=v.decode(), created_at=float(c), expires_at=float(x))

    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        client = self._redis()
        with _redis_errors("set_agent_state"):
            await client.hset(f"{self._prefix}agents", codec.encode([scope, agent]), state)

    async def agent_states(self) -> dict[tuple[str, str], str]:
        client = self._redis()
        with _redis_errors("agent_states"):
            raw = cast(dict[bytes, bytes], await client.hgetall(f"{self._prefix}agents"))
        states: dict[tuple[str, str], str] = {}
        for field, state in raw.items():
            scope, agent = _agent_key_decoder.decode(field)
            states[(scope, agent)] = state.decode()
        return states

def _check_limit(limit: int, *, minimum: int, maximum: int | None = None) -> None:
    if limit < minimum:
        raise InvalidInput(f"limit must be at least {minimum}", field="limit")
    if maximum is not None and limit > maximum:
        raise InvalidInput(f"limit must be at most {maximum}", field="limit")


def _ttl_ms(ttl_s: float) -> int:
    if not ttl_s > 0:
        raise InvalidInput("ttl_s must be positive", field="ttl_s")
    return max(1, math.ceil(ttl_s * 1000))


def _ownership_fields(run: RunRecord) -> tuple[str, str, str, bytes | str, str]:
    """owner, lease, attempt, error, updated_at: the run hash's fields that claims and
    renewals change in Lua, beside (and overriding) the JSON."""
    return (
        run.owner or "",
        "" if run.lease_expires_at is None else repr(run.lease_expires_at),
        str(run.attempt),
        "" if run.error is None else codec.encode(run.error),
        repr(run.updated_at),
    )


def _run_from_fields(fields: Sequence[Any]) -> RunRecord | None:
    """A run from its hash's `_RUN_READ` fields; None when the run is gone."""
    raw, status, owner, lease, attempt, error, updated = fields
    if not raw:
        return None
    try:
        run = codec.decode_run(raw)
    except ValueError as exc:
        raise StoreError(f"stored run does not decode: {exc}") from exc
    if owner is not None and owner is not False:  # written since run ownership
        run.status = status.decode()
        run.owner = owner.decode() or None
        run.lease_expires_at = float(lease) if lease else None
        run.attempt = int(attempt)
        run.error = codec.decode_optional_object(error or None)
        run.updated_at = float(updated)
    return run


def _run_fields(run: RunRecord) -> tuple[bytes, str, str, bytes]:
    """A run's fields in its hash: the whole record as JSON, and beside it agent, model and
    usage (JSON) for usage summaries."""
    return codec.encode(run), run.agent, run.model, codec.encode(run.usage)
