"""API keys in PostgreSQL: the `api_keys` table of migration 0004, in the session store's
schema, over a small pool of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from roost.auth.keys import ApiKey
from roost.auth.pg_table import PostgresTable

_COLUMNS = ("id", "tenant", "role", "name", "hash", "user_id", "created_at", "expires_at",
            "revoked_at", "last_used_at", "budget")  # budget: migration 0006, JSON text
_SELECT = ", ".join(_COLUMNS)


class PostgresKeyStore(PostgresTable):
    TABLE = "api_keys"

    async def add(self, key: ApiKey) -> None:
        pool = await self._pool_()
        await pool.execute(f"INSERT INTO {self._table} ({_SELECT}) VALUES "
                           f"({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})",
                           *(_column(key, c) for c in _COLUMNS))

    async def get(self, key_id: str) -> ApiKey | None:
        pool = await self._pool_()
        row = await pool.fetchrow(f"SELECT {_SELECT} FROM {self._table} WHERE id = $1", key_id)
        return None if row is None else _key(row)

    async def list(self, tenant: str | None = None) -> list[ApiKey]:
        pool = await self._pool_()
        if tenant is None:
            rows = await pool.fetch(f"SELECT {_SELECT} FROM {self._table} ORDER BY created_at")
        else:
            rows = await pool.fetch(f"SELECT {_SELECT} FROM {self._table} WHERE tenant = $1 "
                                    "ORDER BY created_at", tenant)
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str, at: float) -> bool:
        pool = await self._pool_()
        status = await pool.execute(f"UPDATE {self._table} SET revoked_at = $1 "
                                    "WHERE id = $2 AND revoked_at IS NULL", at, key_id)
        return bool(status == "UPDATE 1")

    async def touch(self, used: Mapping[str, float]) -> None:
        if not used:
            return
        pool = await self._pool_()
        # One statement for the whole batch: the flush runs every few seconds per instance.
        await pool.execute(
            f"UPDATE {self._table} AS k SET last_used_at = u.at FROM "
            "unnest($1::text[], $2::float8[]) AS u(id, at) "
            "WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)",
            list(used), list(used.values()))


def _column(key: ApiKey, name: str) -> Any:
    value = getattr(key, name)
    return orjson.dumps(value).decode() if name == "budget" and value is not None else value


def _key(row: Any) -> ApiKey:
    fields = {c: row[c] for c in _COLUMNS}
    if fields["budget"] is not None:
        fields["budget"] = orjson.loads(fields["budget"])
    return ApiKey(**fields)
