"""The PostgreSQL session store: many Roost processes sharing one database.

    >>> store = PostgresStore("postgresql://roost@db:5432/roost", schema="roost")
    >>> await store.open()      # creates the pool and applies pending migrations

Layout (see `migrations/`): `sessions`, `events`, `runs` and `leases` tables, and (0003)
`idempotency_keys` and `agent_states`, in one schema,
every statement fully qualified with it (no reliance on `search_path`, which a connection
pooler may not preserve). JSON columns are `jsonb`, encoded and decoded by msgspec in
asyncpg's binary format; timestamps are float8 epoch seconds, exact round trip.
`usage_summary` is one grouped query over the covering index `runs_by_tenant_usage` (0002).

Concurrency: `append` is one statement (update-with-version-check, insert events from unnested
arrays, upsert the run, in CTEs), so a step costs one round trip and is atomic by construction.
Two clocks are in play, deliberately:

* session and run timestamps (`created_at`, `expires_at`, the `now` given to
  `expire_sessions`) are the caller's, as the records carry them;
* leases use the *database* clock (`clock_timestamp()`): processes with skewed clocks still
  agree on who holds a lease, because only one clock decides. So do run ownership
  (`claim_run`, `renew_ownership`, `claimable_runs`: one statement each) and idempotency
  records. A run record written by a caller carries the lease it was given, and an upsert
  never shortens its owner's lease (`records.kept_lease`).

Outages: every driver error that means "cannot reach the database" (refused, reset, closed
mid-query, connect/acquire/command timeout, too many connections, shutting down) becomes
`StoreUnavailable` within `connect_timeout_s` / `command_timeout_s`. Nothing is cached about a
dead connection: asyncpg's pool replaces broken connections on the next acquire, so the store
recovers on its own when the database is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec

from roost.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    RunNotFound,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from roost.sessions import codec
from roost.sessions.migrate import (
    DEFAULT_SCHEMA,
    apply_migrations,
    postgres_errors,
    quote_ident,
    url_errors,
)
from roost.sessions.records import (
    TERMINAL_STATUSES,
    Event,
    IdempotencyRecord,
    Page,
    RunRecord,
    Session,
    Usage,
)
from roost.sessions.store import CLAIMABLE_STATUSES, MAX_LIST_RUNS
from roost.sessions.usage import (
    MAX_USAGE_GROUPS,
    UsageTotals,
    check_group_by,
    check_window,
    totals_from_rows,
)

__all__ = ["PostgresStore"]

_json_decode = msgspec.json.Decoder().decode

# jsonb's binary wire format is a version byte (1) followed by the JSON text.
_JSONB_VERSION = b"\x01"


def _encode_jsonb(value: bytes) -> bytes:
    # Values arrive already encoded by `codec.encode` (see `_json`), so that a value JSON
    # cannot hold fails as `InvalidInput` before the query, as on every backend.
    return _JSONB_VERSION + value


def _decode_jsonb(data: bytes) -> Any:
    return _json_decode(memoryview(data)[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        schema="pg_catalog",
        format="binary",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool reset hook: nothing to undo.

    The store never changes session state (no SET outside a transaction, no LISTEN, cursors
    or session advisory locks), so asyncpg's default reset query (RESET ALL; UNLISTEN *; …)
    would only add a round trip to every operation. asyncpg still rolls back a transaction
    left open before it calls this.
    """


_json = codec.encode


_SESSION_COLUMNS = (
    "id, agent, user_id, state, metadata, version, last_seq, created_at, updated_at, expires_at"
)
_EVENT_COLUMNS = "seq, type, run_id, data, ts"
_RUN_COLUMNS = (
    "id, session_id, agent, status, input, output, deadline, attempt, usage, error,"
    " created_at, updated_at, model, owner, lease_expires_at, parent_run_id"
)


def _session(tenant: str, row: asyncpg.Record) -> Session:
    return Session(
        id=row[0],
        tenant=tenant,
        agent=row[1],
        user_id=row[2],
        state=row[3],
        metadata=row[4],
        version=row[5],
        last_seq=row[6],
        created_at=row[7],
        updated_at=row[8],
        expires_at=row[9],
    )


def _event(row: asyncpg.Record) -> Event:
    return Event(seq=row[0], type=row[1], run_id=row[2], data=row[3], ts=row[4])


