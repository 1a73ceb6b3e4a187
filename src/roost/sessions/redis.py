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
from roost.sessions.records import OWNED_STATUSES, Event, Page, RunRecord, Session
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

local function index_owner(global, run_key, status, owner, lease)
  -- Ownership beside the JSON (renewals touch only these), and the fleet-wide index of runs
  -- that can be taken over: score = lease expiry (0: interrupted, nobody holds it).
  local claimable = global .. 'claimable'
  if (status == 'queued' or status == 'running') and owner ~= '' and lease ~= '' then
    redis.call('HSET', run_key, 'o', owner, 'le', lease)
    redis.call('ZADD', claimable, lease, run_key)
    redis.call('SADD', global .. 'own:' .. owner, run_key)
  elseif (status == 'queued' or status == 'running') and lease ~= '' then
    -- given back by a claimant that could not start it: anyone may claim it now
    redis.call('HDEL', run_key, 'o', 'le')
    redis.call('ZADD', claimable, lease, run_key)
  else
    redis.call('HDEL', run_key, 'o', 'le')
    if status == 'interrupted' and owner == '' then
      redis.call('ZADD', claimable, 0, run_key)
    else
      redis.call('ZREM', claimable, run_key)
    end
  end
end

local function upsert_run(base, run_key, run_id, session_id, status, score, json,
                          agent, model, usage)
  local old = redis.call('HMGET', run_key, 'st', 'sid')
  if old[1] and old[1] ~= status then
    redis.call('ZREM', base .. 'rs:' .. old[1], run_id)
  end
  if old[2] and old[2] ~= session_id then
    redis.call('ZREM', base .. 'sr:' .. old[2], run_id)
  end
  -- agent, model and usage beside the JSON: usage_summary reads these few bytes per run
  -- instead of the whole record (input and output included).
  redis.call('HSET', run_key, 'j', json, 'st', status, 'sid', session_id,
    'a', agent, 'm', model, 'us', usage)
  redis.call('ZADD', base .. 'sr:' .. session_id, score, run_id)
  redis.call('ZADD', base .. 'runs', score, run_id)
  redis.call('ZADD', base .. 'rs:' .. status, score, run_id)
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

# KEYS: s, e, sr
# ARGV: expected version, updated_at, default ttl ms | '', base, session id, run id | '',
#       run status, run score, run json, run agent, run model, run usage JSON, event JSON…
# Returns {-1} no session, {-2, version} conflict, {new version, previous last_seq}.
_APPEND = (
    _LUA_HELPERS
    + """
local cur = redis.call('HMGET', KEYS[1], 'v', 'q', 'xm')
if not cur[1] then return {-1} end
local v = tonumber(cur[1])
if v ~= tonumber(ARGV[1]) then return {-2, v} end
local q = tonumber(cur[2])
local n = #ARGV - 15
if n > 0 then
  local pairs = {}
  for i = 1, n do
    local seq = string.format('%d', q + i)
    pairs[2 * i - 1] = seq
    pairs[2 * i] = seq .. ':' .. ARGV[15 + i]
  end
  zadd_many(KEYS[2], pairs)
end
redis.call('HSET', KEYS[1], 'v', string.format('%d', v + 1),
  'q', string.format('%d', q + n), 'u', ARGV[2])
local touched = {KEYS[1], KEYS[2], KEYS[3]}
if ARGV[6] ~= '' then
  local run_key = ARGV[4] .. 'r:' .. ARGV[6]
  upsert_run(ARGV[4], run_key, ARGV[6], ARGV[5], ARGV[7], ARGV[8], ARGV[9],
    ARGV[10], ARGV[11], ARGV[12])
  index_owner(ARGV[15], run_key, ARGV[7], ARGV[13], ARGV[14])
  touched[4] = run_key
end
refresh_ttl(cur[3], ARGV[3], touched)
return {v + 1, q}
"""
)

# KEYS: s, e, sr
# ARGV: version read, state JSON, updated_at, default ttl ms | ''
_PATCH = (
    _LUA_HELPERS
    + """
local cur = redis.call('HMGET', KEYS[1], 'v', 'xm')
if not cur[1] then return {-1} end
local v = tonumber(cur[1])
if v ~= tonumber(ARGV[1]) then return {-2, v} end
redis.call('HSET', KEYS[1], 'v', string.format('%d', v + 1), 'st', ARGV[2], 'u', ARGV[3])
refresh_ttl(cur[2], ARGV[4], {KEYS[1], KEYS[2], KEYS[3]})
return {v + 1}
"""
)

