"""Per-agent bounded pools for sync tools: bounded, isolated, and abandoned threads accounted."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from roost.tools.threads import AgentThreads, ToolThreads


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll a condition for up to 5 s (the pools' state changes happen on their threads)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in 5 s")


async def test_timed_out_call_is_abandoned_then_accounted_back() -> None:
    pool = AgentThreads("a", 2)
    release = threading.Event()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pool.run(release.wait)
    stats = pool.statistics()
    assert (stats.running, stats.abandoned, stats.abandoned_total) == (1, 1, 1)
    release.set()
    await wait_for(lambda: pool.statistics().running == 0)
    stats = pool.statistics()
    assert (stats.abandoned, stats.completed, stats.abandoned_total) == (0, 1, 1)
    pool.shutdown()


async def test_pool_is_bounded_and_queued_calls_cancelled_never_run() -> None:
    pool = AgentThreads("a", 1)
    release = threading.Event()
    ran: list[str] = []
    first = asyncio.create_task(pool.run(release.wait))
    await wait_for(lambda: pool.statistics().running == 1)
    second = asyncio.create_task(pool.run(lambda: ran.append("second")))
    await wait_for(lambda: pool.statistics().queued == 1)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    assert pool.statistics().queued == 0
    release.set()
    assert await first is True
    assert await pool.run(lambda: 7) == 7
    assert ran == []
    stats = pool.statistics()
    assert (stats.running, stats.queued, stats.abandoned) == (0, 0, 0)
    pool.shutdown()


async def test_one_agents_hung_pool_does_not_block_another() -> None:
    threads = ToolThreads()
    release = threading.Event()
    hung = [asyncio.create_task(threads.run("hanger", 2, release.wait)) for _ in range(6)]
    await wait_for(lambda: threads.pool("hanger", 2).statistics().running == 2)
    assert threads.statistics()["hanger"].queued == 4
    async with asyncio.timeout(1):
        assert await threads.run("quick", 2, lambda: "ok") == "ok"
    # The loop's default executor is untouched too (DNS lookups use it).
    async with asyncio.timeout(1):
        await asyncio.get_running_loop().getaddrinfo("127.0.0.1", 80)
    release.set()
    assert all(await asyncio.gather(*hung))
    assert threads.gauges()["tool_threads_running"] == {"hanger": 0, "quick": 0}


async def test_resize_replaces_the_pool() -> None:
    threads = ToolThreads()
    assert threads.pool("a", 2) is threads.pool("a", 2)
    assert threads.pool("a", 3).size == 3
    with pytest.raises(ValueError):
        AgentThreads("b", 0)
