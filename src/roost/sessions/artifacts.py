"""Artifacts: large payloads kept out of the event log and the model's context.

    store = open_artifact_store("file:///var/lib/roost/artifacts")
    await store.open()
    content, ref = await offload_if_large(result, limit_bytes=64 * 1024, store=store,
                                          tenant=tenant)
    # content: a preview ending "… [truncated: full result is artifact <id>, <size> bytes]"
    # ref: {"id", "size", "sha256", "media_type"} for the event's data, or None when small

Artifacts are content-addressed per tenant: the id is the SHA-256 of the bytes, so storing the
same payload twice stores it once, and a tenant can only read ids under its own key space.
Backends: `FileArtifactStore` (default; one file per artifact, written atomically from a
worker thread), `MemoryArtifactStore` (tests, the `memory://` session store),
`PostgresArtifactStore` (a bytea table) and `RedisArtifactStore` (one key per artifact, with
an optional native TTL). Retention is by age: `sweep(before)` deletes what was last stored
before an epoch time (storing the same bytes again refreshes it); Redis uses its TTL instead.

Errors: `ArtifactNotFound` (a `NotFound`) for an unknown or malformed id or another tenant's
id, `InvalidInput` for a payload over `max_bytes`, `StoreUnavailable` when the backend cannot
be reached; a driver's exception never escapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, runtime_checkable

import msgspec

from roost.errors import (
    ArtifactNotFound,
    ConfigError,
    InvalidInput,
    RoostError,
    StoreUnavailable,
)

if TYPE_CHECKING:
    import asyncpg
    import redis.asyncio as aioredis

__all__ = [
    "ArtifactNotFound",
    "ArtifactRef",
    "ArtifactStore",
    "FileArtifactStore",
    "MemoryArtifactStore",
    "PostgresArtifactStore",
    "RedisArtifactStore",
    "offload_if_large",
    "artifact_store_for",
    "open_artifact_store",
    "tenant_key",
]

log = logging.getLogger("roost.artifacts")

_P = ParamSpec("_P")
_T = TypeVar("_T")

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_PREVIEW_CHARS = 2000
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"

_ID = re.compile(r"[0-9a-f]{64}")
# Hashing a few MiB takes milliseconds: above this size it runs in a worker thread.
_HASH_IN_THREAD_BYTES = 256 * 1024


class ArtifactRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where an artifact is: what an event records instead of the payload."""

    id: str
    size: int
    sha256: str
    media_type: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "sha256": self.sha256,
                "media_type": self.media_type}


@runtime_checkable
class ArtifactStore(Protocol):
    """Content-addressed blobs, scoped by tenant."""

    #: "file", "memory", "postgres", "redis"
    backend: str

    async def open(self) -> None:
        """Connect / create what is needed. Idempotent."""

    async def close(self) -> None: ...

    async def put(self, tenant: str, data: bytes,
                  media_type: str = "application/octet-stream") -> ArtifactRef:
        """Store `data` (idempotent: the same bytes give the same ref)."""

    async def get(self, tenant: str, artifact_id: str) -> bytes:
        """The bytes, or `ArtifactNotFound`."""

    async def delete(self, tenant: str, artifact_id: str) -> bool:
        """Delete; False when it did not exist."""

    async def sweep(self, before: float) -> int:
        """Delete artifacts last stored before `before` (epoch seconds); return how many."""


# -- helpers ------------------------------------------------------------------------------
def tenant_key(tenant: str) -> str:
    """A tenant as one safe path segment / key part: only [a-z0-9_-] pass, everything else
    (uppercase too: "Acme" and "acme" must not share a directory on a case-insensitive disk)
    is %-escaped, so no tenant can name "..", "/" or another tenant's space."""
    if not tenant:
        raise InvalidInput("tenant must not be empty", field="tenant")
    out = []
    for byte in tenant.encode("utf-8", "surrogatepass"):
        char = chr(byte)
        out.append(char if char in _SAFE else f"%{byte:02X}")
    key = "".join(out)
    if len(key) > 128:  # file names stop at 255 bytes; "~" never comes out of the escaping
        key = "~" + hashlib.sha256(tenant.encode("utf-8", "surrogatepass")).hexdigest()
    return key


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def _valid_id(artifact_id: str) -> bool:
    # Anything but a sha256 hex digest cannot exist; refusing it early also keeps a crafted
    # id ("../x") from ever reaching a path or a key.
    return isinstance(artifact_id, str) and _ID.fullmatch(artifact_id) is not None


