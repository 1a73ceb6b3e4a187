"""The connection plumbing the auth stores (API keys, the audit trail) share per backend: a
small pool of their own on PostgreSQL (the schema migrated on open), their own connection to
the SQLite file. Each store adds its statements."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import asyncpg

from roost.sessions.migrate import DEFAULT_SCHEMA, apply_migrations, quote_ident


class PostgresTable:
    """One table in the store's schema, over a pool of at most two connections."""

    TABLE = ""

    def __init__(self, url: str, *, schema: str | None = None, migrate_on_open: bool = True
                 ) -> None:
        self.url = url
        self.schema = schema or DEFAULT_SCHEMA
        self._table = f"{quote_ident(self.schema)}.{self.TABLE}"
        self._migrate = migrate_on_open
        self._pool: asyncpg.Pool | None = None

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await asyncpg.create_pool(self.url, min_size=1, max_size=2)
        if self._migrate:
            async with pool.acquire() as conn:
                await apply_migrations(conn, self.schema)
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _pool_(self) -> asyncpg.Pool:
        await self.open()
        assert self._pool is not None
        return self._pool


class SQLiteTable:
    """Tables in a SQLite file, over a connection of their own (created by `SCHEMA`)."""

    SCHEMA: tuple[str, ...] = ()

    def __init__(self, path: str, *, busy_timeout_s: float = 5.0) -> None:
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        for statement in self.SCHEMA:
            conn.execute(statement)
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)
