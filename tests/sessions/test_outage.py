"""Outages: with the database or Redis gone, every operation fails fast with
`StoreUnavailable` (never hangs), and the store recovers by itself when it comes back.

A `TcpProxy` sits between the store and the real server; `cut()` plays a crashed server
(connections reset, new ones refused), `stall()` a network black hole (nothing answers).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from roost.errors import StoreUnavailable
from roost.sessions import Event, RunRecord, Session, Store
from roost.sessions.postgres import PostgresStore
from roost.sessions.redis import RedisStore
from tests.conftest import require_service
from tests.sessions.tcp_proxy import TcpProxy

# Short timeouts keep the suite fast; the assertions allow for a slow, shared CI machine.
TIMEOUT_S = 0.5
FAIL_FAST_S = 2.5
TENANT = "acme"

BACKENDS = ["postgres", "redis"]


def build(kind: str, port: int) -> Store:
    if kind == "postgres":
        return PostgresStore(
            f"postgresql://postgres@127.0.0.1:{port}/test",
            schema=f"t_{uuid.uuid4().hex[:12]}",
            drop_schema_on_close=True,
            max_pool=3,
            command_timeout_s=TIMEOUT_S,
            connect_timeout_s=TIMEOUT_S,
        )
    return RedisStore(
        f"redis://127.0.0.1:{port}/15",
        prefix=f"t{uuid.uuid4().hex[:12]}:",
        clear_prefix_on_close=True,
        socket_timeout_s=TIMEOUT_S,
    )


@pytest.fixture(params=BACKENDS)
async def proxied(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, TcpProxy]]:
    port = 5432 if request.param == "postgres" else 6379
    require_service(request.param, "127.0.0.1", port)
    async with TcpProxy("127.0.0.1", port) as proxy:
        store = build(request.param, proxy.port)
        await store.open()
        try:
            yield store, proxy
        finally:
            await proxy.restore()  # so close() can drop the test's schema / keys
            await store.close()


async def seed(store: Store) -> Session:
    session = await store.create_session(
        Session(id="s1", tenant=TENANT, agent="helper", state={"k": "v"})
    )
    run = RunRecord(id="r1", session_id="s1", tenant=TENANT, agent="helper", status="running")
    await store.append(TENANT, "s1", [Event(type="message", data={"text": "hi"})], 0, run=run)
    return session


def operations(store: Store) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of every kind of operation (reads, writes, scripts, transactions)."""
    return {
        "ping": store.ping,
        "get_session": lambda: store.get_session(TENANT, "s1"),
        "list_sessions": lambda: store.list_sessions(TENANT),
        "append": lambda: store.append(TENANT, "s1", [Event(type="message")], 1),
        "read_events": lambda: store.read_events(TENANT, "s1"),
        "patch_state": lambda: store.patch_state(TENANT, "s1", {"x": 1}),
        "delete_session": lambda: store.delete_session(TENANT, "nope"),
        "get_run": lambda: store.get_run(TENANT, "r1"),
        "acquire_lease": lambda: store.acquire_lease(TENANT, "s1", "me", 5.0),
        "expire_sessions": lambda: store.expire_sessions(0.0),
        "read_run_events": lambda: store.read_run_events(TENANT, "s1", "r1"),
        "claim_run": lambda: store.claim_run(TENANT, "r1", "me", 5.0),
        "renew_ownership": lambda: store.renew_ownership("me", 5.0),
        "claimable_runs": lambda: store.claimable_runs(include_interrupted=True),
        "claim_idempotency_key": lambda: store.claim_idempotency_key(
            TENANT, "submit", "k", "f", "v", 5.0),
        "set_agent_state": lambda: store.set_agent_state("*", "helper", "paused"),
        "agent_states": store.agent_states,
    }


async def assert_unavailable_fast(store: Store) -> None:
    for name, call in operations(store).items():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        elapsed = time.monotonic() - started
        assert elapsed < FAIL_FAST_S, f"{name} took {elapsed:.2f}s to fail"


async def assert_intact_and_writable(store: Store) -> None:
    session = await store.get_session(TENANT, "s1")
    assert session.state == {"k": "v"}
    assert session.version == 1
    assert [e.data for e in await store.read_events(TENANT, "s1")] == [{"text": "hi"}]
    assert (await store.get_run(TENANT, "r1")).status == "running"
    assert await store.append(TENANT, "s1", [Event(type="message")], 1) == 2


async def test_cut_fails_fast_and_recovers(proxied: tuple[Store, TcpProxy]) -> None:
    store, proxy = proxied
    await seed(store)

    await proxy.cut()
    await assert_unavailable_fast(store)

    await proxy.restore()
    # The very first call after the outage succeeds: broken connections were replaced.
    await assert_intact_and_writable(store)


async def test_stall_times_out_and_recovers(proxied: tuple[Store, TcpProxy]) -> None:
    store, proxy = proxied
    await seed(store)

    await proxy.stall()
    for call in (store.ping, lambda: store.get_session(TENANT, "s1")):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()
        assert time.monotonic() - started < FAIL_FAST_S

    await proxy.restore()
    await assert_intact_and_writable(store)


@pytest.mark.parametrize("kind", BACKENDS)
async def test_open_while_down_fails_fast_then_succeeds(kind: str) -> None:
    port = 5432 if kind == "postgres" else 6379
    require_service(kind, "127.0.0.1", port)
    async with TcpProxy("127.0.0.1", port) as proxy:
        store = build(kind, proxy.port)
        await proxy.cut()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.open()
        assert time.monotonic() - started < FAIL_FAST_S

        await proxy.restore()
        await store.open()
        try:
            await seed(store)
            assert (await store.get_session(TENANT, "s1")).version == 1
        finally:
            await store.close()


async def test_not_open_is_unavailable() -> None:
    for store in (build("postgres", 1), build("redis", 1)):
        with pytest.raises(StoreUnavailable):
            await store.get_session(TENANT, "s1")
