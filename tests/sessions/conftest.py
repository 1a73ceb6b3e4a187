"""The `store` fixture: one open store per backend, empty, for the contract suite."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.sessions import Store, open_store
from tests.conftest import POSTGRES_URL, REDIS_URL, require_service

BACKENDS = ["memory", "sqlite", "postgres", "redis"]


async def make_store(kind: str, tmp_path: Path) -> Store:
    if kind == "memory":
        return open_store("memory://")
    if kind == "sqlite":
        return open_store(f"sqlite:///{tmp_path}/roost.db")
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        # A schema per test keeps tests independent without dropping databases.
        return open_store(POSTGRES_URL, schema=f"t_{uuid.uuid4().hex[:12]}", drop_schema_on_close=True)
    if kind == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        return open_store(REDIS_URL, prefix=f"t{uuid.uuid4().hex[:12]}:", clear_prefix_on_close=True)
    raise AssertionError(kind)


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await make_store(request.param, tmp_path)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
