"""The run queue and schedules in the SQLite store's file, over a connection of their own
(the tables are created on open). A claim is one `BEGIN IMMEDIATE` transaction: the due rows
deleted and their runs claimed together. Calls run in a thread (`asyncio.to_thread`), one
at a time."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from roost.auth.tables import SQLiteTable
from roost.background.records import Schedule
from roost.errors import StoreUnavailable
from roost.sessions.records import RunRecord
from roost.sessions.sqlite import _RUN_COLUMNS, _run_from_row
from roost.sessions.store import Store

T = TypeVar("T")


class SQLiteBackground(SQLiteTable):
    SCHEMA = (
        "PRAGMA journal_mode = WAL",
        "CREATE TABLE IF NOT EXISTS run_queue (tenant TEXT NOT NULL, run_id TEXT NOT NULL,"
        " not_before REAL NOT NULL, enqueued_at REAL NOT NULL, rank REAL NOT NULL,"
        " PRIMARY KEY (tenant, run_id))",
        "CREATE INDEX IF NOT EXISTS run_queue_by_rank ON run_queue (rank, enqueued_at)",
        "CREATE INDEX IF NOT EXISTS run_queue_by_tenant_rank ON run_queue (tenant, rank)",
        "CREATE INDEX IF NOT EXISTS run_queue_by_due ON run_queue (not_before)",
        "CREATE TABLE IF NOT EXISTS schedules (tenant TEXT NOT NULL, id TEXT NOT NULL,"
        " agent TEXT NOT NULL, record TEXT NOT NULL, created_at REAL NOT NULL,"
        " PRIMARY KEY (tenant, id))",
        "CREATE TABLE IF NOT EXISTS schedule_ticks (tenant TEXT NOT NULL,"
        " schedule_id TEXT NOT NULL, tick REAL NOT NULL, run_id TEXT NOT NULL,"
        " PRIMARY KEY (tenant, schedule_id, tick))",
        "CREATE INDEX IF NOT EXISTS schedule_ticks_by_tick ON schedule_ticks (tick)",
    )

    def __init__(self, path: str, store: Store) -> None:
        super().__init__(path)

    async def _do(self, fn: Callable[..., T], *args: Any) -> T:
        await self.open()
        async with self._lock:
            conn = self._conn
            assert conn is not None
            call = asyncio.ensure_future(asyncio.to_thread(fn, conn, *args))
            try:
                return await asyncio.shield(call)
            except sqlite3.OperationalError as exc:  # locked past the busy timeout, I/O
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            except asyncio.CancelledError:
                # The thread cannot be stopped: hold the lock (and so the connection, which
                # `close` takes under it) until it is done, then let the cancellation go on.
                await asyncio.wait([call])
                raise

    async def close(self) -> None:
        async with self._lock:
            await super().close()

    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        await self._do(_execute,
                       "INSERT OR REPLACE INTO run_queue VALUES (?, ?, ?, ?, max("
                       " coalesce((SELECT max(rank) + 1 FROM run_queue WHERE tenant = ?), 0),"
                       " coalesce((SELECT min(rank) FROM run_queue), 0)))",
                       (run.tenant, run.id, not_before, time.time(), run.tenant))

    async def claim(self, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
        return await self._do(_claim, owner, ttl_s, limit)

    async def remove(self, tenant: str, run_id: str) -> bool:
        return await self._do(_execute, "DELETE FROM run_queue WHERE tenant = ? AND run_id = ?",
                              (tenant, run_id)) > 0

    async def next_due(self) -> float | None:
        rows = await self._do(_select, "SELECT min(not_before) FROM run_queue", ())
        return rows[0][0] if rows and rows[0][0] is not None else None

    async def depth(self) -> int:
        rows = await self._do(_select, "SELECT count(*) FROM run_queue", ())
        return int(rows[0][0])

    async def put_schedule(self, schedule: Schedule) -> None:
        await self._do(_execute, "INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?)",
                       (schedule.tenant, schedule.id, schedule.agent,
                        msgspec.json.encode(schedule).decode(), schedule.created_at))

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        rows = await self._do(_select, "SELECT record FROM schedules WHERE tenant = ? AND id = ?",
                              (tenant, schedule_id))
        return msgspec.json.decode(rows[0][0], type=Schedule) if rows else None

    async def list_schedules(self, tenant: str | None, agent: str | None = None
                             ) -> list[Schedule]:
        where, args = [], []
        for column, value in (("tenant", tenant), ("agent", agent)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = ("SELECT record FROM schedules" + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY created_at, id")
        rows = await self._do(_select, sql, tuple(args))
        return [msgspec.json.decode(row[0], type=Schedule) for row in rows]

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        return await self._do(_execute, "DELETE FROM schedules WHERE tenant = ? AND id = ?",
                              (tenant, schedule_id)) > 0

    async def claim_tick(self, tenant: str, schedule_id: str, tick: float, run_id: str
                         ) -> bool:
        return await self._do(_claim_tick, tenant, schedule_id, tick, run_id)

    async def prune_ticks(self, before: float) -> int:
        return await self._do(_execute, "DELETE FROM schedule_ticks WHERE tick < ?", (before,))


def _execute(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    return conn.execute(sql, args).rowcount


def _select(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, args).fetchall()


def _claim(conn: sqlite3.Connection, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        clock = time.time()
        due = conn.execute("SELECT tenant, run_id FROM run_queue WHERE not_before <= ?"
                           " ORDER BY rank, enqueued_at LIMIT ?", (clock, limit)).fetchall()
        claimed: list[RunRecord] = []
        for tenant, run_id in due:
            conn.execute("DELETE FROM run_queue WHERE tenant = ? AND run_id = ?", (tenant, run_id))
            rows = conn.execute(
                "UPDATE runs SET owner = ?, lease_expires_at = ?, status = 'running',"
                " attempt = attempt + 1, error = NULL, updated_at = ?"
                " WHERE tenant = ? AND id = ? AND status = 'queued'"
                f" RETURNING {_RUN_COLUMNS}",
                (owner, clock + ttl_s, clock, tenant, run_id)).fetchall()
            claimed.extend(_run_from_row(row) for row in rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return claimed


def _claim_tick(conn: sqlite3.Connection, tenant: str, schedule_id: str, tick: float,
                run_id: str) -> bool:
    conn.execute("BEGIN IMMEDIATE")
    try:
        won = conn.execute("INSERT OR IGNORE INTO schedule_ticks VALUES (?, ?, ?, ?)",
                           (tenant, schedule_id, tick, run_id)).rowcount > 0
        if won:
            conn.execute(
                "UPDATE schedules SET record = json_set(record, '$.last_tick', ?,"
                " '$.last_run_id', ?) WHERE tenant = ? AND id = ?"
                " AND coalesce(json_extract(record, '$.last_tick'), 0) < ?",
                (tick, run_id, tenant, schedule_id, tick))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return won
