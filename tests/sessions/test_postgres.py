"""PostgreSQL-specific behaviour: migrations, one-statement appends, schema isolation, the
database clock for leases, batched expiry. The shared contract lives in test_contract.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from roost.errors import ConfigError, InvalidInput, StoreError, VersionConflict
from roost.sessions import Event, RunRecord, Session, open_store
from roost.sessions.migrate import migrate, migrations
from roost.sessions.postgres import PostgresStore
from tests.conftest import POSTGRES_URL, require_service

T = "acme"


@pytest.fixture
def schema() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def db(schema: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        yield conn
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


@pytest.fixture
async def store(schema: str, db: asyncpg.Connection) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(POSTGRES_URL, schema=schema, drop_schema_on_close=True)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def count(db: asyncpg.Connection, schema: str, table: str) -> int:
    return int(await db.fetchval(f'SELECT count(*) FROM "{schema}".{table}'))


# -- migrations -------------------------------------------------------------------------
async def test_migrate_applies_once_and_records(schema: str, db: asyncpg.Connection) -> None:
    names = [m.name for m in migrations()]
    assert names[0] == "0001_initial" and names == sorted(names)

    assert await migrate(POSTGRES_URL, schema=schema) == names
    assert await migrate(POSTGRES_URL, schema=schema) == []
    recorded = await db.fetch(f'SELECT name, checksum FROM "{schema}".roost_migrations')
    assert {r["name"]: r["checksum"] for r in recorded} == {
        m.name: m.checksum for m in migrations()
    }


async def test_concurrent_migrators_apply_exactly_once(schema: str, db: asyncpg.Connection) -> None:
    results = await asyncio.gather(*(migrate(POSTGRES_URL, schema=schema) for _ in range(4)))
    assert sorted(results, key=len) == [[], [], [], [m.name for m in migrations()]]


async def test_edited_migration_is_refused(schema: str, db: asyncpg.Connection) -> None:
    await migrate(POSTGRES_URL, schema=schema)
    await db.execute(f"UPDATE \"{schema}\".roost_migrations SET checksum = 'x'")
    with pytest.raises(StoreError, match="changed after it was applied"):
        await migrate(POSTGRES_URL, schema=schema)


async def test_store_without_migrate_on_open_uses_migrated_schema(
    schema: str, db: asyncpg.Connection
) -> None:
    await migrate(POSTGRES_URL, schema=schema)
    store = PostgresStore(POSTGRES_URL, schema=schema, migrate_on_open=False)
    await store.open()
    try:
        await store.create_session(Session(id="s1", tenant=T, agent="a"))
        assert (await store.get_session(T, "s1")).agent == "a"
    finally:
        await store.close()
    assert await count(db, schema, "sessions") == 1  # close() did not drop it


async def test_bursts_beyond_the_pool_wait_for_a_connection(
    schema: str, db: asyncpg.Connection
) -> None:
    store = PostgresStore(POSTGRES_URL, schema=schema, drop_schema_on_close=True, max_pool=2)
    await store.open()
    try:
        await asyncio.gather(
            *(store.create_session(Session(id=f"s{i}", tenant=T, agent="a")) for i in range(40))
        )
        assert len((await store.list_sessions(T, limit=100)).items) == 40
    finally:
        await store.close()


def test_options_are_validated() -> None:
    with pytest.raises(ConfigError):
        PostgresStore(POSTGRES_URL, drop_schema_on_close=True)  # would drop "public"
    with pytest.raises(ConfigError):
        PostgresStore(POSTGRES_URL, schema="x", min_pool=5, max_pool=2)
    with pytest.raises(ConfigError):
        PostgresStore(POSTGRES_URL, schema="x", command_timeout_s=0)
    assert isinstance(open_store(POSTGRES_URL, schema="x"), PostgresStore)


# -- isolation and data -----------------------------------------------------------------
async def test_schemas_are_isolated(store: PostgresStore, db: asyncpg.Connection) -> None:
    other_schema = f"t_{uuid.uuid4().hex[:12]}"
    other = PostgresStore(POSTGRES_URL, schema=other_schema, drop_schema_on_close=True)
    await other.open()
    try:
        await store.create_session(Session(id="s1", tenant=T, agent="a"))
        assert (await other.list_sessions(T)).items == []
        await other.create_session(Session(id="s1", tenant=T, agent="b"))  # no conflict
        assert (await store.get_session(T, "s1")).agent == "a"
    finally:
        await other.close()
    assert await db.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", other_schema) is None


async def test_nul_characters_are_invalid_input(store: PostgresStore) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    with pytest.raises(InvalidInput):
        await store.append(T, "s1", [Event(type="message", data={"text": "a\x00b"})], 0)
    with pytest.raises(InvalidInput):
        await store.patch_state(T, "s1", {"k": object()})  # not JSON
    assert (await store.get_session(T, "s1")).version == 0


async def test_floats_round_trip_exactly(store: PostgresStore) -> None:
    t = 1731234567.1234567
    session = Session(id="s1", tenant=T, agent="a", created_at=t, updated_at=t, expires_at=t + 1e-6)
    await store.create_session(session)
    got = await store.get_session(T, "s1")
    assert (got.created_at, got.expires_at) == (t, t + 1e-6)
    event = Event(type="message", data={"x": 0.1 + 0.2}, ts=t)
    await store.append(T, "s1", [event], 0)
    [back] = await store.read_events(T, "s1")
    assert back.ts == t and back.data == {"x": 0.1 + 0.2}


# -- append -----------------------------------------------------------------------------
async def test_lost_compare_and_set_writes_nothing(
    store: PostgresStore, db: asyncpg.Connection, schema: str
) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    await store.append(T, "s1", [Event(type="message")], 0)
    run = RunRecord(id="r1", session_id="s1", tenant=T, agent="a", status="running")
    with pytest.raises(VersionConflict) as info:
        await store.append(T, "s1", [Event(type="message"), Event(type="tool.call")], 0, run=run)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert await count(db, schema, "events") == 1
    assert await count(db, schema, "runs") == 0


async def test_racing_appends_one_wins_and_seqs_stay_dense(store: PostgresStore) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    for version in range(3):
        batch = [[Event(type="message", data={"w": w}) for _ in range(2)] for w in range(8)]
        results = await asyncio.gather(
            *(store.append(T, "s1", events, version) for events in batch), return_exceptions=True
        )
        winners = [r for r in results if not isinstance(r, BaseException)]
        assert winners == [version + 1]
        losers = [r for r in results if r not in winners]
        assert all(isinstance(r, VersionConflict) for r in losers)
        # Even a loser that queued behind the winner's row lock reports the winner's version.
        assert {r.actual for r in losers if isinstance(r, VersionConflict)} == {version + 1}
    events = await store.read_events(T, "s1")
    assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6]
    session = await store.get_session(T, "s1")
    assert (session.version, session.last_seq) == (3, 6)


# -- leases, deletion, expiry -----------------------------------------------------------
async def test_lease_expiry_is_on_the_database_clock(
    store: PostgresStore, db: asyncpg.Connection, schema: str
) -> None:
    await store.create_session(Session(id="s1", tenant=T, agent="a"))
    assert await store.acquire_lease(T, "s1", "me", 30.0)
    remaining = await db.fetchval(
        f'SELECT expires_at - extract(epoch FROM clock_timestamp()) FROM "{schema}".leases'
    )
    assert 29.0 < remaining <= 30.0
    # Pretend our lease ran out on the database's clock: another owner may take it.
    await db.execute(f'UPDATE "{schema}".leases SET expires_at = expires_at - 31')
    assert await store.acquire_lease(T, "s1", "other", 30.0)
    assert not await store.acquire_lease(T, "s1", "me", 30.0)


async def test_delete_session_removes_children(
    store: PostgresStore, db: asyncpg.Connection, schema: str
) -> None:
    for sid in ("s1", "s2"):
        await store.create_session(Session(id=sid, tenant=T, agent="a"))
        run = RunRecord(id=f"r-{sid}", session_id=sid, tenant=T, agent="a")
        await store.append(T, sid, [Event(type="message")], 0, run=run)
        await store.acquire_lease(T, sid, "me", 30.0)
    assert await store.delete_session(T, "s1")
    for table in ("sessions", "events", "runs", "leases"):
        assert await count(db, schema, table) == 1, table


async def test_expire_sessions_in_batches(
    store: PostgresStore, db: asyncpg.Connection, schema: str
) -> None:
    store.expire_batch_size = 3
    for i in range(8):
        expires = 100.0 if i < 7 else 300.0
        await store.create_session(Session(id=f"s{i}", tenant=T, agent="a", expires_at=expires))
        await store.append(T, f"s{i}", [Event(type="message")], 0)
    await store.create_session(Session(id="forever", tenant=T, agent="a"))
    assert await store.expire_sessions(200.0) == 7
    assert await store.expire_sessions(200.0) == 0
    assert await count(db, schema, "sessions") == 2
    assert await count(db, schema, "events") == 1


async def test_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        await PostgresStore("postgresql://postgres@127.0.0.1:notaport/test", schema="x").open()
    with pytest.raises(ConfigError):
        await migrate("postgresql://postgres@127.0.0.1:5432/test?sslmode=bogus")
