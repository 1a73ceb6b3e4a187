from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.errors import ConfigError, InvalidInput, NotFound, StoreUnavailable
from roost.sessions.artifacts import (
    ArtifactNotFound,
    ArtifactRef,
    ArtifactStore,
    FileArtifactStore,
    MemoryArtifactStore,
    PostgresArtifactStore,
    RedisArtifactStore,
    artifact_store_for,
    offload_if_large,
    open_artifact_store,
    tenant_key,
)
from tests.conftest import POSTGRES_URL, REDIS_URL, require_service

BACKENDS = ["file", "memory", "postgres", "redis"]


async def make_store(kind: str, tmp_path: Path) -> ArtifactStore:
    if kind == "file":
        return FileArtifactStore(tmp_path / "artifacts")
    if kind == "memory":
        return MemoryArtifactStore()
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return PostgresArtifactStore(POSTGRES_URL, schema=f"a_{uuid.uuid4().hex[:12]}")
    if kind == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        return RedisArtifactStore(REDIS_URL, prefix=f"a{uuid.uuid4().hex[:12]}:")
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ArtifactStore]:
    s = await make_store(request.param, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await cleanup(s)
        await s.close()


async def cleanup(store: ArtifactStore) -> None:
    """Leave nothing behind on the shared servers."""
    if isinstance(store, PostgresArtifactStore) and store._pool is not None:
        await store._pool.execute(f'DROP SCHEMA IF EXISTS "{store._schema}" CASCADE')
    if isinstance(store, RedisArtifactStore) and store._client is not None:
        keys = [k async for k in store._client.scan_iter(match=f"{store._prefix}*")]
        if keys:
            await store._client.delete(*keys)


# -- the contract, on every backend ---------------------------------------------------------
async def test_round_trip(store: ArtifactStore) -> None:
    assert isinstance(store, ArtifactStore)
    data = bytes(range(256)) * 10
    ref = await store.put("t1", data, "application/octet-stream")
    assert ref == ArtifactRef(id=hashlib.sha256(data).hexdigest(), size=2560,
                              sha256=hashlib.sha256(data).hexdigest(),
                              media_type="application/octet-stream")
    assert await store.get("t1", ref.id) == data
    empty = await store.put("t1", b"", "text/plain")
    assert empty.size == 0 and await store.get("t1", empty.id) == b""


async def test_content_addressing(store: ArtifactStore) -> None:
    first = await store.put("t1", b"same bytes", "text/plain")
    second = await store.put("t1", b"same bytes", "text/plain")
    other = await store.put("t1", b"other bytes", "text/plain")
    assert first.id == second.id != other.id
    assert await store.get("t1", first.id) == b"same bytes"


async def test_tenant_isolation(store: ArtifactStore) -> None:
    ref = await store.put("acme", b"secret", "text/plain")
    for tenant in ("other", "Acme", "acme ", "../acme", "acme/.."):
        with pytest.raises(NotFound):
            await store.get(tenant, ref.id)
    # The same bytes stored by another tenant live in its own space.
    theirs = await store.put("other", b"secret", "text/plain")
    assert theirs.id == ref.id
    assert await store.delete("other", ref.id) is True
    assert await store.get("acme", ref.id) == b"secret"


async def test_unknown_and_malformed_ids_are_not_found(store: ArtifactStore) -> None:
    for bad in ("0" * 64, "../../etc/passwd", "A" * 64, "", "ab"):
        with pytest.raises(ArtifactNotFound):
            await store.get("t1", bad)
        assert await store.delete("t1", bad) is False


async def test_delete(store: ArtifactStore) -> None:
    ref = await store.put("t1", b"doomed", "text/plain")
    assert await store.delete("t1", ref.id) is True
    assert await store.delete("t1", ref.id) is False
    with pytest.raises(ArtifactNotFound):
        await store.get("t1", ref.id)


async def test_large_payload(store: ArtifactStore) -> None:
    data = os.urandom(5 * 1024 * 1024)
    ref = await store.put("t1", data, "application/octet-stream")
    assert ref.size == len(data) and ref.id == hashlib.sha256(data).hexdigest()
    assert await store.get("t1", ref.id) == data


async def test_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path, max_bytes=10)
    with pytest.raises(InvalidInput):
        await store.put("t1", b"x" * 11)
    assert (await store.put("t1", b"x" * 10)).size == 10


async def test_concurrent_puts(store: ArtifactStore) -> None:
    payloads = [f"payload {i % 5}".encode() * 1000 for i in range(20)]
    refs = await asyncio.gather(*(store.put("t1", p, "text/plain") for p in payloads))
    assert len({r.id for r in refs}) == 5
    for ref, payload in zip(refs, payloads, strict=True):
        assert await store.get("t1", ref.id) == payload