# KEYS: s, sr, run key
# ARGV: base, run id, session id, status, score, json, default ttl ms | '', agent, model,
#       usage JSON
_PUT_RUN = (
    _LUA_HELPERS
    + """
local xm = redis.call('HGET', KEYS[1], 'xm')
if not xm and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
upsert_run(ARGV[1], KEYS[3], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
  ARGV[8], ARGV[9], ARGV[10])
index_owner(ARGV[13], KEYS[3], ARGV[4], ARGV[11], ARGV[12])
refresh_ttl(xm, ARGV[7], {KEYS[1], KEYS[2], KEYS[3]})
return 1
"""
)

# KEYS: s, e, sr, lease, idx:all, runs, exp
# ARGV: id, base, sweep now | '', then for a sweep (the hash may have expired natively):
#       agent, has_user, user, exp member
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
  local st = redis.call('HGET', rk, 'st')
  if st then redis.call('ZREM', base .. 'rs:' .. st, r) end
  redis.call('UNLINK', rk)
  redis.call('ZREM', KEYS[6], r)
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[5], id)
if agent then redis.call('ZREM', base .. 'idx:a:' .. agent, id) end
if user then redis.call('ZREM', base .. 'idx:u:' .. user, id) end
local removed = 0
if xk then removed = redis.call('ZREM', KEYS[7], xk) end
return {existed, removed}
"""

# KEYS: s, lease. ARGV: owner, ttl ms, global prefix.
# Returns 1 taken, 0 held by another, -1 no session.
_ACQUIRE_LEASE = """
local cur = redis.call('GET', KEYS[2])
if cur == ARGV[1] or (not cur) then
  if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  redis.call('SADD', ARGV[3] .. 'ownl:' .. ARGV[1], KEYS[2])
  return 1
end
return 0
"""

# ARGV: global prefix, run key, owner, ttl s. The claim is on the ownership fields; the
# caller then writes the record as the new owner. Returns the run JSON, or 0 when held /
# not claimable, or -1 when there is no such run.
_CLAIM_RUN = """
local f = redis.call('HMGET', ARGV[2], 'j', 'st', 'o', 'le')
if not f[1] then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local allowed = false
for i = 5, #ARGV do if f[2] == ARGV[i] then allowed = true end end
if not allowed then return 0 end
if f[3] and f[4] and tonumber(f[4]) > now then return 0 end
local lease = string.format('%.6f', now + tonumber(ARGV[4]))
redis.call('HSET', ARGV[2], 'o', ARGV[3], 'le', lease)
redis.call('ZADD', ARGV[1] .. 'claimable', lease, ARGV[2])
redis.call('SADD', ARGV[1] .. 'own:' .. ARGV[3], ARGV[2])
return {f[1], lease, f[2]}
"""

# ARGV: global prefix, owner, ttl s. Renews the owner's runs and session leases in one call.
_RENEW_OWNERSHIP = """
local t = redis.call('TIME')
local lease = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[3]))
local own = ARGV[1] .. 'own:' .. ARGV[2]
local renewed = 0
for _, key in ipairs(redis.call('SMEMBERS', own)) do
  local f = redis.call('HMGET', key, 'o', 'st')
  if f[1] == ARGV[2] and (f[2] == 'queued' or f[2] == 'running') then
    redis.call('HSET', key, 'le', lease)
    redis.call('ZADD', ARGV[1] .. 'claimable', lease, key)
    renewed = renewed + 1
  else
    redis.call('SREM', own, key)
  end
end
local leases = ARGV[1] .. 'ownl:' .. ARGV[2]
local ms = math.floor(tonumber(ARGV[3]) * 1000)
for _, key in ipairs(redis.call('SMEMBERS', leases)) do
  if redis.call('GET', key) == ARGV[2] then
    redis.call('PEXPIRE', key, ms)
  else
    redis.call('SREM', leases, key)
  end
