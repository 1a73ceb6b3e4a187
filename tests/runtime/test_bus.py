from __future__ import annotations

import asyncio

import pytest

from roost.runtime.bus import ChannelLagged, RunChannel
from roost.sessions import Event


async def collect(channel: RunChannel, **kwargs: object) -> list[Event | None]:
    return [e async for e in channel.follow(**kwargs)]  # type: ignore[arg-type]


async def test_readers_see_everything_in_order_then_end() -> None:
    channel = RunChannel()
    reader = asyncio.create_task(collect(channel))
    for i in range(1, 4):
        channel.publish(Event(type="message", seq=i))
        await asyncio.sleep(0)
    channel.close()
    assert [e.seq for e in await reader] == [1, 2, 3]  # type: ignore[union-attr]


async def test_late_reader_that_missed_dropped_events_must_replay_the_log() -> None:
    channel = RunChannel(max_buffer=4)
    for i in range(1, 11):
        channel.publish(Event(type="message", seq=i))
    with pytest.raises(ChannelLagged) as info:
        await collect(channel)
    assert info.value.last_seq == 0
    channel.close()
    # After replaying the log up to 6 the buffer (7..10) reaches back far enough.
    assert [e.seq for e in await collect(channel, after_seq=6)] == [7, 8, 9, 10]  # type: ignore[union-attr]
    assert [e.seq for e in await collect(channel, after_seq=8)] == [9, 10]  # type: ignore[union-attr]


async def test_reader_falling_behind_mid_stream_lags_with_its_position() -> None:
    channel = RunChannel(max_buffer=4)
    channel.publish(Event(type="message", seq=1))
    seen: list[int] = []
    with pytest.raises(ChannelLagged) as info:
        async for event in channel.follow():
            assert event is not None
            seen.append(event.seq)
            for i in range(2, 12):  # the run outpaces this reader
                channel.publish(Event(type="message", seq=i))
    assert seen == [1] and info.value.last_seq == 1


async def test_idle_heartbeat_yields_none() -> None:
    channel = RunChannel()
    items: list[Event | None] = []

    async def read() -> None:
        async for item in channel.follow(idle_s=0.02):
            items.append(item)
            if len(items) == 2:
                channel.close()

    await asyncio.wait_for(read(), 2)
    assert items == [None, None]