def _run(tenant: str, row: asyncpg.Record) -> RunRecord:
    return RunRecord(
        id=row[0],
        session_id=row[1],
        tenant=tenant,
        agent=row[2],
        status=row[3],
        input=row[4],
        output=row[5],
        deadline=row[6],
        attempt=row[7],
        usage=_usage(row[8]),
        error=row[9],
        created_at=row[10],
        updated_at=row[11],
        model=row[12],
        owner=row[13],
        lease_expires_at=row[14],
        parent_run_id=row[15],
    )


def _usage(value: Any) -> Usage:
    try:
        return msgspec.convert(value, Usage)
    except msgspec.ValidationError as exc:
        raise StoreError(f"stored run usage does not decode: {exc}") from exc


def _run_params(run: RunRecord) -> tuple[Any, ...]:
    return (
        run.id,
        run.session_id,
        run.agent,
        run.status,
        run.input,
        run.output,
        run.deadline,
        run.attempt,
        _json(run.usage),
        None if run.error is None else _json(run.error),
        run.created_at,
        run.updated_at,
        run.model,
        run.owner,
        run.lease_expires_at,
        run.parent_run_id,
    )


class _Queries:
    """Every statement, built once per schema (asyncpg caches the prepared plans by text)."""

    def __init__(self, schema: str) -> None:
        s = quote_ident(schema)
        self.schema = s
        self.get_session = (
            f"SELECT {_SESSION_COLUMNS} FROM {s}.sessions WHERE tenant = $1 AND id = $2"
        )
        self.get_version = f"SELECT version FROM {s}.sessions WHERE tenant = $1 AND id = $2"
        self.session_exists = f"SELECT 1 FROM {s}.sessions WHERE tenant = $1 AND id = $2"
        self.create_session = (
            f"INSERT INTO {s}.sessions (tenant, {_SESSION_COLUMNS})"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        )
        self.delete_session = f"DELETE FROM {s}.sessions WHERE tenant = $1 AND id = $2 RETURNING 1"
        # Runs after the session row is gone (its own statement, so its snapshot includes any
        # append that committed while we waited for the session's row lock).
        self.delete_children = (
            f"WITH e AS (DELETE FROM {s}.events WHERE tenant = $1 AND session_id = $2),"
            f" r AS (DELETE FROM {s}.runs WHERE tenant = $1 AND session_id = $2)"
            f" DELETE FROM {s}.leases WHERE tenant = $1 AND session_id = $2"
        )
        patch = (
            f"UPDATE {s}.sessions SET state = (state || $3) - $4::text[],"
            " version = version + 1, updated_at = $5 WHERE tenant = $1 AND id = $2"
        )
        self.patch_any = f"{patch} RETURNING {_SESSION_COLUMNS}"
        self.patch_cas = f"{patch} AND version = $6 RETURNING {_SESSION_COLUMNS}"
        # The whole append in one statement: CTEs share one snapshot and commit together, and
        # the event and run inserts select FROM the update, so a lost compare-and-set writes
        # nothing at all.
        append = (
            f"WITH s AS (UPDATE {s}.sessions"
            " SET version = version + 1, last_seq = last_seq + $4, updated_at = $5"
            " WHERE tenant = $1 AND id = $2 AND version = $3 RETURNING version, last_seq),"
            f" e AS (INSERT INTO {s}.events (tenant, session_id, seq, type, run_id, data, ts)"
            " SELECT $1, $2, s.last_seq - $4 + u.ord, u.type, u.run_id, u.data, u.ts FROM s,"
            " unnest($6::text[], $7::text[], $8::jsonb[], $9::float8[])"
            " WITH ORDINALITY AS u(type, run_id, data, ts, ord))"
        )
        # On a lost compare-and-set the same round trip reports the version it found (from
        # the statement's snapshot, which a racing writer may have outdated: see append()).
        outcome = (
            " SELECT true, version, last_seq FROM s UNION ALL"
            f" SELECT false, version, last_seq FROM {s}.sessions"
            " WHERE tenant = $1 AND id = $2 AND NOT EXISTS (SELECT FROM s)"
        )
        self.append = append + outcome
        self.append_with_run = (
            f"{append}, r AS (INSERT INTO {s}.runs AS cur (tenant, {_RUN_COLUMNS})"
            " SELECT $1, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,"
            " $23, $24, $25 FROM s"
            f" ON CONFLICT (tenant, id) DO UPDATE SET {_run_updates()})" + outcome
        )
        self.read_events = (
            f"SELECT {_EVENT_COLUMNS} FROM {s}.events WHERE tenant = $1 AND session_id = $2"
            " AND seq > $3 ORDER BY seq LIMIT $4"
        )
        self.tail_events = (
            f"SELECT {_EVENT_COLUMNS} FROM {s}.events WHERE tenant = $1 AND session_id = $2"
            " ORDER BY seq DESC LIMIT $3"
        )
        # A run (and a lease) needs its session. FOR KEY SHARE holds off a concurrent
        # delete_session until we commit (or makes us see its delete), so neither is orphaned.
        self.put_run = (
            f"INSERT INTO {s}.runs AS cur (tenant, {_RUN_COLUMNS})"
            " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,"
            " $17"
            f" WHERE EXISTS (SELECT 1 FROM {s}.sessions"
            "  WHERE tenant = $1 AND id = $3 FOR KEY SHARE)"
            f" ON CONFLICT (tenant, id) DO UPDATE SET {_run_updates()} RETURNING 1"
        )
        self.get_run = f"SELECT {_RUN_COLUMNS} FROM {s}.runs WHERE tenant = $1 AND id = $2"
        # A lease row is taken over when it is ours already or has expired, on the database
        # clock. ON CONFLICT ... WHERE makes the check and the write one atomic step.
        self.acquire_lease = (
            f"INSERT INTO {s}.leases AS l (tenant, session_id, owner, expires_at)"
            " SELECT $1, $2, $3, extract(epoch FROM clock_timestamp()) + $4"
            f" WHERE EXISTS (SELECT 1 FROM {s}.sessions"
            "  WHERE tenant = $1 AND id = $2 FOR KEY SHARE)"
            " ON CONFLICT (tenant, session_id) DO UPDATE"
            " SET owner = excluded.owner, expires_at = excluded.expires_at"
            " WHERE l.owner = excluded.owner"
            " OR l.expires_at <= extract(epoch FROM clock_timestamp())"
            " RETURNING 1"
        )
        self.release_lease = (
            f"DELETE FROM {s}.leases WHERE tenant = $1 AND session_id = $2 AND owner = $3"
        )
        # SKIP LOCKED: a session being appended to right now is swept next time rather than
        # stalling the sweep, and concurrent sweepers never count a session twice.
        self.expire_batch = (
            f"DELETE FROM {s}.sessions WHERE (tenant, id) IN"
            f" (SELECT tenant, id FROM {s}.sessions WHERE expires_at <= $1"
            "  ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " RETURNING tenant, id"
        )
        doomed = "unnest($1::text[], $2::text[]) AS d(tenant, id)"
        self.expire_children = (
            f"WITH e AS (DELETE FROM {s}.events x USING {doomed}"
            "  WHERE x.tenant = d.tenant AND x.session_id = d.id),"
            f" r AS (DELETE FROM {s}.runs x USING {doomed}"
            "  WHERE x.tenant = d.tenant AND x.session_id = d.id)"
            f" DELETE FROM {s}.leases x USING {doomed}"
            " WHERE x.tenant = d.tenant AND x.session_id = d.id"
        )
        self.read_run_events = (
            f"SELECT {_EVENT_COLUMNS} FROM {s}.events WHERE tenant = $1 AND session_id = $2"
            " AND run_id = $3 AND seq > $4 ORDER BY seq LIMIT $5"
        )
        # -- the fleet: every lease below is on the database clock ----------------------
        clock = "extract(epoch FROM clock_timestamp())"
        # One statement: the row lock serialises claimants, and a claimant that waited
        # re-checks the WHERE against the winner's row (READ COMMITTED), so one wins.
        self.claim_run = (
            f"UPDATE {s}.runs SET owner = $3, lease_expires_at = {clock} + $4,"
            f" status = 'running', attempt = attempt + 1, error = NULL, updated_at = {clock}"
            " WHERE tenant = $1 AND id = $2 AND status = ANY($5::text[])"
            f" AND (owner IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {clock})"
            f" RETURNING {_RUN_COLUMNS}"
        )
        self.run_exists = f"SELECT 1 FROM {s}.runs WHERE tenant = $1 AND id = $2"
        # Both renewals in one round trip; runs_by_owner and leases_by_owner find the rows.
        self.renew_ownership = (
            f"WITH l AS (UPDATE {s}.leases SET expires_at = {clock} + $2"
            f"  WHERE owner = $1 AND expires_at > {clock}),"
            f" r AS (UPDATE {s}.runs SET lease_expires_at = {clock} + $2"
            "  WHERE owner = $1 AND status <> ALL($3::text[]) RETURNING 1)"
            " SELECT count(*) FROM r"
        )
        # Each arm walks its partial index (runs_by_lease, runs_interrupted) in lease order
        # and stops at the limit; the literals match the indexes' predicates.
        run_columns = ", ".join(f"x.{c.strip()}" for c in _RUN_COLUMNS.split(","))
        self.claimable_runs = (
            f"(SELECT x.tenant, {run_columns} FROM {s}.runs x"
            " WHERE x.status IN ('queued', 'running') AND x.lease_expires_at IS NOT NULL"
            f" AND x.lease_expires_at <= {clock} ORDER BY x.lease_expires_at LIMIT $1)"
            " UNION ALL"
            f" (SELECT x.tenant, {run_columns} FROM {s}.runs x"
            " WHERE $2 AND x.status = 'interrupted' AND (x.owner IS NULL"
            f" OR x.lease_expires_at IS NULL OR x.lease_expires_at <= {clock})"
            " ORDER BY x.lease_expires_at NULLS FIRST LIMIT $1)"
            " UNION ALL"
            f" (SELECT x.tenant, {run_columns} FROM {s}.runs x"
            f" WHERE x.status = 'waiting' AND x.owner IS NULL AND x.lease_expires_at <= {clock}"
            " ORDER BY x.lease_expires_at LIMIT $1)"
            " ORDER BY lease_expires_at NULLS FIRST, tenant, id LIMIT $1"
        )
        # Put-if-absent, or take over an expired record. A conflicting insert that commits
        # while this statement runs is locked but invisible to its snapshot: the statement
        # then returns no row, and claim_idempotency_key asks again.
        idem = "fingerprint, value, created_at, expires_at"
        self.claim_idempotency_key = (
            f"WITH i AS (INSERT INTO {s}.idempotency_keys AS k"
            f" (tenant, scope, key, {idem})"
            f" VALUES ($1, $2, $3, $4, $5, {clock}, {clock} + $6)"
            " ON CONFLICT (tenant, scope, key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " value = excluded.value, created_at = excluded.created_at,"
            " expires_at = excluded.expires_at WHERE k.expires_at <= excluded.created_at"
            f" RETURNING {idem})"
            f" SELECT true, {idem} FROM i UNION ALL"
            f" SELECT false, {idem} FROM {s}.idempotency_keys"
            f" WHERE tenant = $1 AND scope = $2 AND key = $3 AND expires_at > {clock}"
            " AND NOT EXISTS (SELECT FROM i)"
        )
        self.expire_idempotency_keys = (
            f"DELETE FROM {s}.idempotency_keys WHERE expires_at <= $1"
        )
        self.set_agent_state = (
            f"INSERT INTO {s}.agent_states (scope, agent, state, updated_at)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (scope, agent)"
            " DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at"
        )
        self.agent_states = f"SELECT scope, agent, state FROM {s}.agent_states"
        self.drop_schema = f"DROP SCHEMA IF EXISTS {s} CASCADE"
        self._listings: dict[tuple[bool, bool, bool], str] = {}
        self._run_listings: dict[tuple[bool, ...], str] = {}
        self._summaries: dict[tuple[tuple[str, ...], bool, bool], str] = {}

    def list_sessions(self, by_agent: bool, by_user: bool, after: bool) -> str:
        key = (by_agent, by_user, after)
        query = self._listings.get(key)
        if query is None:
            # Only the filters in use appear in the SQL: "$n IS NULL OR col = $n" would stop
            # the planner from picking the matching (tenant, agent|user_id, created_at, id) index.
            where, n = ["tenant = $1"], 1
            if by_agent:
                n += 1
                where.append(f"agent = ${n}")
            if by_user:
                n += 1
                where.append(f"user_id = ${n}")
            if after:
                where.append(f"(created_at, id) < (${n + 1}, ${n + 2})")
                n += 2
            query = (
                f"SELECT {_SESSION_COLUMNS} FROM {self.schema}.sessions"
                f" WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ${n + 1}"
            )
            self._listings[key] = query
        return query

    def list_runs(
        self, by_session: bool, by_status: bool, by_agent: bool, since: bool, until: bool
    ) -> str:
        """Arguments in order: tenant, session_id, status, agent, since, until (those in
        use), limit."""
        key = (by_session, by_status, by_agent, since, until)
        query = self._run_listings.get(key)
        if query is None:
            where, n = ["tenant = $1"], 1
            for used, condition in (
                (by_session, "session_id = $"),
                (by_status, "status = $"),
                (by_agent, "agent = $"),
                (since, "created_at >= $"),
                (until, "created_at < $"),
            ):
                if used:
                    n += 1
                    where.append(f"{condition}{n}")
            query = (
                f"SELECT {_RUN_COLUMNS} FROM {self.schema}.runs WHERE {' AND '.join(where)}"
                f" ORDER BY created_at DESC, id DESC LIMIT ${n + 1}"
            )
            self._run_listings[key] = query
        return query

    def usage_summary(self, group_by: tuple[str, ...], since: bool, until: bool) -> str:
        """Arguments in order: tenant, since, until (those in use), row limit."""
        key = (group_by, since, until)
        query = self._summaries.get(key)
        if query is None:
            where, n = ["tenant = $1"], 1
            if since:
                n += 1
                where.append(f"created_at >= ${n}")
            if until:
                n += 1
                where.append(f"created_at < ${n}")
            groups = [_USAGE_GROUPS[k] for k in group_by]
            query = (
                f"SELECT {''.join(g + ', ' for g in groups)}count(*),"
                " coalesce(sum((usage->>'input_tokens')::bigint), 0)::bigint,"
                " coalesce(sum((usage->>'output_tokens')::bigint), 0)::bigint,"
                " coalesce(sum((usage->>'cost')::float8), 0)"
                f" FROM {self.schema}.runs WHERE {' AND '.join(where)}"
                + (f" GROUP BY {', '.join(groups)}" if groups else "")
                + f" LIMIT ${n + 1}"
            )
            self._summaries[key] = query
        return query


