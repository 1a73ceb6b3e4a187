"""Schema upgrades under data: a database written by the previous schema opens, gains
`runs.model` (old runs read back with model ""), and is upgraded exactly once.

SQLite: schema version 1 → 2 on open. PostgreSQL: migration 0001 → 0002 by `migrate`.
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
    assert versions == [(1,), (2,), (3,)]
    assert columns["model"][2:5] == ("TEXT", 1, "''")  # type, NOT NULL, default
    assert {"owner", "lease_expires_at"} <= set(columns)


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

    assert await migrate(POSTGRES_URL, schema=schema) == ["0002_runs_model_and_usage_index",
                                                          "0003_run_ownership",
                                                          "0004_api_keys",
                                                          "0005_audit_log"]
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
