"""Audit records in PostgreSQL: table `audit_log` of migration 0005, own small pool."""

from __future__ import annotations

from collections.abc import Sequence

from roost.auth.auditlog import AuditRecord
from roost.auth.pg_table import PostgresTable

_FIELDS = AuditRecord.__struct_fields__


class PostgresAuditStore(PostgresTable):
    TABLE = "audit_log"

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