async def test_sweep_by_age(store: ArtifactStore) -> None:
    old = await store.put("t1", b"old", "text/plain")
    if store.backend == "redis":
        assert await store.sweep(time.time() + 10) == 0  # native TTL instead
        return
    assert await store.sweep(time.time() - 3600) == 0
    assert await store.sweep(time.time() + 10) == 1
    with pytest.raises(ArtifactNotFound):
        await store.get("t1", old.id)


# -- backend specifics --------------------------------------------------------------------
async def test_file_layout_and_atomic_writes(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path)
    await store.open()
    ref = await store.put("acme", b"payload", "text/plain")
    path = tmp_path / "acme" / ref.id[:2] / ref.id[2:]
    assert path.read_bytes() == b"payload"
    assert store.path("acme", ref.id) == path
    # Nothing but the artifact itself: no temporary file is left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [ref.id[2:]]


async def test_a_failed_write_leaves_no_partial_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileArtifactStore(tmp_path)
    data = b"z" * 100_000
    digest = hashlib.sha256(data).hexdigest()

    def crash(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StoreUnavailable, match="No space left"):
        await store.put("t1", data)
    shard = tmp_path / "t1" / digest[:2]
    assert list(shard.iterdir()) == []  # neither a partial artifact nor the temporary file
    with pytest.raises(ArtifactNotFound):
        await store.get("t1", digest)
    monkeypatch.undo()
    assert (await store.put("t1", data)).id == digest
    assert await store.get("t1", digest) == data


async def test_sweep_removes_stale_temporary_files(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path)
    ref = await store.put("t1", b"kept")
    leftover = tmp_path / "t1" / ref.id[:2] / ".tmp-crashed"
    leftover.write_bytes(b"partial")
    os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    assert await store.sweep(time.time() - 3600) == 0  # temporaries are not artifacts
    assert not leftover.exists() and await store.get("t1", ref.id) == b"kept"


async def test_storing_again_refreshes_the_age(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path)
    ref = await store.put("t1", b"reused")
    path = store.path("t1", ref.id)
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    await store.put("t1", b"reused")
    assert await store.sweep(time.time() - 3600) == 0
    assert await store.get("t1", ref.id) == b"reused"


async def test_an_unwritable_root_is_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = FileArtifactStore(blocker / "artifacts")  # a path under a regular file
    with pytest.raises(StoreUnavailable):
        await store.put("t1", b"x")


def test_tenant_keys_are_safe_and_distinct() -> None:
    keys = [tenant_key(t) for t in ("acme", "Acme", "..", ".", "a/b", "a%2Fb", "é", "a:b")]
    assert len(set(keys)) == len(keys)
    assert all("/" not in k and k not in (".", "..") for k in keys)
    assert tenant_key("acme") == "acme" and tenant_key("team_1-x") == "team_1-x"
    long = tenant_key("t" * 1000)
    assert len(long) == 65 and long.startswith("~")
    with pytest.raises(InvalidInput):
        tenant_key("")


async def test_memory_store_is_bounded() -> None:
    store = MemoryArtifactStore(max_total_bytes=100)
    first = await store.put("t1", b"a" * 60)
    second = await store.put("t1", b"b" * 60)
    assert store.total_bytes == 60
    with pytest.raises(ArtifactNotFound):
        await store.get("t1", first.id)
    assert await store.get("t1", second.id) == b"b" * 60


async def test_redis_ttl(tmp_path: Path) -> None:
    require_service("Redis", "127.0.0.1", 6379)
    store = RedisArtifactStore(REDIS_URL, prefix=f"a{uuid.uuid4().hex[:12]}:", ttl_s=60)
    await store.open()
    try:
        ref = await store.put("t1", b"expiring")
        assert store._client is not None
        ttl = await store._client.pttl(f"{store._prefix}t1:art:{ref.id}")
        assert 0 < ttl <= 60_000
    finally:
        await cleanup(store)
        await store.close()


