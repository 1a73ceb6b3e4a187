"""Schema upgrades under data: a database written by the previous schema opens, gains
`runs.model` (old runs read back with model ""), and is upgraded exactly once.

SQLite: schema version 1 → 2 on open. PostgreSQL: migration 0001 → 0002 by `migrate`.
Then run ownership (issue 11): old runs read back unowned, and the fleet's polled queries are
answered from their indexes (SQLite version 3, PostgreSQL 0003).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from roost.sessions import RunRecord, Usage
from roost.sessions import migrate as migrate_module
from roost.sessions import sqlite as sqlite_module
from roost.sessions.migrate import migrate
from roost.sessions.postgres import PostgresStore
from roost.sessions.sqlite import SQLiteStore
from roost.sessions.usage import UsageTotals
from tests.conftest import POSTGRES_URL, require_service

# Migrations after the session store's: roost.auth's tables (API keys, the audit trail),
# roost.background's, the approvals' index of waiting runs, child runs' parent.
LATER_MIGRATIONS = ["0004_api_keys", "0005_audit_log", "0007_background", "0008_waiting_runs",
                    "0010_run_parent"]
T = "acme"
CREATED = 1_700_000_000.0
OLD_USAGE = '{"input_tokens":12,"output_tokens":3,"cost":0.5}'


# -- SQLite -----------------------------------------------------------------------------------
def write_version_1_database(path: Path) -> None:
    """A file as the previous Roost left it: schema version 1, one session, one run."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        for statement in sqlite_module._MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        conn.execute(
            "INSERT INTO sessions VALUES (?, 's1', 'helper', NULL, '{}', '{}', 2, 2, ?, ?, NULL)",
            (T, CREATED, CREATED),
        )
        conn.execute(
            "INSERT INTO runs VALUES (?, 'r-old', 's1', 'helper', 'completed', 'hi', 'hello',"
            " NULL, 1, ?, NULL, ?, ?)",
            (T, OLD_USAGE, CREATED, CREATED),
        )
    conn.close()


async def test_sqlite_upgrades_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "roost.db"
    write_version_1_database(path)
    store = SQLiteStore(str(path))
    await store.open()
    try:
        old = await store.get_run(T, "r-old")
        assert (old.model, old.status, old.output) == ("", "completed", "hello")
        assert old.usage == Usage(input_tokens=12, output_tokens=3, cost=0.5)
        new = RunRecord(id="r-new", session_id="s1", tenant=T, agent="helper", model="demo",
                        created_at=CREATED + 1, usage=Usage(input_tokens=1))
        await store.put_run(new)
        assert await store.get_run(T, "r-new") == new
        assert await store.usage_summary(T, group_by=("model",)) == [
            UsageTotals(key={"model": ""}, runs=1, input_tokens=12, output_tokens=3, cost=0.5),
            UsageTotals(key={"model": "demo"}, runs=1, input_tokens=1),
        ]
    finally:
        await store.close()

    # Reopening applies nothing more.
    reopened = SQLiteStore(str(path))
    await reopened.open()
    try:
        assert (await reopened.get_run(T, "r-new")).model == "demo"
    finally:
        await reopened.close()
    with sqlite3.connect(path) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        columns = {row[1]: row for row in conn.execute("PRAGMA table_info(runs)")}
    conn.close()
    assert versions == [(1,), (2,), (3,), (4,), (5,)]
    assert columns["model"][2:5] == ("TEXT", 1, "''")  # type, NOT NULL, default
    assert columns["parent_run_id"][2:5] == ("TEXT", 0, None)
    assert columns["owner"][2:5] == ("TEXT", 0, None)
    assert columns["lease_expires_at"][2:5] == ("REAL", 0, None)


async def test_sqlite_version_3_owns_runs_and_answers_the_fleet_from_indexes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "roost.db"
    write_version_1_database(path)
    store = SQLiteStore(str(path))
    await store.open()
    try:
        old = await store.get_run(T, "r-old")
        assert (old.owner, old.lease_expires_at) == (None, None)
        assert await store.claim_run(T, "r-old", "i-1", 30.0) is None  # completed
        await store.put_run(RunRecord(id="r-new", session_id="s1", tenant=T, agent="helper",
                                      status="queued"))
        claimed = await store.claim_run(T, "r-new", "i-1", 30.0)
        assert claimed is not None and claimed.owner == "i-1"
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        plans = {
            name: " ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", args))
            for name, sql, args in (
                ("claimable", sqlite_module._CLAIMABLE_RUNS, (0.0, 10, 0.0, 10, True, 0.0, 10, 10)),
                ("run events", "SELECT seq FROM events WHERE tenant = ? AND session_id = ?"
                 " AND run_id = ? AND seq > ? ORDER BY seq LIMIT ?", (T, "s1", "r", 0, 10)),
                ("renew", "UPDATE runs SET lease_expires_at = 1 WHERE owner = ?"
                 " AND status NOT IN ('completed')", ("i-1",)),
            )
        }
    conn.close()
    assert "runs_by_lease" in plans["claimable"] and "runs_interrupted" in plans["claimable"]
    assert "runs_waiting" in plans["claimable"], plans
    assert "events_by_run" in plans["run events"], plans
    assert "runs_by_owner" in plans["renew"], plans


# -- PostgreSQL -------------------------------------------------------------------------------
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


