"""The connection plumbing the auth stores (API keys, the audit trail) share on PostgreSQL:
a small pool of their own, the schema migrated on open. Each store adds its statements."""

from __future__ import annotations

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
