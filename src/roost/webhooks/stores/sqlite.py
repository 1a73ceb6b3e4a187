"""The outbox in the SQLite store's file, over a connection of its own. A claim is one
`BEGIN IMMEDIATE` transaction; calls run in a thread, one at a time."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec

from roost.auth.tables import SQLiteTable
from roost.errors import StoreUnavailable
from roost.webhooks.records import Delivery

T = TypeVar("T")

_CLAIM = (
    "SELECT tenant, run_id, doc FROM (SELECT tenant, run_id, doc, next_at, row_number()"
    " OVER (PARTITION BY tenant ORDER BY next_at) AS n FROM webhook_deliveries"
    " WHERE state IN ('armed', 'pending') AND next_at <= ? AND lease_until < ?"
    "  AND tenant NOT IN (SELECT value FROM json_each(?)))"
    " WHERE n <= ? ORDER BY next_at LIMIT ?")


class SQLiteWebhooks(SQLiteTable):
    SCHEMA = (
        "PRAGMA journal_mode = WAL",
        "CREATE TABLE IF NOT EXISTS webhook_deliveries (tenant TEXT NOT NULL,"
        " run_id TEXT NOT NULL, state TEXT NOT NULL, next_at REAL NOT NULL,"
        " owner TEXT, lease_until REAL NOT NULL DEFAULT 0, doc TEXT NOT NULL,"
        " PRIMARY KEY (tenant, run_id))",
        "CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries"
        " (state, next_at)",
        "CREATE TABLE IF NOT EXISTS webhook_secrets (tenant TEXT PRIMARY KEY,"
        " secret TEXT NOT NULL, updated_at REAL NOT NULL)",
    )

    async def _do(self, fn: Callable[..., T], *args: Any) -> T:
        await self.open()
        async with self._lock:
            conn = self._conn
            assert conn is not None
            call = asyncio.ensure_future(asyncio.to_thread(fn, conn, *args))
            try:
                return await asyncio.shield(call)
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            except asyncio.CancelledError:
                await asyncio.wait([call])  # the thread holds the connection: let it finish
                raise

    async def close(self) -> None:
        async with self._lock:
            await super().close()

    async def arm(self, delivery: Delivery) -> bool:
        return await self._do(_rowcount,
                              "INSERT OR IGNORE INTO webhook_deliveries (tenant, run_id, state,"
                              " next_at, doc) VALUES (?, ?, ?, ?, ?)",
                              (delivery.tenant, delivery.run_id, delivery.state,
                               delivery.next_at, _encode(delivery))) > 0

    async def get(self, tenant: str, run_id: str) -> Delivery | None:
        row = await self._do(_one, "SELECT doc FROM webhook_deliveries WHERE tenant = ?"
                             " AND run_id = ?", (tenant, run_id))
        return None if row is None else _decode(row[0])

    async def wake(self, tenant: str, run_id: str, at: float) -> None:
        await self._do(_rowcount, "UPDATE webhook_deliveries SET next_at = min(next_at, ?)"
                       " WHERE tenant = ? AND run_id = ? AND state = 'armed'",
                       (at, tenant, run_id))

    async def claim(self, owner: str, lease_s: float, limit: int, per_tenant: int,
                    exclude: Sequence[str] = ()) -> list[Delivery]:
        return await self._do(_claim, owner, lease_s, limit, per_tenant,
                              json.dumps(list(exclude)))

    async def save(self, delivery: Delivery, owner: str) -> bool:
        return await self._do(_rowcount,
                              "UPDATE webhook_deliveries SET state = ?, next_at = ?, doc = ?,"
                              " owner = NULL, lease_until = 0"
                              " WHERE tenant = ? AND run_id = ? AND owner = ?",
                              (delivery.state, delivery.next_at, _encode(delivery),
                               delivery.tenant, delivery.run_id, owner)) > 0

    async def get_secret(self, tenant: str) -> str | None:
        row = await self._do(_one, "SELECT secret FROM webhook_secrets WHERE tenant = ?",
                             (tenant,))
        return None if row is None else str(row[0])

    async def put_secret(self, tenant: str, secret: str, *, replace: bool = True) -> str:
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        await self._do(_rowcount, f"{verb} INTO webhook_secrets VALUES (?, ?, ?)",
                       (tenant, secret, time.time()))
        stored = await self.get_secret(tenant)
        assert stored is not None
        return stored


def _encode(delivery: Delivery) -> str:
    return msgspec.json.encode(delivery).decode()


def _decode(doc: str | bytes) -> Delivery:
    return msgspec.json.decode(doc, type=Delivery)


def _rowcount(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> int:
    return conn.execute(sql, args).rowcount


def _one(conn: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    return conn.execute(sql, args).fetchone()


def _claim(conn: sqlite3.Connection, owner: str, lease_s: float, limit: int,
           per_tenant: int, exclude: str) -> list[Delivery]:
    # A read first: an idle outbox (the usual case) costs no write lock on the file the
    # session store writes to.
    clock = time.time()
    if conn.execute(_CLAIM, (clock, clock, exclude, per_tenant, 1)).fetchone() is None:
        return []
    conn.execute("BEGIN IMMEDIATE")
    try:
        clock = time.time()
        rows = conn.execute(_CLAIM, (clock, clock, exclude, per_tenant, limit)).fetchall()
        conn.executemany("UPDATE webhook_deliveries SET owner = ?, lease_until = ?"
                         " WHERE tenant = ? AND run_id = ?",
                         [(owner, clock + lease_s, tenant, run_id) for tenant, run_id, _ in rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return [_decode(doc) for _, _, doc in rows]
