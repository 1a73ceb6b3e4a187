"""follow_run through the real servers: the owner on one bus, the follower on another."""

from __future__ import annotations

import asyncio

from roost.bus.network import NetworkBus
from roost.runtime.follow import follow_run
from tests.bus.test_outage import kill_connections
from tests.runtime.test_follow import CHANNEL, FakeLog, is_terminal, next_batch, seqs


async def test_follow_a_run_owned_by_another_instance_through_a_reconnect(
        network_pair: tuple[NetworkBus, NetworkBus, str]) -> None:
    owner_bus, follower_bus, name = network_pair
    log = FakeLog(owner_bus)  # type: ignore[arg-type]
    log.persist()
    follower = follow_run(follower_bus, CHANNEL, log.read_after, is_terminal=is_terminal)
    assert seqs(await next_batch(follower)) == [1]
    log.append()
    assert seqs(await next_batch(follower)) == [2]
    await kill_connections(owner_bus.backend, name)
    log.persist()  # 3: appended while the bus is down (its publish is lost)
    # The follower's bus reconnects, says None, and the follower reads 3 from the log.
    assert seqs(await next_batch(follower)) == [3]
    log.append()
    log.append("run.completed")
    got: list[int] = []
    async with asyncio.timeout(5):
        async for batch in follower:
            got += seqs(batch)
    assert got == [4, 5]
