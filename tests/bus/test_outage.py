"""The network buses through outages: killed connections, a server away, oversize payloads."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import asyncpg
import pytest
import redis.asyncio as aioredis

from roost.bus import open_bus
from roost.bus.network import NetworkBus
from tests.bus.conftest import FAST, bus_options
from tests.bus.test_bus import receive
from tests.conftest import POSTGRES_URL, REDIS_URL
from tests.sessions.tcp_proxy import TcpProxy

PORTS = {"redis": 6379, "postgres": 5432}


async def kill_connections(kind: str, name: str) -> int:
    """Kill every server connection of the buses named `name` (what an operator, a failover
    or a network fault would do)."""
    if kind == "redis":
        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            ids = [c["id"] for c in await client.client_list() if c["name"] == f"roost-bus-{name}"]
            for client_id in ids:
                await client.client_kill_filter(_id=client_id)
            return len(ids)
        finally:
            await client.aclose()
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"roost-bus-{name}")
        return len(rows)
    finally:
        await conn.close()


def via(kind: str, url: str, port: int) -> str:
    host = "127.0.0.1"
    return url.replace(f"{host}:{PORTS[kind]}", f"{host}:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_reconnect_after_the_connections_are_killed(
        network_pair: tuple[NetworkBus, NetworkBus, str]) -> None:
    a, b, name = network_pair
    async with b.subscribe("run:1") as sub:
        a.publish("run:1", b"before")
        assert await receive(sub, 1) == [b"before"]
        # Both listeners and the writer that has sent (writers connect on first use).
        assert await kill_connections(a.backend, name) == 3
        # The listener reconnects, subscribes again, then says it may have missed something.
        assert await receive(sub, 1) == [None]
        a.publish("run:1", b"after")  # the writer finds its connection dead and reconnects
        assert await receive(sub, 1) == [b"after"]
    assert b.statistics().reconnects >= 1
    assert a.statistics().reconnects >= 1


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_server_away_neither_blocks_publish_nor_loses_order(kind: str, name: str) -> None:
    url, options = bus_options(kind, name)
    async with TcpProxy("127.0.0.1", PORTS[kind]) as proxy:
        a = open_bus(via(kind, url, proxy.port), **options, limits=FAST)
        b = open_bus(url, **options, limits=FAST)
        await a.open()
        await b.open()
        try:
            async with b.subscribe("c") as sub:
                a.publish("c", b"1")
                assert await receive(sub, 1) == [b"1"]
                await proxy.cut()
                a.publish("c", b"2")
                a.publish("c", b"3")
                await proxy.restore()
                # Sent again once the writer reconnected, in order. A batch whose answer
                # the cut lost is sent again too: "1" may come twice, never out of order.
                got = await receive(sub, 2)
                while got[-1] != b"3":
                    got += await receive(sub, 1)
                assert list(dict.fromkeys(got)) in ([b"2", b"3"], [b"1", b"2", b"3"])
                assert got == sorted(got)
        finally:
            await a.close()
            await b.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_subscribing_while_away_gets_none_once_back(kind: str, name: str) -> None:
    url, options = bus_options(kind, name)
    async with TcpProxy("127.0.0.1", PORTS[kind]) as proxy:
        a = open_bus(url, **options, limits=FAST)
        b = open_bus(via(kind, url, proxy.port), **options, limits=FAST)
        await a.open()
        await b.open()
        try:
            await proxy.cut()
            async with asyncio.timeout(2):
                sub = b.subscribe("c")
                await sub.__aenter__()  # returns at once: the reconnect will tell it
            try:
                await proxy.restore()
                assert await receive(sub, 1) == [None]
                a.publish("c", b"live")
                assert await receive(sub, 1) == [b"live"]
            finally:
                await sub.__aexit__(None, None, None)
        finally:
            await a.close()
            await b.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_publish_never_blocks_when_the_server_is_down(kind: str, name: str) -> None:
    url, options = bus_options(kind, name)
    limits = replace(FAST, outbox_size=100, close_timeout_s=0.2)
    bus = open_bus(via(kind, url, free_port()), **options, limits=limits)
    async with asyncio.timeout(5):
        await bus.open()  # does not fail: it keeps trying in the background
    try:
        started = time.perf_counter()
        for i in range(150):
            bus.publish("c", b"%d" % i)
        assert time.perf_counter() - started < 0.05
        stats = bus.statistics()
        assert (stats.published, stats.dropped, stats.queued) == (100, 50, 100)
    finally:
        async with asyncio.timeout(3):
            await bus.close()
    assert bus.statistics().dropped == 150


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_full_outbox_sends_a_gap_marker_once_through(kind: str, name: str) -> None:
    url, options = bus_options(kind, name)
    limits = replace(FAST, outbox_size=5)
    async with TcpProxy("127.0.0.1", PORTS[kind]) as proxy:
        a = open_bus(via(kind, url, proxy.port), **options, limits=limits)
        b = open_bus(url, **options, limits=FAST)
        await a.open()
        await b.open()
        try:
            async with b.subscribe("c") as sub:
                await proxy.cut()
                for i in range(8):
                    a.publish("c", b"%d" % i)
                await proxy.restore()
                assert await receive(sub, 6) == [b"0", b"1", b"2", b"3", b"4", None]
        finally:
            await a.close()
            await b.close()


async def test_postgres_oversize_payload_becomes_none(name: str) -> None:
    url, options = bus_options("postgres", name)
    a, b = open_bus(url, **options), open_bus(url, **options)
    await a.open()
    await b.open()
    try:
        async with b.subscribe("c") as sub:
            fits = b"x" * 7998
            a.publish("c", fits)
            a.publish("c", b"y" * 8000)  # over the limit: not sent
            a.publish("c", b"small")
            a.publish("c", b"\xff" * 7000)  # not UTF-8: base64 makes it too big
            a.publish("c", b"end")
            # (A None already waiting in the buffer absorbs the next: hence the fences.)
            assert await receive(sub, 5) == [fits, None, b"small", None, b"end"]
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("kind", ["redis", "postgres"])
async def test_a_silent_connection_is_found_by_the_health_check(kind: str, name: str) -> None:
    url, options = bus_options(kind, name)
    async with TcpProxy("127.0.0.1", PORTS[kind]) as proxy:
        a = open_bus(url, **options, limits=FAST)
        b = open_bus(via(kind, url, proxy.port), **options, limits=FAST)
        assert isinstance(b, NetworkBus)
        await a.open()
        await b.open()
        try:
            async with b.subscribe("c") as sub:
                await proxy.stall()  # a black hole: no reset, no byte
                a.publish("c", b"lost")
                # Unanswered pings (health_check_s 0.5) give the connection up.
                async with asyncio.timeout(5):
                    await b.disconnected.wait()
                await proxy.restore()
                got = await receive(sub, 1)
                while got[-1] is not None:  # ("lost" may get through when it flows again)
                    got += await receive(sub, 1)
                a.publish("c", b"back")
                assert (await receive(sub, 1))[-1] == b"back"
        finally:
            await a.close()
            await b.close()


async def test_a_batch_the_server_refuses_is_dropped_with_a_gap_not_retried(
        network_pair: tuple[NetworkBus, NetworkBus, str]) -> None:
    from redis.exceptions import ResponseError

    a, b, _ = network_pair
    refusal = (ResponseError("READONLY You can't write against a read only replica.")
               if a.backend == "redis" else asyncpg.exceptions.CharacterNotInRepertoireError(
                   "invalid byte sequence"))
    write = a._write
    refused = []

    async def refuse_once(batch: list[tuple[str, bytes | None]]) -> None:
        if not refused:
            refused.append(batch)
            raise refusal
        await write(batch)

    a._write = refuse_once  # type: ignore[method-assign]
    async with b.subscribe("c") as sub:
        a.publish("c", b"refused")
        assert await receive(sub, 1) == [None]
        a.publish("c", b"next")
        assert await receive(sub, 1) == [b"next"]
    assert refused == [[("c", b"refused")]]
    assert a.statistics().dropped == 1


async def test_redis_reloads_its_script_when_the_server_lost_it(name: str) -> None:
    url, options = bus_options("redis", name)
    a, b = open_bus(url, **options, limits=FAST), open_bus(url, **options, limits=FAST)
    await a.open()
    await b.open()
    try:
        async with b.subscribe("c") as sub:
            a.publish("c", b"1")
            assert await receive(sub, 1) == [b"1"]
            a._script = b"0" * 40  # type: ignore[attr-defined]  # as after SCRIPT FLUSH
            a.publish("c", b"2")
            assert await receive(sub, 1) == [b"2"]  # NOSCRIPT: reconnect, load, send again
        assert a.statistics().dropped == 0 and a.statistics().reconnects == 1
    finally:
        await a.close()
        await b.close()


async def test_many_channels_on_one_connection_all_come_back(
        network_pair: tuple[NetworkBus, NetworkBus, str]) -> None:
    a, b, name = network_pair
    subs = [b.subscribe(f"run:{i}") for i in range(200)]
    for sub in subs:
        await sub.__aenter__()
    try:
        assert await kill_connections(b.backend, name) == 2  # both listeners (no writer yet)
        for sub in subs:
            assert await receive(sub, 1) == [None]
        for i in range(200):
            a.publish(f"run:{i}", b"%d" % i)
        for i, sub in enumerate(subs):
            assert await receive(sub, 1) == [b"%d" % i]
    finally:
        for sub in subs:
            await sub.__aexit__(None, None, None)
