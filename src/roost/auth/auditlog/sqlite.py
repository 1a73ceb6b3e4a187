"""Audit records in the SQLite database file, table `audit_log`, own connection."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roost.auth.auditlog import AuditRecord

_FIELDS = AuditRecord.__struct_fields__
_SCHEMA = ("CREATE TABLE IF NOT EXISTS audit_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
           "at REAL NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, status INTEGER NOT NULL, "
           "tenant TEXT, principal TEXT, role TEXT, target TEXT, request_id TEXT, client TEXT, "
           "reason TEXT, suppressed INTEGER NOT NULL DEFAULT 0)")
_INDEX = "CREATE INDEX IF NOT EXISTS audit_log_by_tenant ON audit_log (tenant, at)"


class SQLiteAuditStore:
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
        conn.execute(_SCHEMA)
        conn.execute(_INDEX)
        return conn

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await asyncio.to_thread(conn.close)

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
