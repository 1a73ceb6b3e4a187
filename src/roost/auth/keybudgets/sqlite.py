"""The key spend ledger in the store's SQLite file (table `key_spend`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from roost.auth.tables import SQLiteTable

_SCHEMA = """CREATE TABLE IF NOT EXISTS key_spend (
    key_id TEXT NOT NULL, period TEXT NOT NULL, tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0, PRIMARY KEY (key_id, period))"""


class SQLiteKeySpend(SQLiteTable):
    SCHEMA = (_SCHEMA,)

    async def add(self, spend: Mapping[tuple[str, str], tuple[int, float]]) -> None:
        await self.open()
        conn = self._conn
        assert conn is not None
        rows = [(k, p, t, c) for (k, p), (t, c) in spend.items()]

        def write() -> None:
            conn.executemany("INSERT INTO key_spend VALUES (?, ?, ?, ?) ON CONFLICT "
                             "(key_id, period) DO UPDATE SET tokens = tokens + excluded.tokens,"
                             " cost = cost + excluded.cost", rows)

        async with self._lock:
            await asyncio.to_thread(write)

    async def get(self, key_id: str, periods: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        await self.open()
        conn = self._conn
        assert conn is not None

        def read() -> dict[str, tuple[int, float]]:
            marks = ", ".join("?" * len(periods))
            rows = conn.execute(f"SELECT period, tokens, cost FROM key_spend WHERE key_id = ? "
                                f"AND period IN ({marks})", (key_id, *periods)).fetchall()
            return {p: (int(t), float(c)) for p, t, c in rows}

        async with self._lock:
            return await asyncio.to_thread(read)
