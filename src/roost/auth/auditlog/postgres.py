"""Audit records in PostgreSQL: table `audit_log` of migration 0005, own small pool."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from roost.auth.auditlog import AuditRecord
from roost.sessions.migrate import DEFAULT_SCHEMA, apply_migrations, quote_ident

_FIELDS = AuditRecord.__struct_fields__


class PostgresAuditStore:
    def __init__(self, url: str, *, schema: str | None = None, migrate_on_open: bool = True
                 ) -> None:
        self.url = url
        self.schema = schema or DEFAULT_SCHEMA
        self._table = f"{quote_ident(self.schema)}.audit_log"
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

    async def append(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        pool = await self._pool_()
        await pool.copy_records_to_table(
            "audit_log", schema_name=self.schema, columns=list(_FIELDS),
            records=[tuple(getattr(r, f) for f in _FIELDS) for r in records])

    async def query(self, tenant: str | None = None, *, since: float | None = None,
                    until: float | None = None, limit: int = 100) -> list[AuditRecord]:
        pool = await self._pool_()
        where, args = ["true"], []
        for column, op, value in (("tenant", "=", tenant), ("at", ">=", since),
                                  ("at", "<", until)):
            if value is not None:
                args.append(value)
                where.append(f"{column} {op} ${len(args)}")
        args.append(limit)
        rows = await pool.fetch(f"SELECT {', '.join(_FIELDS)} FROM {self._table} "
                                f"WHERE {' AND '.join(where)} ORDER BY at DESC, seq DESC "
                                f"LIMIT ${len(args)}", *args)
        return [AuditRecord(**{f: row[f] for f in _FIELDS}) for row in rows]

    async def purge(self, before: float) -> int:
        pool = await self._pool_()
        status = await pool.execute(f"DELETE FROM {self._table} WHERE at < $1", before)
        return int(status.rsplit(" ", 1)[-1])
