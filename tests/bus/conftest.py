"""Buses on the real servers: two bus objects (two sets of connections, as two instances
would have) sharing one namespace that no other test uses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roost.bus import BusLimits, open_bus
from roost.bus.network import NetworkBus
from tests.conftest import POSTGRES_URL, REDIS_URL, require_service

# Fast reconnects and health checks keep the outage tests short.
FAST = BusLimits(backoff_min_s=0.02, backoff_max_s=0.2, health_check_s=0.5,
                 connect_timeout_s=2.0, close_timeout_s=1.0)


def bus_options(kind: str, name: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    """The URL and options of a bus in namespace `name`; skips (or fails on CI) when the
    server is not reachable."""
    if kind == "redis":
        require_service("Redis", "127.0.0.1", 6379)
        return REDIS_URL, {"prefix": f"t{name}:", "client_name": f"roost-bus-{name}", **extra}
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return POSTGRES_URL, {"schema": f"t{name}", "application_name": f"roost-bus-{name}",
                              **extra}
    assert kind == "local"
    return "memory://", extra


@pytest.fixture
def name() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture(params=["local", "redis", "postgres"])
async def pair(request: pytest.FixtureRequest, name: str) -> AsyncIterator[tuple[Any, Any]]:
    """(publisher's bus, subscriber's bus); the same object for the in-process bus."""
    url, options = bus_options(request.param, name, limits=FAST)
    a = open_bus(url, **options)
    b = a if request.param == "local" else open_bus(url, **options)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.fixture(params=["redis", "postgres"])
async def network_pair(request: pytest.FixtureRequest,
                       name: str) -> AsyncIterator[tuple[NetworkBus, NetworkBus, str]]:
    url, options = bus_options(request.param, name, limits=FAST)
    a, b = open_bus(url, **options), open_bus(url, **options)
    assert isinstance(a, NetworkBus) and isinstance(b, NetworkBus)
    await a.open()
    await b.open()
    try:
        yield a, b, name
    finally:
        await a.close()
        await b.close()