def _check_id(artifact_id: str) -> None:
    if not _valid_id(artifact_id):
        raise ArtifactNotFound(f"no artifact {str(artifact_id)[:80]!r}", artifact_id=artifact_id)


def _check_size(data: bytes, max_bytes: int) -> None:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"artifact data must be bytes, not {type(data).__name__}", field="data")
    if len(data) > max_bytes:
        raise InvalidInput(f"artifact of {len(data)} bytes is over the {max_bytes}-byte limit",
                           field="data")


async def _digest(data: bytes) -> str:
    if len(data) > _HASH_IN_THREAD_BYTES:
        return await asyncio.to_thread(_sha256, data)
    return _sha256(data)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _ref(digest: str, data: bytes, media_type: str) -> ArtifactRef:
    return ArtifactRef(id=digest, size=len(data), sha256=digest, media_type=media_type)


# -- files --------------------------------------------------------------------------------
class FileArtifactStore:
    """One file per artifact: `root/<tenant>/<id[:2]>/<id[2:]>`.

    Every filesystem call runs in a worker thread. A write goes to a temporary file in the
    target directory, is fsynced, then renamed over the final name (`os.replace` is atomic):
    a reader sees the whole artifact or none, even across a crash. Leftover temporary files
    from a crash are removed by `sweep`.

        >>> store = FileArtifactStore("/var/lib/roost/artifacts")
    """

    backend = "file"

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 fsync: bool = True) -> None:
        if max_bytes < 1:
            raise ConfigError("artifacts.max_bytes must be >= 1", [("artifacts.max_bytes", ">= 1")])
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.fsync = fsync

    async def open(self) -> None:
        await self._io(self.root.mkdir, parents=True, exist_ok=True)

    async def close(self) -> None:
        return None

    def path(self, tenant: str, artifact_id: str) -> Path:
        _check_id(artifact_id)
        return self.root / tenant_key(tenant) / artifact_id[:2] / artifact_id[2:]

    async def put(self, tenant: str, data: bytes,
                  media_type: str = "application/octet-stream") -> ArtifactRef:
        _check_size(data, self.max_bytes)
        key = tenant_key(tenant)
        try:
            digest = await self._io(self._write, key, bytes(data))
        except ArtifactNotFound as exc:  # a directory vanished under us (a concurrent cleanup)
            raise StoreUnavailable(f"artifacts: {exc.message}; retry") from None
        return _ref(digest, data, media_type)

    def _write(self, key: str, data: bytes) -> str:
        digest = _sha256(data)
        target = self.root / key / digest[:2] / digest[2:]
        try:
            # Same bytes, same name: already stored. Touch it so `sweep` counts from now.
            os.utime(target)
            return digest
        except FileNotFoundError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return digest

    async def get(self, tenant: str, artifact_id: str) -> bytes:
        path = self.path(tenant, artifact_id)
        try:
            return await self._io(path.read_bytes)
        except ArtifactNotFound:
            raise ArtifactNotFound(f"no artifact {artifact_id}", artifact_id=artifact_id) from None

    async def delete(self, tenant: str, artifact_id: str) -> bool:
        try:
            path = self.path(tenant, artifact_id)
            await self._io(path.unlink)
        except ArtifactNotFound:
            return False
        return True

    async def sweep(self, before: float) -> int:
        return await self._io(self._sweep, before)

    def _sweep(self, before: float) -> int:
        count = 0
        for directory, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(directory, name)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_mtime < before:
                        os.unlink(path)
                        count += not name.startswith(".tmp-")
        return count

    async def _io(self, function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"no artifact at {exc.filename}") from None
        except OSError as exc:  # disk full, permissions, an unmounted volume
            raise StoreUnavailable(f"artifacts: {type(exc).__name__}: {exc}") from exc


