"""The FleetBus contract on every backend (in-process, Redis, PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roost.bus import FleetBus, LocalBus, open_bus
from roost.errors import ConfigError


async def receive(sub: Any, n: int, within: float = 5.0) -> list[bytes | None]:
    out: list[bytes | None] = []
    async with asyncio.timeout(within):
        while len(out) < n:
            out.append(await anext(sub))
    return out


async def test_publish_then_receive_in_order(pair: tuple[FleetBus, FleetBus]) -> None:
    a, b = pair
    async with b.subscribe("run:1") as sub:
        for i in range(300):
            a.publish("run:1", b"%d" % i)
        assert await receive(sub, 300) == [b"%d" % i for i in range(300)]
    stats = b.statistics()
    assert stats.delivered >= 300 and stats.subscriptions == 0
    assert a.statistics().published >= 300


async def test_binary_and_empty_payloads(pair: tuple[FleetBus, FleetBus]) -> None:
    a, b = pair
    payloads = [b"", b"\x00\xff\xfe binary", "caf\u00e9 \u2603".encode(), b'{"a": 1}']
    async with b.subscribe("c") as sub:
        for p in payloads:
            a.publish("c", p)
        assert await receive(sub, len(payloads)) == payloads


async def test_many_channels_each_gets_its_own(pair: tuple[FleetBus, FleetBus]) -> None:
    a, b = pair
    channels = [f"run:{i}" for i in range(40)]
    subs = [b.subscribe(c) for c in channels]
    for s in subs:
        await s.__aenter__()
    try:
        for c in channels:
            a.publish(c, c.encode())
        for c, s in zip(channels, subs, strict=True):
            assert await receive(s, 1) == [c.encode()]
        assert b.statistics().subscriptions == 40
    finally:
        for s in subs:
            await s.__aexit__(None, None, None)


async def test_two_subscriptions_on_one_channel(pair: tuple[FleetBus, FleetBus]) -> None:
    a, b = pair
    async with b.subscribe("c") as s1, b.subscribe("c") as s2:
        a.publish("c", b"x")
        assert await receive(s1, 1) == [b"x"]
        assert await receive(s2, 1) == [b"x"]
        async with b.subscribe("d"):
            pass  # closing another channel's only subscription leaves "c" alone
        a.publish("c", b"y")
        assert await receive(s1, 1) == [b"y"]


async def test_unsubscribed_channel_gets_nothing(pair: tuple[FleetBus, FleetBus]) -> None:
    a, b = pair
    async with b.subscribe("gone"):
        pass
    async with b.subscribe("fence") as fence:
        a.publish("gone", b"lost")
        a.publish("fence", b"f")
        assert await receive(fence, 1) == [b"f"]
        async with b.subscribe("gone") as again:
            a.publish("gone", b"new")
            # Only what was published after subscribing again.
            assert await receive(again, 1) == [b"new"]
    assert b.statistics().subscriptions == 0


async def test_close_ends_subscriptions_and_stops_tasks(pair: tuple[FleetBus, FleetBus]) -> None:
    a, b = pair
    before = asyncio.all_tasks()
    sub = b.subscribe("c")
    await sub.__aenter__()
    waiting = asyncio.create_task(anext(sub, "ended"))
    await a.close()
    await b.close()
    async with asyncio.timeout(5):
        assert await waiting == "ended"
    left = {t for t in asyncio.all_tasks() - before if t.get_name().startswith("roost-bus")}
    mine = {t for t in before if t.get_name().startswith("roost-bus") and not t.done()}
    assert not left and not mine
    a.publish("c", b"after close")  # dropped, not raised
    assert a.statistics().dropped >= 1


async def test_local_subscription_overflow_drops_oldest_and_signals_gap() -> None:
    from roost.bus.base import BusLimits

    bus = LocalBus(limits=BusLimits(subscription_buffer=4))
    async with bus.subscribe("c") as sub:
        for i in range(10):
            bus.publish("c", b"%d" % i)
        # The newest three, behind one None that says the rest were dropped.
        assert await receive(sub, 4) == [None, b"7", b"8", b"9"]
        assert bus.statistics().overflowed == 6
        bus.publish("c", b"10")
        assert await receive(sub, 1) == [b"10"]


async def test_local_consecutive_gaps_collapse() -> None:
    bus = LocalBus()
    async with bus.subscribe("c") as sub:
        sub.deliver(None)
        sub.deliver(None)
        bus.publish("c", b"x")
        assert await receive(sub, 2) == [None, b"x"]


def test_open_bus_picks_the_backend(tmp_path: Any) -> None:
    assert open_bus("memory://").backend == "local"
    assert open_bus(f"sqlite:///{tmp_path}/r.db").backend == "local"
    assert open_bus("redis://127.0.0.1:6379/0", prefix="x:", schema="ignored").backend == "redis"
    assert open_bus("postgresql://u@h/db", schema="s").backend == "postgres"
    assert open_bus("postgres://u@h/db").backend == "postgres"
    # Pub/sub ignores the database: by default the prefix carries it.
    assert open_bus("redis://127.0.0.1:6379/15")._prefix == "roost:db15:"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        open_bus("nope://x")
    with pytest.raises(ConfigError):
        open_bus("no-scheme")


async def test_a_subscribe_cancelled_midway_leaves_nothing_behind(
        network_pair: tuple[Any, Any, str]) -> None:
    _, b, _ = network_pair
    reached = asyncio.Event()

    async def stuck(channels: list[str]) -> None:  # the server takes forever to confirm
        reached.set()
        await asyncio.Event().wait()

    b._listen_on = stuck
    entering = asyncio.create_task(b.subscribe("c").__aenter__())
    async with asyncio.timeout(5):
        await reached.wait()
    entering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await entering
    assert b.statistics().subscriptions == 0
