"""Redis-specific behaviour: the documented key layout, tenant escaping, native TTLs and the
expiry sweep, Lua compare-and-set under races. The shared contract lives in test_contract.py."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
import redis.asyncio as aioredis

from roost.errors import ConfigError, VersionConflict
from roost.sessions import Event, RunRecord, Session, Usage, open_store
from roost.sessions.redis import RedisStore
from roost.sessions.usage import UsageTotals
from tests.conftest import REDIS_URL, require_service

T = "acme"


@pytest.fixture
def prefix() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def raw(prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def make(
    prefix: str, default_ttl_s: float | None = None, max_connections: int = 50
) -> RedisStore:
    store = RedisStore(
        REDIS_URL,
        prefix=prefix,
        clear_prefix_on_close=True,
        default_ttl_s=default_ttl_s,
        max_connections=max_connections,
    )
    await store.open()
    return store


@pytest.fixture
async def store(prefix: str, raw: aioredis.Redis) -> AsyncIterator[RedisStore]:
    s = await make(prefix)
    try:
        yield s
    finally:
        await s.close()


async def keys_of(raw: aioredis.Redis, prefix: str) -> set[str]:
    return {k.decode()[len(prefix) :] async for k in raw.scan_iter(match=f"{prefix}*")}


async def test_key_layout(store: RedisStore, raw: aioredis.Redis, prefix: str) -> None:
    await store.create_session(
        Session(id="s1", tenant=T, agent="bot", user_id="u1", expires_at=4e9)
    )
    run = RunRecord(id="r1", session_id="s1", tenant=T, agent="bot", status="running")
    await store.append(T, "s1", [Event(type="message")], 0, run=run)
    await store.acquire_lease(T, "s1", "me", 30.0)
    assert await keys_of(raw, prefix) == {
        "acme:s:s1",
        "acme:e:s1",
        "acme:sr:s1",
        "acme:r:r1",
        "acme:runs",
        "acme:rs:running",
        "acme:idx:all",
        "acme:idx:a:bot",
        "acme:idx:u:u1",
        "acme:lease:s1",
        "%ownl:me",  # the leases "me" holds, for renew_ownership
        "exp",
    }
    assert await store.delete_session(T, "s1")
    assert await keys_of(raw, prefix) == set()


async def test_fleet_key_layout(store: RedisStore, raw: aioredis.Redis, prefix: str) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="bot"))
    run = RunRecord(id="r1", session_id="s1", tenant=T, agent="bot", status="running",
                    owner="me", lease_expires_at=time.time() + 30)
    await store.append(T, "s1", [Event(type="message", run_id="r1")], 0, run=run)
    await store.acquire_lease(T, "s1", "me", 30.0)
    await store.claim_idempotency_key(T, "submit", "k", "f", "v", 30.0)
    await store.set_agent_state("*", "bot", "paused")
    assert await keys_of(raw, prefix) >= {
        "acme:re:s1", "acme:ik:submit:k", "claim", "%own:me", "%ownl:me", "agents",
    }
    assert await store.delete_session(T, "s1")
    assert await keys_of(raw, prefix) == {"acme:ik:submit:k", "agents"}
    # A run written before ownership (no o, le, at, er, ru beside j) is claimed from j.
    await store.create_session(Session(id="s2", tenant=T, agent="bot"))
    await store.put_run(RunRecord(id="r2", session_id="s2", tenant=T, agent="bot", attempt=3,
                                  status="interrupted"))
    await raw.hdel(f"{prefix}{T}:r:r2", "o", "le", "at", "er", "ru")
    claimed = await store.claim_run(T, "r2", "me", 30.0)
    assert claimed is not None and (claimed.attempt, claimed.owner) == (4, "me")
    assert (await store.get_run(T, "r2")).status == "running"
    assert [r.id for r in await store.list_runs(T, status="running")] == ["r2"]
    assert await store.list_runs(T, status="interrupted") == []


async def test_tenants_cannot_forge_each_others_keys(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    # Unescaped, tenant "a:s:b" + session "c" and tenant "a" + session "b:s:c" share a key.
    await store.create_session(Session(id="c", tenant="a:s:b", agent="x", state={"who": 1}))
    await store.create_session(Session(id="b:s:c", tenant="a", agent="y", state={"who": 2}))
    assert (await store.get_session("a:s:b", "c")).state == {"who": 1}
    assert (await store.get_session("a", "b:s:c")).state == {"who": 2}
    assert [s.id for s in (await store.list_sessions("a")).items] == ["b:s:c"]


async def test_native_ttl_on_every_key_of_the_session(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    expires_at = time.time() + 3600.25
    await store.create_session(Session(id="s1", tenant=T, agent="bot", expires_at=expires_at))
    run = RunRecord(id="r1", session_id="s1", tenant=T, agent="bot")
    await store.append(T, "s1", [Event(type="message", run_id="r1")], 0, run=run)
    await store.patch_state(T, "s1", {"k": 1})
    for key in ("s:s1", "e:s1", "sr:s1", "r:r1", "re:s1"):
        assert await raw.pexpiretime(f"{prefix}{T}:{key}") == math.ceil(expires_at * 1000), key
    for key in ("idx:all", "runs", "exp"):  # shared indexes never expire
        assert await raw.pexpiretime(f"{prefix}{key if key == 'exp' else T + ':' + key}") == -1


async def test_sweep_after_native_expiry_cleans_indexes(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    now = time.time()
    # Already past: Redis drops the hash at once; the sweep still finds and counts it.
    await store.create_session(
        Session(id="gone", tenant=T, agent="bot", user_id="u", expires_at=now - 1)
    )
    await store.create_session(Session(id="later", tenant=T, agent="bot", expires_at=now + 3600))
    await store.create_session(Session(id="kept", tenant=T, agent="bot"))
    assert [s.id for s in (await store.list_sessions(T)).items] == ["kept", "later"]

    assert await store.expire_sessions(now) == 1
    assert await store.expire_sessions(now) == 0
    assert await raw.zcard(f"{prefix}{T}:idx:a:bot") == 2
    assert await raw.exists(f"{prefix}{T}:idx:u:u") == 0
    assert await store.expire_sessions(now + 7200) == 1
    assert await raw.zrange(f"{prefix}{T}:idx:all", 0, -1) == [b"kept"]
    assert await raw.zcard(f"{prefix}exp") == 0


async def test_sweep_spans_batches_and_tenants(store: RedisStore) -> None:
    store.scan_batch_size = 3
    for i in range(7):
        await store.create_session(
            Session(id=f"s{i}", tenant=f"t{i % 2}", agent="a", expires_at=1000.0 + i)
        )
    assert await store.expire_sessions(1003.0) == 4
    assert await store.expire_sessions(2000.0) == 3


async def test_default_ttl_is_a_sliding_idle_ttl(prefix: str, raw: aioredis.Redis) -> None:
    store = await make(prefix, default_ttl_s=600.0)
    try:
        await store.create_session(Session(id="s1", tenant=T, agent="a"))
        session_key = f"{prefix}{T}:s:s1"
        assert 590_000 < await raw.pttl(session_key) <= 600_000
        await raw.pexpire(session_key, 10_000)  # as if idle for a while
        await store.append(T, "s1", [Event(type="message")], 0)
        for key in ("s:s1", "e:s1"):
            assert 590_000 < await raw.pttl(f"{prefix}{T}:{key}") <= 600_000
        assert (await store.get_session(T, "s1")).expires_at is None
    finally:
        await store.close()


async def test_listing_skips_and_prunes_dangling_entries(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    for i in range(5):
        await store.create_session(Session(id=f"s{i}", tenant=T, agent="a", created_at=float(i)))
    await raw.unlink(f"{prefix}{T}:s:s3", f"{prefix}{T}:s:s1")  # as a native expiry would
    page = await store.list_sessions(T, limit=2)
    assert [s.id for s in page.items] == ["s4", "s2"]
    page = await store.list_sessions(T, limit=2, cursor=page.next_cursor)
    assert [s.id for s in page.items] == ["s0"] and page.next_cursor is None
    assert await raw.zrange(f"{prefix}{T}:idx:all", 0, -1) == [b"s0", b"s2", b"s4"]


async def test_pages_through_ties_in_byte_order(store: RedisStore) -> None:
    ids = ["a", "B", "é", "z", "Z", "ß", "b1", "b10", "b2"]
    for sid in ids:
        await store.create_session(Session(id=sid, tenant=T, agent="x", created_at=5.0))
    await store.create_session(Session(id="old", tenant=T, agent="x", created_at=4.0))
    seen, cursor = [], None
    while True:
        page = await store.list_sessions(T, agent="x", cursor=cursor, limit=2)
        seen += [s.id for s in page.items]
        if (cursor := page.next_cursor) is None:
            break
    assert seen == sorted(ids, key=str.encode, reverse=True) + ["old"]


async def test_concurrent_appends_and_patches(store: RedisStore) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    results = await asyncio.gather(
        *(
            store.append(T, "s1", [Event(type="message"), Event(type="message")], 0)
            for _ in range(8)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, int) for r in results) == 1
    assert sum(isinstance(r, VersionConflict) for r in results) == 7
    # Patches without expected_version retry their compare-and-set: none is lost.
    await asyncio.gather(*(store.patch_state(T, "s1", {f"k{i}": i}) for i in range(10)))
    session = await store.get_session(T, "s1")
    assert session.state == {f"k{i}": i for i in range(10)}
    assert (session.version, session.last_seq) == (11, 2)
    assert [e.seq for e in await store.read_events(T, "s1")] == [1, 2]


async def test_run_status_index_follows_updates(store: RedisStore) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    run = RunRecord(id="r1", session_id="s1", tenant=T, agent="a", status="running")
    await store.put_run(run)
    run.status = "completed"
    await store.append(T, "s1", [Event(type="run.completed")], 0, run=run)
    assert await store.list_runs(T, status="running") == []
    assert [r.id for r in await store.list_runs(T, status="completed")] == ["r1"]


async def test_close_clears_only_its_prefix(prefix: str, raw: aioredis.Redis) -> None:
    neighbour = f"{prefix[:-1]}x:keep"  # shares the prefix's text but not the prefix
    await raw.set(neighbour, b"1")
    try:
        store = await make(prefix)
        await store.create_session(Session(id="s1", tenant=T, agent="a"))
        await store.close()
        assert await keys_of(raw, prefix) == set()
        assert await raw.get(neighbour) == b"1"
    finally:
        await raw.delete(neighbour)


async def test_bursts_beyond_the_pool_wait_for_a_connection(
    prefix: str, raw: aioredis.Redis
) -> None:
    store = await make(prefix, max_connections=2)
    try:
        await asyncio.gather(
            *(store.create_session(Session(id=f"s{i}", tenant=T, agent="a")) for i in range(40))
        )
        assert len((await store.list_sessions(T, limit=100)).items) == 40
    finally:
        await store.close()


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        RedisStore(REDIS_URL, prefix="", clear_prefix_on_close=True)
    with pytest.raises(ConfigError):
        RedisStore(REDIS_URL, socket_timeout_s=0)
    with pytest.raises(ConfigError):
        RedisStore(REDIS_URL, default_ttl_s=-1)
    assert isinstance(open_store(REDIS_URL, prefix="x:"), RedisStore)


async def test_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        await RedisStore("redis://127.0.0.1:notaport/0").open()


async def test_run_pages_resume_after_ties_without_repeats_or_gaps(store: RedisStore) -> None:
    # Pages of 2 over runs sharing created_at: each page resumes after the last (score, id)
    # it yielded, so ties split across pages are neither repeated nor skipped.
    store.scan_batch_size = 2
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    stamps = [5.0, 7.0, 7.0, 7.0, 7.0, 7.0, 9.0]
    for n, created_at in enumerate(stamps):
        await store.put_run(RunRecord(id=f"r{n}", session_id="s1", tenant=T, agent="a",
                                      created_at=created_at, usage=Usage(input_tokens=1)))
    newest_first = [r.id for r in await store.list_runs(T)]
    assert newest_first == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in await store.list_runs(T, since=7.0, until=9.0)] == [
        "r5", "r4", "r3", "r2", "r1"]
    assert [r.id for r in await store.list_runs(T, limit=3)] == ["r6", "r5", "r4"]
    [total] = await store.usage_summary(T, group_by=())
    assert (total.runs, total.input_tokens) == (7, 7)


async def test_usage_summary_reads_runs_written_before_the_usage_fields(
    store: RedisStore, raw: aioredis.Redis, prefix: str
) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    await store.put_run(RunRecord(id="r1", session_id="s1", tenant=T, agent="a", model="demo",
                                  usage=Usage(input_tokens=4, output_tokens=2, cost=0.5)))
    # What the previous release wrote: j (without model), st and sid only.
    key = f"{prefix}{T}:r:r1"
    assert set(await raw.hgetall(key)) == {b"j", b"st", b"sid", b"a", b"m", b"us", b"o",
                                           b"le", b"at", b"er", b"ru"}
    old = msgspec.json.decode(await raw.hget(key, "j") or b"")
    del old["model"]
    await raw.hset(key, "j", msgspec.json.encode(old))
    await raw.hdel(key, "a", "m", "us", "o", "le", "at", "er", "ru")
    assert (await store.get_run(T, "r1")).model == ""
    assert await store.usage_summary(T) == [
        UsageTotals(key={"agent": "a", "model": ""}, runs=1, input_tokens=4, output_tokens=2,
                    cost=0.5)]
