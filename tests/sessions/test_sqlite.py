"""What SQLiteStore promises beyond the contract: group commit, isolation of failures within a
batch, its threads, its file, its schema and its query plans."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from roost.errors import (
    ConfigError,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from roost.sessions import Event, Session, open_store
from roost.sessions import sqlite as sqlite_module
from roost.sessions.sqlite import SQLiteStore

T = "default"
ALL_VERSIONS = [(v,) for v in range(1, sqlite_module.SCHEMA_VERSION + 1)]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "roost.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("roost-sqlite-")]


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


@asynccontextmanager
async def writer_parked(store: SQLiteStore) -> AsyncIterator[Callable[[int], Any]]:
    """Hold the writer thread inside an operation until the block ends.

    Whatever is submitted meanwhile waits in the queue and is committed as one batch when
    the writer is let go. Yields `queued(n)`: it lets the tasks just created run up to
    their first await (where they submit) and checks that n writes are waiting.
    """
    loop = asyncio.get_running_loop()
    entered: asyncio.Future[None] = loop.create_future()
    release = threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        loop.call_soon_threadsafe(entered.set_result, None)
        release.wait(10)

    parked = store._write(hold)
    await entered

    async def queued(n: int) -> None:
        await asyncio.sleep(0)
        assert store.statistics().writes_queued == n

    try:
        yield queued
    finally:
        release.set()
        await parked


async def new_session(store: SQLiteStore, session_id: str, **fields: Any) -> Session:
    return await store.create_session(Session(id=session_id, agent="helper", **fields))


# -- configuration and file -----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"path": ":memory:"},
        {"path": ""},
        {"path": "x.db", "batch_max": 0},
        {"path": "x.db", "synchronous": "sometimes"},
        {"path": "x.db", "busy_timeout_s": -1},
        {"path": "x.db", "read_threads": 0},
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SQLiteStore(**kwargs)


async def test_url_creates_parent_directories_and_wal_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "roost.db"
    store = open_store(f"sqlite:///{path}", synchronous="full", batch_max=8)
    assert isinstance(store, SQLiteStore)
    await store.open()
    try:
        await store.create_session(Session(id="s", agent="a"))
        with raw(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("SELECT version FROM schema_version").fetchall() == ALL_VERSIONS
    finally:
        await store.close()


async def test_unusable_path_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    store = SQLiteStore(str(blocker / "roost.db"))
    with pytest.raises(StoreUnavailable):
        await store.open()
    assert store_threads() == []
    with pytest.raises(StoreUnavailable):
        await store.ping()


async def test_data_survives_reopen_and_schema_is_not_reapplied(tmp_path: Path) -> None:
    path = str(tmp_path / "roost.db")
    first = SQLiteStore(path)
    await first.open()
    await new_session(first, "s", state={"k": "v"})
    await first.append(T, "s", [Event(type="message", data={"n": 1})], 0)
    await first.close()

    second = SQLiteStore(path)
    await second.open()
    try:
        assert (await second.get_session(T, "s")).state == {"k": "v"}
        assert [e.data for e in await second.read_events(T, "s")] == [{"n": 1}]
        assert await second.append(T, "s", [Event(type="message")], 1) == 2
    finally:
        await second.close()
    with raw(Path(path)) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == ALL_VERSIONS


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "roost.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        conn.execute("INSERT INTO schema_version VALUES (99, 0)")
        conn.commit()
    store = SQLiteStore(str(path))
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    assert store_threads() == []


async def test_json_columns_are_queryable_text(store: SQLiteStore) -> None:
    # Operators can inspect the file with the sqlite3 CLI and JSON functions.
    await new_session(store, "s", state={"plan": {"step": 3}}, metadata={"src": "cli"})
    with raw(Path(store.path)) as conn:
        row = conn.execute(
            "SELECT json_extract(state, '$.plan.step'), json_extract(metadata, '$.src')"
            " FROM sessions WHERE id = 's'"
        ).fetchone()
    assert row == (3, "cli")


async def test_queries_use_indexes(store: SQLiteStore) -> None:
    queries = [
        sqlite_module._list_sessions_query(T, agent, user, after, 51)
        for agent in (None, "a")
        for user in (None, "u")
        for after in (None, (1.0, "x"))
    ]
    queries += [
        sqlite_module._list_runs_query(T, session_id, status, 10)
        for session_id in (None, "s")
        for status in (None, "running")
    ]
    queries += [
        sqlite_module._list_runs_query(T, session_id, None, 10, agent="a", since=1.0, until=2.0)
        for session_id in (None, "s")
    ]
    with raw(Path(store.path)) as conn:
        for sql, params in queries:
            plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "USING" in plan and "TEMP B-TREE" not in plan, (sql, plan)
        # A usage summary walks the tenant's time range on the index; grouping the rows it
        # finds needs a temporary b-tree, of the groups (few), not of the runs.
        for group_by in ((), ("agent", "model"), ("day",)):
            sql, params = sqlite_module._usage_query(T, group_by, 1.0, 2.0)
            plan = " | ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            assert "USING INDEX runs_by_tenant (tenant=? AND created_at>? AND created_at<?)" in plan


# -- group commit ---------------------------------------------------------------------------
async def test_waiting_writes_commit_as_one_batch(store: SQLiteStore) -> None:
    ids = [f"s{n}" for n in range(20)]
    for sid in ids:
        await new_session(store, sid)
    before = store.statistics()
    async with writer_parked(store) as queued:
        appends = [
            asyncio.ensure_future(store.append(T, sid, [Event(type="message")], 0)) for sid in ids
        ]
        await queued(len(ids))
    assert await asyncio.gather(*appends) == [1] * len(ids)
    after = store.statistics()
    # The parked op's batch, then one batch for the 20 appends.
    assert after.write_batches - before.write_batches == 2
    assert after.largest_batch >= len(ids)


async def test_a_failing_op_does_not_fail_its_batch_mates(store: SQLiteStore) -> None:
    for sid in ("a", "b", "c"):
        await new_session(store, sid)

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE sessions SET agent = 'vandal' WHERE id = 'b'")
        conn.execute("SELECT * FROM no_such_table")

    async with writer_parked(store) as queued:
        good_a = asyncio.ensure_future(store.append(T, "a", [Event(type="message")], 0))
        stale = asyncio.ensure_future(store.append(T, "b", [Event(type="message")], 5))
        bad = store._write(broken)
        missing = asyncio.ensure_future(store.append(T, "zz", [Event(type="message")], 0))
        good_c = asyncio.ensure_future(store.append(T, "c", [Event(type="message")], 0))
        await queued(5)
    results = await asyncio.gather(good_a, stale, bad, missing, good_c, return_exceptions=True)
    assert results[0] == 1 and results[4] == 1
    assert isinstance(results[1], VersionConflict)
    assert isinstance(results[2], StoreError) and not isinstance(results[2], VersionConflict)
    assert isinstance(results[2].__cause__, sqlite3.Error)
    assert isinstance(results[3], SessionNotFound)
    # The broken op's own partial write was rolled back with its savepoint.
    assert (await store.get_session(T, "b")).agent == "helper"
    assert [len(await store.read_events(T, s)) for s in ("a", "b", "c")] == [1, 0, 1]


async def test_lone_failing_op_rolls_back(store: SQLiteStore) -> None:
    await new_session(store, "a")

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE sessions SET agent = 'vandal' WHERE id = 'a'")
        raise RuntimeError("bug in an op")

    with pytest.raises(StoreError):
        await store._write(broken)
    assert (await store.get_session(T, "a")).agent == "helper"
    assert await store.append(T, "a", [Event(type="message")], 0) == 1


async def test_write_cancelled_while_queued_is_not_applied(store: SQLiteStore) -> None:
    await new_session(store, "s")
    async with writer_parked(store) as queued:
        doomed = asyncio.ensure_future(store.append(T, "s", [Event(type="message")], 0))
        await queued(1)
        doomed.cancel()
        kept = asyncio.ensure_future(store.patch_state(T, "s", {"k": 1}))
        await queued(2)
    assert (await kept).version == 1
    assert doomed.cancelled()
    session = await store.get_session(T, "s")
    assert (session.version, session.last_seq) == (1, 0)


async def test_reads_proceed_while_the_writer_is_busy(store: SQLiteStore) -> None:
    await new_session(store, "s", state={"k": 1})
    async with writer_parked(store):
        # WAL + a separate reader connection: a long write transaction blocks no reader.
        assert (await asyncio.wait_for(store.get_session(T, "s"), 5)).state == {"k": 1}
        await asyncio.wait_for(store.ping(), 5)


async def test_background_checkpoint_runs_on_a_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "_CHECKPOINT_AFTER_COMMITS", 5)
    store = SQLiteStore(str(tmp_path / "roost.db"), read_threads=1)
    await store.open()
    try:
        await new_session(store, "s")
        for version in range(10):
            await store.append(T, "s", [Event(type="message")], version)
        # The chore is queued before the last append resolved; one reader serves in order.
        await store.ping()
        stats = store.statistics()
        assert stats.checkpoints >= 1 and stats.chore_failures == 0
    finally:
        await store.close()


# -- threads and shutdown -------------------------------------------------------------------
async def test_close_drains_queued_writes_and_joins_threads(tmp_path: Path) -> None:
    path = str(tmp_path / "roost.db")
    store = SQLiteStore(path, read_threads=3)
    await store.open()
    assert len(store_threads()) == 4
    await new_session(store, "s")
    pending = [asyncio.ensure_future(store.patch_state(T, "s", {f"k{n}": n})) for n in range(50)]
    await asyncio.sleep(0)  # every patch is queued
    await store.close()
    assert store_threads() == []
    assert len(await asyncio.gather(*pending)) == 50  # none failed: all ran before the stop
    with pytest.raises(StoreUnavailable):
        await store.get_session(T, "s")
    await store.close()

    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        assert (await reopened.get_session(T, "s")).version == 50
    finally:
        await reopened.close()
    assert store_threads() == []


async def test_operations_before_open_are_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "roost.db"))
    with pytest.raises(StoreUnavailable):
        await store.get_session(T, "s")
    await store.close()  # closing a store that never opened is fine


async def test_unclosed_store_does_not_hang_interpreter_exit(tmp_path: Path) -> None:
    db = tmp_path / "roost.db"
    script = f"""
import asyncio
from roost.sessions import Event, Session, open_store

async def main():
    store = open_store("sqlite:///{db}")
    await store.open()
    await store.create_session(Session(id="s", agent="a"))
    await store.append("default", "s", [Event(type="message")], 0)
    # no close(): the process must still exit, with its writes committed

asyncio.run(main())
"""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    started = time.monotonic()
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    assert time.monotonic() - started < 15
    with raw(db) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (1,)


async def test_many_concurrent_sessions_batch_naturally(store: SQLiteStore) -> None:
    ids = [f"s{n}" for n in range(64)]
    await asyncio.gather(*(new_session(store, sid) for sid in ids))

    async def turn(sid: str) -> None:
        version = 0
        for step in range(5):
            version = await store.append(T, sid, [Event(type="message", data={"s": step})], version)

    before = store.statistics()
    await asyncio.gather(*(turn(sid) for sid in ids))
    after = store.statistics()
    ops = after.write_ops - before.write_ops
    assert ops == 64 * 5 and after.write_ops_failed == before.write_ops_failed
    assert after.write_batches - before.write_batches < ops  # commits were shared