end
return renewed
"""

# KEYS: lease. ARGV: owner.
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

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
            self._claim = client.register_script(_CLAIM_RUN)
            self._renew = client.register_script(_RENEW_OWNERSHIP)
            self._release = client.register_script(_RELEASE_LEASE)
            self._usage_fields = client.register_script(_USAGE_FIELDS)
            try:
                with _redis_errors("open"):
                    await client.ping()
                    # Load up front so the first calls are plain EVALSHAs. After a Redis
                    # restart flushes the script cache, redis-py reloads on NOSCRIPT.
                    for script in (
                        self._create, self._append, self._patch, self._put_run,
                        self._delete, self._acquire, self._release, self._usage_fields,
                        self._claim, self._renew,
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
                self._delete_keys(k, session_id), [session_id, k.base, ""], client=client
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
        keys = [k.session(session_id), k.events(session_id), k.session_runs(session_id)]
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
        run_args: list[Any] = ["", "", "", "", "", "", ""]
        if run is not None:
            if run.tenant != tenant or run.session_id != session_id:
                raise InvalidInput(
                    f"run {run.id} belongs to session {run.session_id} of tenant {run.tenant}, "
                    f"not session {session_id} of tenant {tenant}",
                    field="run",
                )
            run_args = [run.id, run.status, repr(run.created_at), *_run_fields(run)]
        args = [
            expected_version,
            repr(time.time()),
            self._ttl_ms,
            k.base,
            session_id,
            *run_args,
            *_owner_args(run),
            self._prefix,
            *[codec.encode(e) for e in events],
        ]
        keys = [k.session(session_id), k.events(session_id), k.session_runs(session_id)]
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
            *_owner_args(run),
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
            raw, owner, lease = await client.hmget(_Keys(self._prefix, tenant).run(run_id),
                                                   ["j", "o", "le"])
        if raw is None:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        return _with_owner(codec.decode_run(raw), owner, lease)

    # -- run ownership ----------------------------------------------------------
    async def claim_run(self, tenant: str, run_id: str, owner: str, ttl_s: float, *,
                        statuses: Collection[str] = CLAIMABLE_STATUSES) -> RunRecord | None:
        client = self._redis()
        key = _Keys(self._prefix, tenant).run(run_id)
        with _redis_errors("claim_run"):
            got = await self._claim([], [self._prefix, key, owner, repr(ttl_s), *statuses],
                                    client=client)
        if got == -1:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        if got == 0:
            return None
        run = codec.decode_run(got[0])
        run.owner, run.lease_expires_at = owner, float(got[1])
        run.status, run.error, run.updated_at = "running", None, time.time()
        run.attempt += 1
        await self.put_run(run)  # the record as its new owner writes it
        return run

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        client = self._redis()
        with _redis_errors("renew_ownership"):
            return int(await self._renew([], [self._prefix, owner, repr(ttl_s)], client=client))

    async def claimable_runs(self, *, include_interrupted: bool = False,
                             limit: int = 100) -> list[RunRecord]:
        client = self._redis()
        index = f"{self._prefix}claimable"
        with _redis_errors("claimable_runs"):
            seconds, micros = await client.time()
            clock = seconds + micros / 1e6
            keys = cast(list[bytes], await client.zrange(index, "-inf", clock, byscore=True,
                                                          offset=0, num=limit * 2))
            if not keys:
                return []
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, ["j", "o", "le"])
            rows = await pipe.execute()
        found: list[RunRecord] = []
        gone: list[bytes] = []
        for key, (raw, owner, lease) in zip(keys, rows, strict=True):
            if raw is None:
                gone.append(key)
                continue
            run = _with_owner(codec.decode_run(raw), owner, lease)
            if run.status in OWNED_STATUSES or (include_interrupted and run.status == "interrupted"):
                found.append(run)
        if gone:
            with _redis_errors("claimable_runs"):
                await client.zrem(index, *gone)
        return found[:limit]

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
                        pipe.hget(k.run(raw_id.decode()), "j")
                    for (raw_id, _), raw in zip(entries, await pipe.execute(), strict=True):
                        if raw is None:
                            dangling.append(raw_id)  # expired natively with its session
                            continue
                        run = codec.decode_run(raw)
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
                [k.session(session_id), k.lease(session_id)], [owner, ttl_ms, self._prefix],
                client=client,
            )
        if got == -1:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        return bool(got)

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        client = self._redis()
        with _redis_errors("release_lease"):
            await self._release(
                [_Keys(self._prefix, tenant).lease(session_id)], [owner], client=client
            )

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
                    ]
                    await self._delete(self._delete_keys(k, session_id), args, client=pipe)
                results = await pipe.execute()
                total += sum(int(removed) for _, removed in results)
                if len(members) < self.scan_batch_size:
                    return total


def _check_limit(limit: int, *, minimum: int, maximum: int | None = None) -> None:
    if limit < minimum:
        raise InvalidInput(f"limit must be at least {minimum}", field="limit")
    if maximum is not None and limit > maximum:
        raise InvalidInput(f"limit must be at most {maximum}", field="limit")


def _owner_args(run: RunRecord | None) -> list[str]:
    if run is None:
        return ["", ""]
    lease = run.lease_expires_at
    return [run.owner or "", "" if lease is None else repr(lease)]


def _with_owner(run: RunRecord, owner: Any, lease: Any) -> RunRecord:
    """Ownership as renewals keep it (beside the JSON, which keeps it as last written)."""
    if run.status in OWNED_STATUSES and owner is not None:
        run.owner = owner.decode() if isinstance(owner, bytes) else str(owner)
        run.lease_expires_at = float(lease) if lease is not None else None
    return run


def _run_fields(run: RunRecord) -> tuple[bytes, str, str, bytes]:
    """A run's fields in its hash: the whole record as JSON, and beside it agent, model and
    usage (JSON) for usage summaries."""
    return codec.encode(run), run.agent, run.model, codec.encode(run.usage)
