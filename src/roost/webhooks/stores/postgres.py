"""The outbox on PostgreSQL (tables of migration 0009), over a small pool of its own, on the
database clock. The claim is one statement: the due rows ranked per tenant, and an UPDATE
that re-checks each row's lease once it holds the row's lock (READ COMMITTED re-evaluates
the WHERE after a wait), so of two concurrent claimers one gets the row."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
import msgspec

from roost.sessions.migrate import DEFAULT_SCHEMA, apply_migrations, postgres_errors, quote_ident
from roost.sessions.postgres import _init_connection
from roost.webhooks.records import Delivery

_CLOCK = "extract(epoch FROM clock_timestamp())"
_OPEN = "state IN ('armed', 'pending')"


class PostgresWebhooks:
    def __init__(self, url: str, *, schema: str | None = None, pool_size: int = 2) -> None:
        self.url = url
        self.schema = schema or DEFAULT_SCHEMA
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        t = f"{quote_ident(self.schema)}.webhook_deliveries"
        self._arm = (f"INSERT INTO {t} (tenant, run_id, state, next_at, doc)"
                     " VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT DO NOTHING RETURNING 1")
        self._get = f"SELECT doc FROM {t} WHERE tenant = $1 AND run_id = $2"
        self._wake = (f"UPDATE {t} SET next_at = least(next_at, $3)"
                      " WHERE tenant = $1 AND run_id = $2 AND state = 'armed'")
        self._claim = (
            f"WITH ranked AS (SELECT tenant, run_id, next_at, row_number() OVER"
            f"  (PARTITION BY tenant ORDER BY next_at) AS n FROM {t}"
            f"  WHERE {_OPEN} AND next_at <= {_CLOCK} AND lease_until < {_CLOCK}"
            "  AND tenant <> ALL($5::text[])),"
            " chosen AS (SELECT tenant, run_id FROM ranked WHERE n <= $4"
            "  ORDER BY next_at LIMIT $3)"
            f" UPDATE {t} d SET owner = $1, lease_until = {_CLOCK} + $2 FROM chosen"
            " WHERE d.tenant = chosen.tenant AND d.run_id = chosen.run_id"
            f"  AND d.{_OPEN} AND d.lease_until < {_CLOCK}"
            " RETURNING d.doc")
        self._save = (f"UPDATE {t} SET state = $4, next_at = $5, doc = $6::jsonb,"
                      " owner = NULL, lease_until = 0"
                      " WHERE tenant = $1 AND run_id = $2 AND owner = $3 RETURNING 1")
        s = f"{quote_ident(self.schema)}.webhook_secrets"
        self._get_secret = f"SELECT secret FROM {s} WHERE tenant = $1"
        self._put_secret = (f"INSERT INTO {s} VALUES ($1, $2, {_CLOCK}) ON CONFLICT (tenant)"
                            " DO UPDATE SET secret = excluded.secret,"
                            " updated_at = excluded.updated_at RETURNING secret")
        self._add_secret = (f"WITH ins AS (INSERT INTO {s} VALUES ($1, $2, {_CLOCK})"
                            " ON CONFLICT DO NOTHING RETURNING secret)"
                            f" SELECT secret FROM ins UNION ALL"
                            f" SELECT secret FROM {s} WHERE tenant = $1 LIMIT 1")

    async def open(self) -> None:
        if self._pool is not None:
            return
        with postgres_errors("open"):
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self._pool_size,
                                             init=_init_connection)
            async with pool.acquire() as conn:
                await apply_migrations(conn, self.schema)
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        await self.open()
        assert self._pool is not None
        with postgres_errors(what):
            async with self._pool.acquire() as conn:
                yield conn

    async def arm(self, delivery: Delivery) -> bool:
        async with self._conn("webhooks.arm") as conn:
            return await conn.fetchval(self._arm, delivery.tenant, delivery.run_id,
                                       delivery.state, delivery.next_at,
                                       msgspec.json.encode(delivery)) is not None

    async def get(self, tenant: str, run_id: str) -> Delivery | None:
        async with self._conn("webhooks.get") as conn:
            doc = await conn.fetchval(self._get, tenant, run_id)
        return None if doc is None else msgspec.convert(doc, Delivery)

    async def wake(self, tenant: str, run_id: str, at: float) -> None:
        async with self._conn("webhooks.wake") as conn:
            await conn.execute(self._wake, tenant, run_id, at)

    async def claim(self, owner: str, lease_s: float, limit: int, per_tenant: int,
                    exclude: Sequence[str] = ()) -> list[Delivery]:
        async with self._conn("webhooks.claim") as conn:
            rows = await conn.fetch(self._claim, owner, lease_s, limit, per_tenant,
                                    list(exclude))
        return [msgspec.convert(row[0], Delivery) for row in rows]

    async def save(self, delivery: Delivery, owner: str) -> bool:
        async with self._conn("webhooks.save") as conn:
            return await conn.fetchval(self._save, delivery.tenant, delivery.run_id, owner,
                                       delivery.state, delivery.next_at,
                                       msgspec.json.encode(delivery)) is not None

    async def get_secret(self, tenant: str) -> str | None:
        async with self._conn("webhooks.get_secret") as conn:
            value = await conn.fetchval(self._get_secret, tenant)
        return None if value is None else str(value)

    async def put_secret(self, tenant: str, secret: str, *, replace: bool = True) -> str:
        async with self._conn("webhooks.put_secret") as conn:
            stored = await conn.fetchval(self._put_secret if replace else self._add_secret,
                                         tenant, secret)
            if stored is None:  # lost the insert race; the winner's row is committed now
                stored = await conn.fetchval(self._get_secret, tenant)
        return str(stored)