# Group expressions of usage_summary. The time buckets are whole seconds divided in integer
# arithmetic (labelled in Python), so a bucket edge never depends on float rounding and
# matches the other backends exactly.
_USAGE_GROUPS = {
    "agent": "agent",
    "model": "model",
    "status": "status",
    "day": "floor(created_at)::bigint / 86400",
    "hour": "floor(created_at)::bigint / 3600",
}


def _run_updates() -> str:
    """The SET list of a run upsert into `runs AS cur`.

    A write never shortens a lease its owner holds (see `records.kept_lease`): the runtime
    writes the record it claimed, while `renew_ownership` has moved the stored expiry on.
    """
    columns = [
        c.strip() for c in _RUN_COLUMNS.split(",") if c.strip() not in ("id", "lease_expires_at")
    ]
    return ", ".join(f"{c} = excluded.{c}" for c in columns) + (
        ", lease_expires_at = CASE WHEN excluded.lease_expires_at IS NOT NULL"
        " AND cur.owner IS NOT DISTINCT FROM excluded.owner"
        " THEN greatest(cur.lease_expires_at, excluded.lease_expires_at)"
        " ELSE excluded.lease_expires_at END"
    )


# A graceful pool close can time out or fail on connections that are already broken.
_CLOSE_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
)


class PostgresStore:
    """A `Store` on PostgreSQL through an asyncpg pool.

    `schema` holds every table (default `public`); `drop_schema_on_close` drops it on `close()`
    (for tests). With `migrate_on_open` (the default) `open()` applies pending migrations;
    turn it off when `roost migrate` runs as a deploy step instead.
    """

    backend = "postgres"

    #: sessions deleted per transaction by `expire_sessions`
    expire_batch_size = 500

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        drop_schema_on_close: bool = False,
        min_pool: int = 1,
        max_pool: int = 10,
        command_timeout_s: float = 5.0,
        connect_timeout_s: float = 3.0,
        migrate_on_open: bool = True,
    ) -> None:
        problems = []
        if not 0 <= min_pool <= max_pool or max_pool < 1:
            problems.append(
                (
                    "store.max_pool",
                    f"need 0 <= min_pool <= max_pool, >= 1; got {min_pool}, {max_pool}",
                )
            )
        if command_timeout_s <= 0:
            problems.append(("store.command_timeout_s", "must be > 0"))
        if connect_timeout_s <= 0:
            problems.append(("store.connect_timeout_s", "must be > 0"))
        if drop_schema_on_close and (schema or DEFAULT_SCHEMA) == DEFAULT_SCHEMA:
            problems.append(("store.schema", "refusing to drop the public schema on close"))
        if problems:
            raise ConfigError("invalid postgres store options", problems)
        self._url = url
        self._schema = schema or DEFAULT_SCHEMA
        self._sql = _Queries(self._schema)
        self._drop_schema_on_close = drop_schema_on_close
        self._min_pool = min_pool
        self._max_pool = max_pool
        self._command_timeout = command_timeout_s
        self._connect_timeout = connect_timeout_s
        self._migrate_on_open = migrate_on_open
        self._pool: asyncpg.Pool | None = None
        self._open_lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------
    async def open(self) -> None:
        async with self._open_lock:
            if self._pool is not None:
                return
            with postgres_errors("open"):
                pool = await self._create_pool()
            try:
                if self._migrate_on_open:
                    with postgres_errors("migrate"):
                        async with pool.acquire(timeout=self._connect_timeout) as conn:
                            await apply_migrations(conn, self._schema)
            except BaseException:
                pool.terminate()
                raise
            self._pool = pool

    async def _create_pool(self) -> asyncpg.Pool:
        with url_errors():
            return await asyncpg.create_pool(
                self._url,
                min_size=self._min_pool,
                max_size=self._max_pool,
                command_timeout=self._command_timeout,
                timeout=self._connect_timeout,  # per connection attempt
                init=_init_connection,
                reset=_keep_session,
                # Idle connections are recycled so a pool does not pin server slots forever.
                max_inactive_connection_lifetime=300.0,
            )

    async def close(self) -> None:
        async with self._open_lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            try:
                if self._drop_schema_on_close:
                    with postgres_errors("drop schema"):
                        async with pool.acquire(timeout=self._connect_timeout) as conn:
                            await conn.execute(self._sql.drop_schema)
            finally:
                try:
                    # A graceful close waits for connections in use; do not let one hang us.
                    await asyncio.wait_for(pool.close(), timeout=self._command_timeout)
                except _CLOSE_ERRORS:
                    pool.terminate()

    async def ping(self) -> None:
        async with self._connection("ping") as conn:
            await conn.fetchval("SELECT 1")

    @asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("postgres store is not open")
        with postgres_errors(what):
            # The acquire timeout bounds both waiting for a free connection and reconnecting
            # a broken one, so an outage surfaces in connect_timeout_s, not at TCP's leisure.
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                yield conn

    # -- sessions ---------------------------------------------------------------
    async def create_session(self, session: Session) -> Session:
        async with self._connection("create_session") as conn:
            try:
                await conn.execute(
                    self._sql.create_session,
                    session.tenant,
                    session.id,
                    session.agent,
                    session.user_id,
                    _json(session.state),
                    _json(session.metadata),
                    session.version,
                    session.last_seq,
                    session.created_at,
                    session.updated_at,
                    session.expires_at,
                )
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"session {session.id} already exists") from exc
        return session

    async def get_session(self, tenant: str, session_id: str) -> Session:
        async with self._connection("get_session") as conn:
            row = await conn.fetchrow(self._sql.get_session, tenant, session_id)
        if row is None:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        return _session(tenant, row)

    async def list_sessions(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        _check_limit(limit, minimum=1)
        args: list[Any] = [tenant]
        if agent is not None:
            args.append(agent)
        if user_id is not None:
            args.append(user_id)
        if cursor is not None:
            args.extend(codec.decode_cursor(cursor))
        args.append(limit + 1)  # one more tells whether there is a next page
        query = self._sql.list_sessions(agent is not None, user_id is not None, cursor is not None)
        async with self._connection("list_sessions") as conn:
            rows = await conn.fetch(query, *args)
        items = [_session(tenant, row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = codec.encode_cursor(last.created_at, last.id)
        return Page(items=items, next_cursor=next_cursor)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        async with self._connection("delete_session") as conn, conn.transaction():
            existed = await conn.fetchval(self._sql.delete_session, tenant, session_id)
            await conn.execute(self._sql.delete_children, tenant, session_id)
        return existed is not None

    async def patch_state(
        self,
        tenant: str,
        session_id: str,
        delta: dict[str, Any],
        expected_version: int | None = None,
    ) -> Session:
        merge = {k: v for k, v in delta.items() if v is not None}
        remove = [k for k, v in delta.items() if v is None]
        args: list[Any] = [tenant, session_id, _json(merge), remove, time.time()]
        query = self._sql.patch_any
        if expected_version is not None:
            query = self._sql.patch_cas
            args.append(expected_version)
        actual = None
        async with self._connection("patch_state") as conn:
            row = await conn.fetchrow(query, *args)
            if row is None:
                actual = await conn.fetchval(self._sql.get_version, tenant, session_id)
        if row is not None:
            return _session(tenant, row)
        if actual is None:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        raise VersionConflict(session_id, expected_version or 0, actual)

    # -- the event log ----------------------------------------------------------
    async def append(
        self,
        tenant: str,
        session_id: str,
        events: list[Event],
        expected_version: int,
        run: RunRecord | None = None,
    ) -> int:
        args: list[Any] = [
            tenant,
            session_id,
            expected_version,
            len(events),
            time.time(),
            [e.type for e in events],
            [e.run_id for e in events],
            [_json(e.data) for e in events],
            [e.ts for e in events],
        ]
        query = self._sql.append
        if run is not None:
            if run.tenant != tenant or run.session_id != session_id:
                raise InvalidInput(
                    f"run {run.id} belongs to {run.tenant}/{run.session_id}, "
                    f"not {tenant}/{session_id}",
                    field="run",
                )
            query = self._sql.append_with_run
            args.extend(_run_params(run))
        async with self._connection("append") as conn:
            row = await conn.fetchrow(query, *args)
            if row is not None and not row[0] and row[1] == expected_version:
                # The update waited for a racing writer, then failed its re-check; our
                # snapshot still shows the old version. Ask again for the one that won.
                actual = await conn.fetchval(self._sql.get_version, tenant, session_id)
                row = None if actual is None else (False, actual, None)
        if row is None:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        applied, version, last_seq = row
        if not applied:
            raise VersionConflict(session_id, expected_version, version)
        first = last_seq - len(events)
        for i, event in enumerate(events, 1):
            event.seq = first + i
        return int(version)

    async def read_events(
        self, tenant: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        if limit == 0:
            await self._require_session(tenant, session_id)
            return []
        async with self._connection("read_events") as conn:
            rows = await conn.fetch(self._sql.read_events, tenant, session_id, after, limit)
            if not rows:
                await self._require_session(tenant, session_id, conn)
        return [_event(row) for row in rows]

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        _check_limit(limit, minimum=0)
        if limit == 0:
            await self._require_session(tenant, session_id)
            return []
        async with self._connection("tail_events") as conn:
            rows = await conn.fetch(self._sql.tail_events, tenant, session_id, limit)
            if not rows:
                await self._require_session(tenant, session_id, conn)
        return [_event(row) for row in reversed(rows)]

    async def _require_session(
        self, tenant: str, session_id: str, conn: asyncpg.Connection | None = None
    ) -> None:
        """Raise `SessionNotFound` unless the session exists.

        Reads call it only when they found nothing: an unknown session is a 404, an empty
        log is not, and the common case stays one round trip.
        """
        if conn is None:
            async with self._connection("session_exists") as conn:
                found = await conn.fetchval(self._sql.session_exists, tenant, session_id)
        else:
            found = await conn.fetchval(self._sql.session_exists, tenant, session_id)
        if found is None:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)

    # -- runs -------------------------------------------------------------------
    async def put_run(self, run: RunRecord) -> None:
        async with self._connection("put_run") as conn:
            done = await conn.fetchval(self._sql.put_run, run.tenant, *_run_params(run))
        if done is None:
            raise SessionNotFound(
                f"run {run.id}: session {run.session_id} not found", session_id=run.session_id
            )

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        async with self._connection("get_run") as conn:
            row = await conn.fetchrow(self._sql.get_run, tenant, run_id)
        if row is None:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        return _run(tenant, row)

    async def list_runs(
        self,
        tenant: str,
        *,
        session_id: str | None = None,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        since, until = check_window(since, until)
        filters = (session_id, status, agent, since, until)
        args: list[Any] = [tenant, *(f for f in filters if f is not None), limit]
        query = self._sql.list_runs(*(f is not None for f in filters))
        async with self._connection("list_runs") as conn:
            rows = await conn.fetch(query, *args)
        return [_run(tenant, row) for row in rows]

    async def usage_summary(
        self,
        tenant: str,
        *,
        group_by: Sequence[str] = ("agent", "model"),
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        keys = check_group_by(group_by)
        since, until = check_window(since, until)
        args: list[Any] = [tenant, *(b for b in (since, until) if b is not None)]
        args.append(MAX_USAGE_GROUPS + 1)  # one row past the cap tells there were too many
        query = self._sql.usage_summary(keys, since is not None, until is not None)
        async with self._connection("usage_summary") as conn:
            rows = await conn.fetch(query, *args)
        return totals_from_rows(keys, rows)

    # -- leases -----------------------------------------------------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        if not ttl_s > 0:
            raise InvalidInput("lease ttl_s must be positive", field="ttl_s")
        async with self._connection("acquire_lease") as conn:
            got = await conn.fetchval(self._sql.acquire_lease, tenant, session_id, owner, ttl_s)
            if got is None:
                await self._require_session(tenant, session_id, conn)
        return got is not None

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        async with self._connection("release_lease") as conn:
            await conn.execute(self._sql.release_lease, tenant, session_id, owner)

    # -- maintenance ------------------------------------------------------------
    async def expire_sessions(self, now: float) -> int:
        total = 0
        while True:
            # One short transaction per batch: a sweep of a million sessions never holds
            # locks on all of them at once.
            async with self._connection("expire_sessions") as conn, conn.transaction():
                rows = await conn.fetch(self._sql.expire_batch, now, self.expire_batch_size)
                if rows:
                    await conn.execute(
                        self._sql.expire_children, [r[0] for r in rows], [r[1] for r in rows]
                    )
            total += len(rows)
            if len(rows) < self.expire_batch_size:
                break
        async with self._connection("expire_sessions") as conn:
            await conn.execute(self._sql.expire_idempotency_keys, now)
        return total


    # -- the fleet --------------------------------------------------------------
    async def read_run_events(
        self, tenant: str, session_id: str, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        if limit == 0:
            await self._require_session(tenant, session_id)
            return []
        async with self._connection("read_run_events") as conn:
            rows = await conn.fetch(
                self._sql.read_run_events, tenant, session_id, run_id, after, limit)
            if not rows:
                await self._require_session(tenant, session_id, conn)
        return [_event(row) for row in rows]

    async def claim_run(
        self,
        tenant: str,
        run_id: str,
        owner: str,
        ttl_s: float,
        *,
        statuses: Collection[str] = CLAIMABLE_STATUSES,
    ) -> RunRecord | None:
        _check_ttl(ttl_s)
        async with self._connection("claim_run") as conn:
            row = await conn.fetchrow(
                self._sql.claim_run, tenant, run_id, owner, ttl_s, list(statuses))
            if row is None and await conn.fetchval(self._sql.run_exists, tenant, run_id) is None:
                raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        return None if row is None else _run(tenant, row)

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        _check_ttl(ttl_s)
        async with self._connection("renew_ownership") as conn:
            renewed = await conn.fetchval(
                self._sql.renew_ownership, owner, ttl_s, sorted(TERMINAL_STATUSES))
        return int(renewed)

    async def claimable_runs(
        self, *, include_interrupted: bool = False, limit: int = 100
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        async with self._connection("claimable_runs") as conn:
            rows = await conn.fetch(self._sql.claimable_runs, limit, include_interrupted)
        return [_run(row[0], row[1:]) for row in rows]

    async def claim_idempotency_key(
        self, tenant: str, scope: str, key: str, fingerprint: str, value: str, ttl_s: float
    ) -> tuple[bool, IdempotencyRecord]:
        _check_ttl(ttl_s)
        async with self._connection("claim_idempotency_key") as conn:
            for _ in range(_IDEMPOTENCY_ATTEMPTS):
                row = await conn.fetchrow(
                    self._sql.claim_idempotency_key, tenant, scope, key, fingerprint, value, ttl_s)
                if row is not None:
                    return bool(row[0]), IdempotencyRecord(
                        fingerprint=row[1], value=row[2], created_at=row[3], expires_at=row[4])
        raise StoreError(f"idempotency key {key!r}: no stable answer after "
                         f"{_IDEMPOTENCY_ATTEMPTS} attempts")

    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        async with self._connection("set_agent_state") as conn:
            await conn.execute(self._sql.set_agent_state, scope, agent, state, time.time())

    async def agent_states(self) -> dict[tuple[str, str], str]:
        async with self._connection("agent_states") as conn:
            rows = await conn.fetch(self._sql.agent_states)
        return {(row[0], row[1]): row[2] for row in rows}

# A record that expires between the insert's conflict and the select can leave a statement
# with no answer; each retry sees a newer snapshot, so two or three always settle it.
_IDEMPOTENCY_ATTEMPTS = 5


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise InvalidInput("ttl_s must be positive", field="ttl_s")


def _check_limit(limit: int, *, minimum: int, maximum: int | None = None) -> None:
    if limit < minimum:
        raise InvalidInput(f"limit must be at least {minimum}", field="limit")
    if maximum is not None and limit > maximum:
        raise InvalidInput(f"limit must be at most {maximum}", field="limit")