async def test_postgres_0002_upgrades_a_0001_schema_once(
    schema: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrate_module.migrations()
    assert [m.name for m in shipped][:2] == ["0001_initial", "0002_runs_model_and_usage_index"]
    # The previous Roost shipped 0001 only.
    monkeypatch.setattr(migrate_module, "migrations", lambda: shipped[:1])
    assert await migrate(POSTGRES_URL, schema=schema) == ["0001_initial"]
    monkeypatch.undo()
    q = f'"{schema}"'
    await db.execute(
        f"INSERT INTO {q}.sessions (tenant, id, agent, created_at, updated_at)"
        " VALUES ($1, 's1', 'helper', $2, $2)",
        T, CREATED,
    )
    await db.execute(
        f"INSERT INTO {q}.runs (tenant, id, session_id, agent, status, input, attempt, usage,"
        " created_at, updated_at) VALUES ($1, 'r-old', 's1', 'helper', 'completed', 'hi', 1,"
        " $2::jsonb, $3, $3)",
        T, OLD_USAGE, CREATED,
    )

    assert await migrate(POSTGRES_URL, schema=schema) == [
        "0002_runs_model_and_usage_index", "0003_run_ownership", *LATER_MIGRATIONS]
    assert await migrate(POSTGRES_URL, schema=schema) == []
    indexes = {r[0] for r in await db.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = $1 AND tablename = 'runs'", schema)}
    assert "runs_by_tenant_usage" in indexes and "runs_by_tenant" not in indexes

    store = PostgresStore(POSTGRES_URL, schema=schema, migrate_on_open=False)
    await store.open()
    try:
        old = await store.get_run(T, "r-old")
        assert (old.model, old.usage) == ("", Usage(input_tokens=12, output_tokens=3, cost=0.5))
        new = RunRecord(id="r-new", session_id="s1", tenant=T, agent="helper", model="demo",
                        created_at=CREATED + 1, usage=Usage(input_tokens=1))
        await store.put_run(new)
        assert await store.get_run(T, "r-new") == new
        assert await store.usage_summary(T, group_by=("model",)) == [
            UsageTotals(key={"model": ""}, runs=1, input_tokens=12, output_tokens=3, cost=0.5),
            UsageTotals(key={"model": "demo"}, runs=1, input_tokens=1),
        ]
        # The summary needs nothing but the new index: once vacuumed, no heap row is read.
        await db.execute(f"VACUUM ANALYZE {q}.runs")
        query = store._sql.usage_summary(("agent", "model", "day"), True, True)
        async with db.transaction():
            await db.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await db.fetch(
                f"EXPLAIN {query}", T, CREATED, CREATED + 10, 10))
        assert "Index Only Scan using runs_by_tenant_usage" in plan, plan
    finally:
        await store.close()


async def test_postgres_0003_adds_run_ownership_to_a_0002_schema(
    schema: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = migrate_module.migrations()
    assert [m.name for m in shipped][:3] == [
        "0001_initial", "0002_runs_model_and_usage_index", "0003_run_ownership"]
    monkeypatch.setattr(migrate_module, "migrations", lambda: shipped[:2])
    assert len(await migrate(POSTGRES_URL, schema=schema)) == 2
    monkeypatch.undo()
    q = f'"{schema}"'
    await db.execute(
        f"INSERT INTO {q}.sessions (tenant, id, agent, created_at, updated_at)"
        " VALUES ($1, 's1', 'helper', $2, $2)",
        T, CREATED,
    )
    await db.execute(
        f"INSERT INTO {q}.runs (tenant, id, session_id, agent, status, input, attempt, usage,"
        " created_at, updated_at, model) VALUES ($1, 'r-old', 's1', 'helper', 'running', 'hi',"
        " 1, $2::jsonb, $3, $3, 'demo')",
        T, OLD_USAGE, CREATED,
    )
    assert await migrate(POSTGRES_URL, schema=schema) == ["0003_run_ownership",
                                                          *LATER_MIGRATIONS]
    assert await migrate(POSTGRES_URL, schema=schema) == []

    store = PostgresStore(POSTGRES_URL, schema=schema, migrate_on_open=False)
    await store.open()
    try:
        old = await store.get_run(T, "r-old")
        assert (old.owner, old.lease_expires_at, old.model) == (None, None, "demo")
        claimed = await store.claim_run(T, "r-old", "i-1", 30.0)
        assert claimed is not None and (claimed.owner, claimed.attempt) == ("i-1", 2)
        await db.execute(f"ANALYZE {q}.runs")
        await db.execute(f"ANALYZE {q}.events")
        async with db.transaction():
            await db.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(r[0] for r in await db.fetch(
                f"EXPLAIN {store._sql.claimable_runs}", 100, True))
            assert "runs_by_lease" in plan and "runs_interrupted" in plan, plan
            plan = "\n".join(r[0] for r in await db.fetch(
                f"EXPLAIN {store._sql.read_run_events}", T, "s1", "r-old", 0, 100))
            assert "events_by_run" in plan, plan
            plan = "\n".join(r[0] for r in await db.fetch(
                f"EXPLAIN {store._sql.renew_ownership}", "i-1", 30.0, ["completed"]))
            assert "runs_by_owner" in plan and "leases_by_owner" in plan, plan
    finally:
        await store.close()
