"""The connection plumbing the auth stores (API keys, the audit trail) share on SQLite: their
own connection to the file (PostgreSQL's is in `pg_table.py`: it needs the `postgres` extra).
Each store adds its statements."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path


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
