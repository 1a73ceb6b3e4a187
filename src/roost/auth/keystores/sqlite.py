"""API keys in the SQLite database file the session store uses, in a table of their own,
over a connection of their own (reads happen on cache misses only, so a thread per call
is cheap enough and keeps the session store's writer untouched)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from typing import Any

import orjson

from roost.auth.keys import ApiKey
from roost.auth.tables import SQLiteTable

_COLUMNS = ("id", "tenant", "role", "name", "hash", "user_id", "created_at", "expires_at",
            "revoked_at", "last_used_at", "budget")
_SCHEMA = """CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL,
    hash TEXT NOT NULL, user_id TEXT, created_at REAL NOT NULL, expires_at REAL,
    revoked_at REAL, last_used_at REAL, budget TEXT)"""


class SQLiteKeyStore(SQLiteTable):
    SCHEMA = (_SCHEMA,)

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        # A file made before per-key budgets: add the column (SQLite has no IF NOT EXISTS).
        columns = {row[1] for row in conn.execute("PRAGMA table_info(api_keys)")}
        if "budget" not in columns:
            conn.execute("ALTER TABLE api_keys ADD COLUMN budget TEXT")
        return conn

    async def _run(self, sql: str, *args: Any, many: list[tuple[Any, ...]] | None = None
                   ) -> list[tuple[Any, ...]] | int:
        await self.open()
        conn = self._conn
        assert conn is not None

        def call() -> list[tuple[Any, ...]] | int:
            if many is not None:
                return conn.executemany(sql, many).rowcount
            cursor = conn.execute(sql, args)
            return cursor.fetchall() if cursor.description else cursor.rowcount

        async with self._lock:  # one statement at a time on the shared connection
            return await asyncio.to_thread(call)

    async def add(self, key: ApiKey) -> None:
        await self._run(f"INSERT INTO api_keys ({', '.join(_COLUMNS)}) VALUES "
                        f"({', '.join('?' * len(_COLUMNS))})",
                        *(_column(key, c) for c in _COLUMNS))

    async def get(self, key_id: str) -> ApiKey | None:
        rows = await self._run(f"SELECT {', '.join(_COLUMNS)} FROM api_keys WHERE id = ?", key_id)
        assert isinstance(rows, list)
        return _key(rows[0]) if rows else None

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        sql = f"SELECT {', '.join(_COLUMNS)} FROM api_keys"
        rows = await (self._run(sql + " WHERE tenant = ? ORDER BY created_at", tenant)
                      if tenant is not None else self._run(sql + " ORDER BY created_at"))
        assert isinstance(rows, list)
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str, at: float) -> bool:
        count = await self._run("UPDATE api_keys SET revoked_at = ? "
                                "WHERE id = ? AND revoked_at IS NULL", at, key_id)
        return count == 1

    async def touch(self, used: Mapping[str, float]) -> None:
        if used:
            await self._run("UPDATE api_keys SET last_used_at = ? WHERE id = ? AND "
                            "(last_used_at IS NULL OR last_used_at < ?)",
                            many=[(at, key_id, at) for key_id, at in used.items()])


def _column(key: ApiKey, name: str) -> Any:
    value = getattr(key, name)
    return orjson.dumps(value).decode() if name == "budget" and value is not None else value


def _key(row: tuple[Any, ...]) -> ApiKey:
    fields = dict(zip(_COLUMNS, row, strict=True))
    if fields["budget"] is not None:
        fields["budget"] = orjson.loads(fields["budget"])
    return ApiKey(**fields)