async def test_unreachable_servers_are_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await PostgresArtifactStore("postgresql://postgres@127.0.0.1:1/test",
                                    connect_timeout_s=0.5).open()
    redis_store = RedisArtifactStore("redis://127.0.0.1:1/0", socket_timeout_s=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            await redis_store.open()
    finally:
        await redis_store.close()


async def test_postgres_store_on_a_shared_pool_and_concurrent_opens() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import asyncpg

    schema = f"a_{uuid.uuid4().hex[:12]}"
    pool = await asyncpg.create_pool(POSTGRES_URL, min_size=1, max_size=4)
    try:
        stores = [PostgresArtifactStore(pool=pool, schema=schema) for _ in range(3)]
        # Concurrent first opens race to create the table: the advisory lock serialises them.
        await asyncio.gather(*(s.open() for s in stores))
        ref = await stores[0].put("t1", b"shared", "text/plain")
        assert await stores[2].get("t1", ref.id) == b"shared"
        for s in stores:
            await s.close()
        assert not pool._closed  # a borrowed pool stays open
        with pytest.raises(StoreUnavailable):
            await stores[0].get("t1", ref.id)
    finally:
        await pool.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await pool.close()


def test_open_artifact_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_artifact_store(f"file://{tmp_path}"), FileArtifactStore)
    assert isinstance(open_artifact_store(str(tmp_path)), FileArtifactStore)
    assert isinstance(open_artifact_store("memory://"), MemoryArtifactStore)
    assert isinstance(open_artifact_store(POSTGRES_URL), PostgresArtifactStore)
    assert isinstance(open_artifact_store(REDIS_URL), RedisArtifactStore)
    with pytest.raises(ConfigError):
        open_artifact_store("s3://bucket")
    with pytest.raises(ConfigError):
        PostgresArtifactStore()


def test_artifact_store_for_a_session_store(tmp_path: Path) -> None:
    assert isinstance(artifact_store_for("memory://"), MemoryArtifactStore)
    files = artifact_store_for(f"sqlite:///{tmp_path}/db/roost.db")
    assert isinstance(files, FileArtifactStore) and files.root == tmp_path / "db" / "artifacts"
    assert isinstance(artifact_store_for(POSTGRES_URL), PostgresArtifactStore)
    assert isinstance(artifact_store_for(REDIS_URL), RedisArtifactStore)


# -- offloading ---------------------------------------------------------------------------
async def test_small_content_is_kept() -> None:
    store = MemoryArtifactStore()
    assert await offload_if_large("small", limit_bytes=100, store=store, tenant="t1") == \
        ("small", None)
    exactly = "x" * 100
    assert await offload_if_large(exactly, limit_bytes=100, store=store, tenant="t1") == \
        (exactly, None)
    assert store.total_bytes == 0


async def test_large_content_is_offloaded_with_a_preview(tmp_path: Path) -> None:
    store = FileArtifactStore(tmp_path)
    content = "".join(f"line {i}\n" for i in range(20_000))
    preview, ref = await offload_if_large(content, limit_bytes=1024, store=store, tenant="t1",
                                          preview_chars=50)
    size = len(content.encode())
    assert ref is not None
    assert ref == {"id": hashlib.sha256(content.encode()).hexdigest(), "size": size,
                   "sha256": hashlib.sha256(content.encode()).hexdigest(),
                   "media_type": "text/plain; charset=utf-8"}
    assert preview == content[:50] + f"… [truncated: full result is artifact {ref['id']}, {size} bytes]"
    assert (await store.get("t1", ref["id"])).decode() == content


async def test_the_limit_is_in_utf8_bytes() -> None:
    store = MemoryArtifactStore()
    content = "é" * 60  # 60 characters, 120 bytes
    preview, ref = await offload_if_large(content, limit_bytes=100, store=store, tenant="t1",
                                          preview_chars=10)
    assert ref is not None and ref["size"] == 120
    assert preview.startswith("é" * 10 + "… [truncated")
    # A lone surrogate from a tool does not fail the run.
    _, ref = await offload_if_large("\ud800" * 100, limit_bytes=10, store=store, tenant="t1")
    assert ref is not None


async def test_the_preview_never_exceeds_the_limit() -> None:
    preview, _ = await offload_if_large("x" * 1000, limit_bytes=20, store=MemoryArtifactStore(),
                                        tenant="t1", preview_chars=2000)
    assert preview.startswith("x" * 20 + "…") and not preview.startswith("x" * 21)


async def test_a_store_failure_still_bounds_the_content(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = FileArtifactStore(blocker / "artifacts")
    preview, ref = await offload_if_large("y" * 5000, limit_bytes=100, store=store, tenant="t1",
                                          preview_chars=10)
    assert ref is None
    assert preview == "y" * 10 + "… [truncated: full result is 5000 bytes; it could not be kept]"


async def test_without_a_store_the_content_is_still_cut() -> None:
    preview, ref = await offload_if_large("w" * 500, limit_bytes=100, store=None, tenant="t1",
                                          preview_chars=5)
    assert (preview, ref) == ("wwwww… [truncated: full result is 500 bytes]", None)
