"""Sessions: records, the store contracts (`SessionLog`, `RunStore`, `LeaseStore`, and
`Store`, all three), `StoreWrapper` to build wrappers on, and the backends selected by URL."""

from __future__ import annotations

from roost.sessions.records import (
    DEFAULT_TENANT,
    Event,
    IdempotencyRecord,
    Page,
    RunRecord,
    Session,
    Usage,
)
from roost.sessions.store import LeaseStore, RunStore, SessionLog, Store
from roost.sessions.wrapper import StoreWrapper

__all__ = [
    "DEFAULT_TENANT",
    "Event",
    "IdempotencyRecord",
    "LeaseStore",
    "Page",
    "RunRecord",
    "RunStore",
    "Session",
    "SessionLog",
    "Store",
    "StoreWrapper",
    "Usage",
    "open_store",
]


def open_store(url: str, **options: object) -> Store:
    """Build (not yet open) the store a URL names; see `_build` for the schemes."""
    from roost.errors import ConfigError

    try:
        return _build(url, **options)
    except TypeError as exc:  # an option the backend does not take
        raise ConfigError(f"invalid store option: {exc}",
                          [("store.options", str(exc))]) from None


def _build(url: str, **options: object) -> Store:
    """Build (not yet open) the store a URL names.

    `memory://`, `sqlite:///path/to/roost.db` (`sqlite://` alone: ./.roost/roost.db),
    `postgresql://user@host:5432/db`, `redis://host:6379/0`.
    Optional backends are imported lazily; a missing driver raises `ConfigError` that names
    the extra to install.
    """
    from roost.errors import ConfigError

    scheme, _, rest = url.partition("://")
    if not _:
        raise ConfigError(f"store URL {url!r} has no scheme", [("store.url", "expected scheme://")])
    if scheme == "memory":
        from roost.sessions.memory import MemoryStore

        return MemoryStore(**options)
    if scheme == "sqlite":
        from roost.sessions.sqlite import SQLiteStore

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteStore(path or ".roost/roost.db", **options)  # type: ignore[arg-type]
    if scheme in ("postgres", "postgresql"):
        try:
            from roost.sessions.postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError(
                "the postgres store needs asyncpg: pip install 'roost[postgres]'",
                [("store.url", str(exc))],
            ) from exc
        return PostgresStore(url, **options)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss"):
        try:
            from roost.sessions.redis import RedisStore
        except ImportError as exc:  # pragma: no cover
            raise ConfigError(
                "the redis store needs redis-py: pip install 'roost[redis]'",
                [("store.url", str(exc))],
            ) from exc
        return RedisStore(url, **options)  # type: ignore[arg-type]
    raise ConfigError(
        f"unknown store scheme {scheme!r}",
        [("store.url", "use memory://, sqlite:///path, postgresql://… or redis://…")],
    )
