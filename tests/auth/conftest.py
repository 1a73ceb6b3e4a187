"""Key stores on every backend, and an app with auth on (API keys in its store)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from roost import Agent, Runtime, Settings
from roost.auth.auditlog import AuditStore, MemoryAuditStore, open_audit_store
from roost.auth.chain import Auth
from roost.auth.keys import KeyStore, MemoryKeyStore, new_key, open_key_store
from roost.server.app import create_app
from roost.testing import ScriptedModel
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


@pytest.fixture(params=BACKENDS)
async def audit_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AuditStore]:
    settings = store_settings(request.param, tmp_path)
    store = (MemoryAuditStore() if request.param == "memory"
             else open_audit_store(settings["url"], **settings.get("options", {})))
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await drop(request.param, settings)


# -- an app with auth on ---------------------------------------------------------------------
ROLES = ("admin", "operator", "user", "viewer")


@dataclass
class Secured:
    """An app with auth on, keys for every role in tenants `acme` and `globex`, and a
    client; `as_(role, tenant)` gives the headers of that key."""

    client: httpx.AsyncClient
    runtime: Runtime
    auth: Auth
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)

    def as_(self, role: str, tenant: str = "acme", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[(role, tenant)]}", **extra}

    async def add_key(self, tenant: str, role: str, *, user_id: str | None = None,
                      name: str = "test") -> str:
        key, token = new_key(tenant, role, name, user_id=user_id)  # type: ignore[arg-type]
        await self.auth.keys.add(key)
        return token


def echo_agent() -> Agent:
    return Agent(name="echo", model=ScriptedModel(["hi there"], repeat_last=True))


@contextlib.asynccontextmanager
async def secured_app(store: dict[str, Any], *, agents: list[Agent] | None = None,
                      **auth: Any) -> AsyncIterator[Secured]:
    settings = Settings.model_validate({
        "store": store, "server": {"tenant_header": "X-Tenant", "shutdown_grace_s": 0},
        "auth": {"enabled": True, **auth}})
    runtime = Runtime(settings, agents or [echo_agent()])
    gate = Auth.from_settings(settings)
    await runtime.start()
    await gate.start()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(runtime, auth=gate)),
                               base_url="http://roost")
    secured = Secured(client, runtime, gate)
    try:
        for tenant in ("acme", "globex"):
            for role in ROLES:
                secured.tokens[(role, tenant)] = await secured.add_key(tenant, role)
        yield secured
    finally:
        await client.aclose()
        await gate.close()
        await runtime.close()


@pytest.fixture
async def secured() -> AsyncIterator[Secured]:
    async with secured_app({"url": "memory://"}) as app:
        yield app