# -- memory -------------------------------------------------------------------------------
class MemoryArtifactStore:
    """Artifacts in a dict, for tests and the `memory://` session store. Bounded: past
    `max_total_bytes` the least recently stored artifacts are dropped."""

    backend = "memory"

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_total_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.max_total_bytes = max_total_bytes
        self.total_bytes = 0
        self._items: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def put(self, tenant: str, data: bytes,
                  media_type: str = "application/octet-stream") -> ArtifactRef:
        _check_size(data, min(self.max_bytes, self.max_total_bytes))
        key = (tenant_key(tenant), await _digest(data))
        old = self._items.pop(key, None)
        if old is not None:
            self.total_bytes -= len(old[0])
        self._items[key] = (bytes(data), time.time())
        self.total_bytes += len(data)
        while self.total_bytes > self.max_total_bytes:
            _, (evicted, _) = self._items.popitem(last=False)
            self.total_bytes -= len(evicted)
        return _ref(key[1], data, media_type)

    async def get(self, tenant: str, artifact_id: str) -> bytes:
        _check_id(artifact_id)
        item = self._items.get((tenant_key(tenant), artifact_id))
        if item is None:
            raise ArtifactNotFound(f"no artifact {artifact_id}", artifact_id=artifact_id)
        return item[0]

    async def delete(self, tenant: str, artifact_id: str) -> bool:
        if not _valid_id(artifact_id):
            return False
        item = self._items.pop((tenant_key(tenant), artifact_id), None)
        if item is None:
            return False
        self.total_bytes -= len(item[0])
        return True

    async def sweep(self, before: float) -> int:
        doomed = [k for k, (_, stored) in self._items.items() if stored < before]
        for key in doomed:
            self.total_bytes -= len(self._items.pop(key)[0])
        return len(doomed)


# -- postgres -----------------------------------------------------------------------------
class PostgresArtifactStore:
    """Artifacts in a PostgreSQL table (`bytea`, TOASTed and compressed by the server).

    Give a URL (the store owns its pool) or an existing asyncpg `pool` (for instance the
    session store's; it is left open on `close`). `open()` creates the schema and table if
    missing, under an advisory lock so concurrent starts do not race.
    """

    backend = "postgres"

    def __init__(self, url: str | None = None, *, pool: asyncpg.Pool | None = None,
                 schema: str = "public", table: str = "roost_artifacts",
                 max_bytes: int = DEFAULT_MAX_BYTES, command_timeout_s: float = 10.0,
                 connect_timeout_s: float = 3.0, max_pool: int = 5) -> None:
        if (url is None) == (pool is None):
            raise ConfigError("PostgresArtifactStore needs a url or a pool (not both)",
                              [("artifacts.url", "missing")])
        from roost.sessions.migrate import quote_ident

        self._url = url
        self._pool = pool
        self._owns_pool = pool is None
        self.max_bytes = max_bytes
        self._timeout = command_timeout_s
        self._connect_timeout = connect_timeout_s
        self._max_pool = max_pool
        self._schema = schema
        t = f"{quote_ident(schema)}.{quote_ident(table)}"
        self._create = (
            f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)};"
            f" CREATE TABLE IF NOT EXISTS {t} (tenant text NOT NULL, id text NOT NULL,"
            " data bytea NOT NULL, size bigint NOT NULL, media_type text NOT NULL,"
            " stored_at float8 NOT NULL, PRIMARY KEY (tenant, id));"
            f" CREATE INDEX IF NOT EXISTS {quote_ident(table + '_stored_at')} ON {t} (stored_at)"
        )
        self._lock_key = f"roost_artifacts:{schema}.{table}"
        self._put = (
            f"INSERT INTO {t} (tenant, id, data, size, media_type, stored_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (tenant, id) DO UPDATE SET stored_at = excluded.stored_at"
        )
        self._get = f"SELECT data FROM {t} WHERE tenant = $1 AND id = $2"
        self._delete = f"DELETE FROM {t} WHERE tenant = $1 AND id = $2 RETURNING 1"
        self._sweep = f"DELETE FROM {t} WHERE stored_at < $1"
        self._open_lock = asyncio.Lock()
        self._ready = False

    async def open(self) -> None:
        from roost.sessions.migrate import postgres_errors, url_errors

        async with self._open_lock:
            if self._ready:
                return
            if self._pool is None:
                import asyncpg

                with postgres_errors("artifacts open"), url_errors():
                    self._pool = await asyncpg.create_pool(
                        self._url, min_size=1, max_size=self._max_pool,
                        command_timeout=self._timeout, timeout=self._connect_timeout)
            try:
                with postgres_errors("artifacts schema"):
                    async with self._pool.acquire(timeout=self._connect_timeout) as conn, \
                            conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                           self._lock_key)
                        await conn.execute(self._create)
            except BaseException:
                if self._owns_pool:
                    pool, self._pool = self._pool, None
                    pool.terminate()
                raise
            self._ready = True

    async def close(self) -> None:
        async with self._open_lock:
            self._ready = False
            if self._owns_pool and self._pool is not None:
                pool, self._pool = self._pool, None
                try:
                    await asyncio.wait_for(pool.close(), self._connect_timeout)
                except asyncio.CancelledError:
                    pool.terminate()
                    raise
                except Exception:  # a graceful close can fail on broken connections
                    pool.terminate()

    def _pool_or_fail(self) -> asyncpg.Pool:
        if not self._ready or self._pool is None:
            raise StoreUnavailable("the postgres artifact store is not open")
        return self._pool

    async def put(self, tenant: str, data: bytes,
                  media_type: str = "application/octet-stream") -> ArtifactRef:
        from roost.sessions.migrate import postgres_errors

        _check_size(data, self.max_bytes)
        key = tenant_key(tenant)
        digest = await _digest(data)
        with postgres_errors("artifacts put"):
            await self._pool_or_fail().execute(self._put, key, digest, bytes(data), len(data),
                                               media_type, time.time())
        return _ref(digest, data, media_type)

    async def get(self, tenant: str, artifact_id: str) -> bytes:
        from roost.sessions.migrate import postgres_errors

        _check_id(artifact_id)
        with postgres_errors("artifacts get"):
            data = await self._pool_or_fail().fetchval(self._get, tenant_key(tenant), artifact_id)
        if data is None:
            raise ArtifactNotFound(f"no artifact {artifact_id}", artifact_id=artifact_id)
        return bytes(data)

    async def delete(self, tenant: str, artifact_id: str) -> bool:
        from roost.sessions.migrate import postgres_errors

        if not _valid_id(artifact_id):
            return False
        with postgres_errors("artifacts delete"):
            row = await self._pool_or_fail().fetchval(self._delete, tenant_key(tenant),
                                                      artifact_id)
        return row is not None

    async def sweep(self, before: float) -> int:
        from roost.sessions.migrate import postgres_errors

        with postgres_errors("artifacts sweep"):
            status = await self._pool_or_fail().execute(self._sweep, before)
        return int(status.split()[-1])  # "DELETE <n>"


