"""The run queue and schedules on PostgreSQL (tables of migration 0007), over a small pool of
their own. The claim is one statement: due queue rows, lowest rank first, locked with
`FOR UPDATE SKIP LOCKED` (concurrent claimers pass over each other's rows instead of queueing
behind their locks), deleted, and their runs claimed, on the database clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import msgspec

from roost.background.records import Schedule
from roost.sessions.migrate import DEFAULT_SCHEMA, apply_migrations, postgres_errors, quote_ident
from roost.sessions.postgres import _RUN_COLUMNS, _init_connection, _run
from roost.sessions.records import RunRecord
from roost.sessions.store import Store

_CLOCK = "extract(epoch FROM clock_timestamp())"


class PostgresBackground:
    def __init__(self, url: str, store: Store, *, schema: str | None = None,
                 pool_size: int = 2) -> None:
        self.url = url
        self.schema = schema or DEFAULT_SCHEMA
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        s = quote_ident(self.schema)
        runs = ", ".join(f"r.{c.strip()}" for c in _RUN_COLUMNS.split(","))
        self._enqueue = (
            f"INSERT INTO {s}.run_queue (tenant, run_id, not_before, enqueued_at, rank)"
            f" VALUES ($1, $2, $3, {_CLOCK}, greatest("
            f"  (SELECT max(rank) + 1 FROM {s}.run_queue WHERE tenant = $1),"
            f"  (SELECT min(rank) FROM {s}.run_queue), 0))"
            " ON CONFLICT (tenant, run_id) DO UPDATE SET not_before = excluded.not_before")
        self._claim = (
            f"WITH due AS (SELECT tenant, run_id FROM {s}.run_queue"
            f"  WHERE not_before <= {_CLOCK} ORDER BY rank, enqueued_at"
            "  LIMIT $3 FOR UPDATE SKIP LOCKED),"
            f" taken AS (DELETE FROM {s}.run_queue q USING due"
            "  WHERE q.tenant = due.tenant AND q.run_id = due.run_id"
            "  RETURNING q.tenant, q.run_id)"
            f" UPDATE {s}.runs r SET owner = $1, lease_expires_at = {_CLOCK} + $2,"
            f"  status = 'running', attempt = r.attempt + 1, error = NULL, updated_at = {_CLOCK}"
            " FROM taken WHERE r.tenant = taken.tenant AND r.id = taken.run_id"
            "  AND r.status = 'queued'"
            f" RETURNING r.tenant, {runs}")
        self._remove = f"DELETE FROM {s}.run_queue WHERE tenant = $1 AND run_id = $2"
        self._next_due = f"SELECT min(not_before) FROM {s}.run_queue"
        self._depth = f"SELECT count(*) FROM {s}.run_queue"
        self._put_schedule = (
            f"INSERT INTO {s}.schedules (tenant, id, agent, record, created_at)"
            " VALUES ($1, $2, $3, $4::jsonb, $5) ON CONFLICT (tenant, id)"
            " DO UPDATE SET agent = excluded.agent, record = excluded.record")
        self._get_schedule = f"SELECT record FROM {s}.schedules WHERE tenant = $1 AND id = $2"
        self._list_all = f"SELECT record FROM {s}.schedules ORDER BY created_at, id"
        self._list_tenant = (f"SELECT record FROM {s}.schedules WHERE tenant = $1"
                             " ORDER BY created_at, id")
        self._list_agent = (f"SELECT record FROM {s}.schedules WHERE tenant = $1 AND agent = $2"
                            " ORDER BY created_at, id")
        self._delete_schedule = (f"DELETE FROM {s}.schedules WHERE tenant = $1 AND id = $2"
                                 " RETURNING id")
        # The tick's row and the schedule's last tick in one statement: a claim that wins
        # always advances the schedule (never backwards: another instance may have fired a
        # later tick first).
        self._claim_tick = (
            f"WITH t AS (INSERT INTO {s}.schedule_ticks (tenant, schedule_id, tick, run_id)"
            "  VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING tick),"
            f" u AS (UPDATE {s}.schedules SET record = record"
            "  || jsonb_build_object('last_tick', $3::float8, 'last_run_id', $4::text)"
            "  WHERE tenant = $1 AND id = $2 AND EXISTS (SELECT FROM t)"
            "  AND coalesce((record->>'last_tick')::float8, 0) < $3)"
            " SELECT count(*) FROM t")
        self._prune = f"DELETE FROM {s}.schedule_ticks WHERE tick < $1"

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

    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        async with self._conn("enqueue") as conn:
            await conn.execute(self._enqueue, run.tenant, run.id, not_before)

    async def claim(self, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
        async with self._conn("claim") as conn:
            rows = await conn.fetch(self._claim, owner, ttl_s, limit)
        return [_run(row[0], row[1:]) for row in rows]

    async def remove(self, tenant: str, run_id: str) -> bool:
        async with self._conn("remove") as conn:
            status = await conn.execute(self._remove, tenant, run_id)
        return bool(status != "DELETE 0")

    async def next_due(self) -> float | None:
        async with self._conn("next_due") as conn:
            value = await conn.fetchval(self._next_due)
        return None if value is None else float(value)

    async def depth(self) -> int:
        async with self._conn("depth") as conn:
            return int(await conn.fetchval(self._depth))

    async def put_schedule(self, schedule: Schedule) -> None:
        async with self._conn("put_schedule") as conn:
            await conn.execute(self._put_schedule, schedule.tenant, schedule.id, schedule.agent,
                               msgspec.json.encode(schedule), schedule.created_at)

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        async with self._conn("get_schedule") as conn:
            record = await conn.fetchval(self._get_schedule, tenant, schedule_id)
        return None if record is None else _schedule(record)

    async def list_schedules(self, tenant: str | None, agent: str | None = None
                             ) -> list[Schedule]:
        async with self._conn("list_schedules") as conn:
            if tenant is None:
                rows = await conn.fetch(self._list_all)
            elif agent is None:
                rows = await conn.fetch(self._list_tenant, tenant)
            else:
                rows = await conn.fetch(self._list_agent, tenant, agent)
        return [_schedule(row[0]) for row in rows]

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        async with self._conn("delete_schedule") as conn:
            return await conn.fetchval(self._delete_schedule, tenant, schedule_id) is not None

    async def claim_tick(self, tenant: str, schedule_id: str, tick: float, run_id: str
                         ) -> bool:
        async with self._conn("claim_tick") as conn:
            return bool(await conn.fetchval(self._claim_tick, tenant, schedule_id, tick, run_id))

    async def prune_ticks(self, before: float) -> int:
        async with self._conn("prune_ticks") as conn:
            status = await conn.execute(self._prune, before)
        return int(status.rsplit(" ", 1)[-1])


def _schedule(record: object) -> Schedule:
    return msgspec.convert(record, Schedule)
