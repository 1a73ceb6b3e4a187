"""Key stores on every backend, and an app with auth on (API keys in its store)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from roost.auth.keys import KeyStore, MemoryKeyStore, open_key_store
from tests.conftest import POSTGRES_URL, REDIS_URL, require_service

BACKENDS = ["memory", "sqlite", "postgres", "redis"]


def store_settings(kind: str, tmp_path: Path) -> dict[str, Any]:
    """`store` settings for a fresh, isolated store of `kind`."""
    if kind == "memory":
        return {"url": "memory://"}
    if kind == "sqlite":
        return {"url": f"sqlite:///{tmp_path}/roost.db"}
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return {"url": POSTGRES_URL, "options": {"schema": f"t_{uuid.uuid4().hex[:12]}",
                                                 "drop_schema_on_close": True}}
    if kind == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        return {"url": REDIS_URL, "options": {"prefix": f"t{uuid.uuid4().hex[:12]}:",
                                              "clear_prefix_on_close": True}}
    raise AssertionError(kind)


async def drop(kind: str, settings: dict[str, Any]) -> None:
    """Remove what a key store of `kind` left behind (the session store may not be open)."""
    options = settings.get("options", {})
    if kind == "postgres":
        conn = await asyncpg.connect(POSTGRES_URL)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{options["schema"]}" CASCADE')
        finally:
            await conn.close()
    elif kind == "redis":
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            keys = [k async for k in client.scan_iter(match=f"{options['prefix']}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


@pytest.fixture(params=BACKENDS)
async def key_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    settings = store_settings(request.param, tmp_path)
    store = (MemoryKeyStore() if request.param == "memory"
             else open_key_store(settings["url"], **settings.get("options", {})))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await drop(request.param, settings)
