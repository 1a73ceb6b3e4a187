"""Audit records in the SQLite database file, table `audit_log`, own connection."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from roost.auth.auditlog import AuditRecord
from roost.auth.tables import SQLiteTable

_FIELDS = AuditRecord.__struct_fields__
_SCHEMA = ("CREATE TABLE IF NOT EXISTS audit_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
           "at REAL NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, status INTEGER NOT NULL, "
           "tenant TEXT, principal TEXT, role TEXT, target TEXT, request_id TEXT, client TEXT, "
           "reason TEXT, suppressed INTEGER NOT NULL DEFAULT 0)")
_INDEX = "CREATE INDEX IF NOT EXISTS audit_log_by_tenant ON audit_log (tenant, at)"


class SQLiteAuditStore(SQLiteTable):
    SCHEMA = (_SCHEMA, _INDEX)

    async def _call(self, fn: Any) -> Any:
        await self.open()
        async with self._lock:  # one statement at a time on the shared connection
            return await asyncio.to_thread(fn, self._conn)

    async def append(self, records: Sequence[AuditRecord]) -> None:
        if not records:
            return
        rows = [tuple(getattr(r, f) for f in _FIELDS) for r in records]
        sql = (f"INSERT INTO audit_log ({', '.join(_FIELDS)}) "
               f"VALUES ({', '.join('?' * len(_FIELDS))})")
        await self._call(lambda conn: conn.executemany(sql, rows))

    async def query(self, tenant: str | None = None, *, since: float | None = None,
                    until: float | None = None, limit: int = 100) -> list[AuditRecord]:
        where, args = ["1"], []
        for clause, value in (("tenant = ?", tenant), ("at >= ?", since), ("at < ?", until)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (f"SELECT {', '.join(_FIELDS)} FROM audit_log WHERE {' AND '.join(where)} "
               "ORDER BY at DESC, seq DESC LIMIT ?")
        rows = await self._call(lambda conn: conn.execute(sql, (*args, limit)).fetchall())
        return [AuditRecord(**dict(zip(_FIELDS, row, strict=True))) for row in rows]

    async def purge(self, before: float) -> int:
        count: int = await self._call(
            lambda conn: conn.execute("DELETE FROM audit_log WHERE at < ?", (before,)).rowcount)
        return count
