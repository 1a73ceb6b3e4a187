"""Versioned schema migrations for the PostgreSQL session store.

Migrations are the `NNNN_name.sql` files in `roost/sessions/migrations/`, applied in name
order. Each run takes a transaction-scoped advisory lock named after the schema, so any number
of processes may call `migrate` at start-up: one applies, the others wait and then find nothing
left to do. Applied migrations are recorded in `<schema>.roost_migrations` with a checksum; an
applied file that was edited afterwards is refused rather than silently ignored.

    >>> applied = await migrate("postgresql://postgres@127.0.0.1/roost", schema="roost")
    >>> applied
    ['0001_initial']

The migration files use unqualified names: they run with `search_path` set to the schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources

import asyncpg

from roost.errors import ConfigError, InvalidInput, StoreError, StoreUnavailable

__all__ = [
    "DEFAULT_SCHEMA",
    "Migration",
    "apply_migrations",
    "migrate",
    "migrations",
    "quote_ident",
]

DEFAULT_SCHEMA = "public"

# Driver errors that mean "the database is not reachable (right now)", as opposed to a query
# the database rejected. The pool recovers from all of them by reconnecting.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08xxx, incl. "connection was closed mid-operation"
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.TooManyConnectionsError,  # 53300
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # 25006: a failover left us on a replica
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect timeout, pool acquire timeout, command_timeout
)

# The value was refused (SQLSTATE class 22, or asyncpg could not encode an argument): the
# caller's data, not a store fault.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions._base.DataError,
)


@contextmanager
def postgres_errors(what: str) -> Iterator[None]:
    """Translate asyncpg's exceptions into Roost's tree; Roost's own errors pass through."""
    try:
        yield
    except asyncpg.exceptions.ClientConfigurationError as exc:
        # A malformed option (unknown sslmode, …): nothing to retry.
        raise ConfigError(f"postgres: {what}: {exc}", [("store.url", str(exc))]) from exc
    except DATA_ERRORS as exc:
        # Checked before UNAVAILABLE_ERRORS: asyncpg's client-side DataError is also an
        # InterfaceError. Typical cause: U+0000, which jsonb and text cannot hold.
        raise InvalidInput(f"postgres cannot store this value: {exc}") from exc
    except UNAVAILABLE_ERRORS as exc:
        raise StoreUnavailable(f"postgres: {what}: {type(exc).__name__}: {exc}") from exc
    except (asyncpg.PostgresError, asyncpg.exceptions.InternalClientError) as exc:
        raise StoreError(f"postgres: {what}: {type(exc).__name__}: {exc}") from exc


@contextmanager
def url_errors() -> Iterator[None]:
    """Report a URL asyncpg cannot parse (say, a non-numeric port) as `ConfigError`."""
    try:
        yield
    except ValueError as exc:
        if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
            raise  # some driver errors are ValueErrors too; postgres_errors handles them
        raise ConfigError(f"postgres: invalid URL: {exc}", [("store.url", str(exc))]) from exc


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (schema or table name)."""
    if not name or "\x00" in name:
        raise InvalidInput(f"invalid PostgreSQL identifier {name!r}", field="schema")
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Migration:
    name: str  # file stem, e.g. "0001_initial"
    sql: str
    checksum: str  # sha256 of the file


@cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with Roost, in the order they apply."""
    folder = resources.files("roost.sessions").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            sql = entry.read_text(encoding="utf-8")
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            found.append(Migration(entry.name.removesuffix(".sql"), sql, checksum))
    return tuple(sorted(found, key=lambda m: m.name))


async def apply_migrations(conn: asyncpg.Connection, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """Apply pending migrations to `schema` over `conn`; return the names applied.

    Everything happens in one transaction: a failed migration leaves the schema as it was.
    """
    q = quote_ident(schema)
    applied_now: list[str] = []
    async with conn.transaction():
        # Serialise concurrent migrators before touching the catalog: even
        # CREATE SCHEMA IF NOT EXISTS races into a unique violation without it.
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"roost.migrate:{schema}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {q}.roost_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = await conn.fetch(f"SELECT name, checksum FROM {q}.roost_migrations")
        done = {row["name"]: row["checksum"] for row in rows}
        # SET LOCAL ends with the transaction, so a pooled connection is not left altered.
        await conn.execute(f"SET LOCAL search_path TO {q}")
        for migration in migrations():
            if migration.name in done:
                if done[migration.name] != migration.checksum:
                    raise StoreError(
                        f"migration {migration.name} was changed after it was applied to "
                        f"schema {schema!r}; add a new migration instead of editing it"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {q}.roost_migrations (name, checksum) VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.name)
    return applied_now


async def migrate(
    url: str, *, schema: str | None = None, connect_timeout_s: float = 10.0
) -> list[str]:
    """Apply pending migrations to the database at `url`; return the names applied.

    Raises `StoreUnavailable` when the database cannot be reached and `StoreError` when a
    migration fails (nothing is applied then).
    """
    target = schema or DEFAULT_SCHEMA
    with postgres_errors("migrate"), url_errors():
        conn = await asyncpg.connect(url, timeout=connect_timeout_s)
        try:
            return await apply_migrations(conn, target)
        finally:
            await conn.close(timeout=connect_timeout_s)