# -- redis --------------------------------------------------------------------------------
class RedisArtifactStore:
    """Artifacts as Redis strings: `<prefix><tenant>:art:<id>`, with an optional TTL
    (`ttl_s`, refreshed when the same bytes are stored again).

    Give a URL (the store owns its client) or an existing `redis.asyncio.Redis` client created
    with `decode_responses=False` (left open on `close`). Large values cost Redis memory:
    prefer the file or PostgreSQL store for big payloads, or set `max_bytes` and `ttl_s`.
    """

    backend = "redis"

    def __init__(self, url: str | None = None, *, client: aioredis.Redis | None = None,
                 prefix: str = "roost:", ttl_s: float | None = None,
                 max_bytes: int = 16 * 1024 * 1024, socket_timeout_s: float = 5.0) -> None:
        if (url is None) == (client is None):
            raise ConfigError("RedisArtifactStore needs a url or a client (not both)",
                              [("artifacts.url", "missing")])
        if ttl_s is not None and ttl_s <= 0:
            raise ConfigError("artifacts.ttl_s must be > 0", [("artifacts.ttl_s", "> 0")])
        self._url = url
        self._client = client
        self._owns_client = client is None
        self._prefix = prefix
        self._ttl_ms = None if ttl_s is None else max(1, round(ttl_s * 1000))
        self.max_bytes = max_bytes
        self._timeout = socket_timeout_s

    def _key(self, tenant: str, artifact_id: str) -> str:
        return f"{self._prefix}{tenant_key(tenant)}:art:{artifact_id}"

    async def open(self) -> None:
        from roost.sessions.redis import _redis_errors

        if self._client is None:
            import redis.asyncio as aioredis

            try:
                self._client = aioredis.Redis.from_url(
                    self._url or "", decode_responses=False, socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout)
            except ValueError as exc:
                raise ConfigError(f"redis: {exc}", [("artifacts.url", str(exc))]) from exc
        try:
            with _redis_errors("artifacts open"):
                await self._client.ping()
        except BaseException:
            if self._owns_client:  # a failed open leaves nothing to close
                client, self._client = self._client, None
                await client.aclose()
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()

    def _client_or_fail(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable("the redis artifact store is not open")
        return self._client

    async def put(self, tenant: str, data: bytes,
                  media_type: str = "application/octet-stream") -> ArtifactRef:
        from roost.sessions.redis import _redis_errors

        _check_size(data, self.max_bytes)
        digest = await _digest(data)
        with _redis_errors("artifacts put"):
            await self._client_or_fail().set(self._key(tenant, digest), bytes(data),
                                             px=self._ttl_ms)
        return _ref(digest, data, media_type)

    async def get(self, tenant: str, artifact_id: str) -> bytes:
        from roost.sessions.redis import _redis_errors

        _check_id(artifact_id)
        with _redis_errors("artifacts get"):
            data = await self._client_or_fail().get(self._key(tenant, artifact_id))
        if data is None:
            raise ArtifactNotFound(f"no artifact {artifact_id}", artifact_id=artifact_id)
        return data if isinstance(data, bytes) else data.encode()

    async def delete(self, tenant: str, artifact_id: str) -> bool:
        from roost.sessions.redis import _redis_errors

        if not _valid_id(artifact_id):
            return False
        with _redis_errors("artifacts delete"):
            return bool(await self._client_or_fail().delete(self._key(tenant, artifact_id)))

    async def sweep(self, before: float) -> int:
        return 0  # retention is the keys' native TTL (`ttl_s`)


# -- selection and offloading -----------------------------------------------------------------
def open_artifact_store(url: str, **options: Any) -> ArtifactStore:
    """Build (not yet open) the artifact store a URL names: `file:///abs/path` (or a plain
    path), `memory://`, `postgresql://…`, `redis://…`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return FileArtifactStore(url, **options)
    if scheme == "file":
        return FileArtifactStore(rest or ".roost/artifacts", **options)
    if scheme == "memory":
        return MemoryArtifactStore(**options)
    if scheme in ("postgres", "postgresql"):
        return PostgresArtifactStore(url, **options)
    if scheme in ("redis", "rediss", "unix"):
        return RedisArtifactStore(url, **options)
    raise ConfigError(f"unknown artifact store URL scheme {scheme!r}",
                      [("artifacts.url", "expected file://, memory://, postgresql:// or redis://")])


def artifact_store_for(store_url: str, **options: Any) -> ArtifactStore:
    """The artifact store that goes with a session store URL, when none is configured:
    `memory://` → memory; `sqlite:///dir/roost.db` → files in `dir/artifacts`; PostgreSQL and
    Redis → the same server (shared by every instance, as the sessions are)."""
    scheme, _, rest = store_url.partition("://")
    if scheme == "memory":
        return MemoryArtifactStore(**options)
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return FileArtifactStore(Path(path or ".roost/roost.db").parent / "artifacts", **options)
    return open_artifact_store(store_url, **options)


async def offload_if_large(
    content: str,
    *,
    limit_bytes: int,
    store: ArtifactStore | None,
    tenant: str,
    preview_chars: int = DEFAULT_PREVIEW_CHARS,
    media_type: str = TEXT_MEDIA_TYPE,
) -> tuple[str, dict[str, Any] | None]:
    """Keep `content` if it is at most `limit_bytes` of UTF-8; otherwise store it whole and
    return a preview for the model plus the artifact ref for the event's data.

    The preview is the first `preview_chars` characters (never more than `limit_bytes`) and
    "… [truncated: full result is artifact <id>, <size> bytes]". Without a `store`, or when
    the store fails (logged), the content is still cut to the preview and the ref is None: the
    run goes on with a bounded context either way.
    """
    # Fast path: at most 4 bytes a character, so short text needs no encoding to decide.
    if len(content) * 4 <= limit_bytes:
        return content, None
    # "replace": a lone surrogate from a tool must not fail the run.
    data = content.encode("utf-8", "replace")
    if len(data) <= limit_bytes:
        return content, None
    preview = content[:max(0, min(preview_chars, limit_bytes))]
    if store is None:
        return preview + f"… [truncated: full result is {len(data)} bytes]", None
    try:
        ref = await store.put(tenant, data, media_type)
    except RoostError as exc:
        log.warning("could not offload a %d-byte result: %s", len(data), exc)
        return preview + f"… [truncated: full result is {len(data)} bytes; it could not be kept]", None
    return preview + f"… [truncated: full result is artifact {ref.id}, {ref.size} bytes]", ref.to_dict()
