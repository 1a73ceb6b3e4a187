"""follow_run: the persisted log, then the live tail -- no gap, no duplicate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from roost.bus import BusLimits, LocalBus
from roost.runtime.follow import (
    decode_events,
    encode_events,
    follow_run,
    publish_events,
    run_channel,
)
from roost.sessions.records import Event

CHANNEL = run_channel("r1")
TERMINAL = {"run.completed", "run.failed", "run.cancelled"}


def is_terminal(event: Event) -> bool:
    return event.type in TERMINAL


class FakeLog:
    """A session log plus its owner: `append` persists, then publishes (as the runtime will)."""

    def __init__(self, bus: LocalBus, page: int = 100) -> None:
        self.bus = bus
        self.events: list[Event] = []
        self.page = page
        self.reads: list[int] = []
        self.before_read: Callable[[], None] | None = None
        self.clock = 1000.0

    def event(self, type: str = "message", seq: int = 0) -> Event:
        self.clock += 1
        return Event(type=type, run_id="r1", seq=seq, ts=self.clock, data={"n": seq})

    def persist(self, type: str = "message") -> Event:
        event = self.event(type, seq=len(self.events) + 1)
        self.events.append(event)
        return event

    def append(self, type: str = "message") -> Event:
        event = self.persist(type)
        publish_events(self.bus, "r1", [event])
        return event

    def delta(self, text: str = "x") -> Event:
        event = self.event("message.delta")
        event.data = {"text": text}
        self.bus.publish(CHANNEL, encode_events([event]))
        return event

    async def read_after(self, seq: int) -> list[Event]:
        self.reads.append(seq)
        found = [e for e in self.events if e.seq > seq][: self.page]
        if self.before_read is not None:  # e.g. the owner appends while we read
            hook, self.before_read = self.before_read, None
            hook()
        return found


async def next_batch(follower: AsyncIterator[list[Event]]) -> list[Event]:
    async with asyncio.timeout(5):
        return await anext(follower)


def seqs(batch: list[Event]) -> list[int]:
    return [e.seq for e in batch]


async def test_catch_up_then_live_then_stop_at_the_terminal_event() -> None:
    bus = LocalBus()
    log = FakeLog(bus, page=2)  # the catch-up takes several reads
    for _ in range(5):
        log.persist()
    follower = follow_run(bus, CHANNEL, log.read_after, after_seq=1, is_terminal=is_terminal)
    assert seqs(await next_batch(follower)) == [2, 3, 4, 5]
    log.append()
    assert seqs(await next_batch(follower)) == [6]
    log.append("run.completed")
    log.append()  # after the end: never yielded
    assert seqs(await next_batch(follower)) == [7]
    async with asyncio.timeout(5):
        assert await anext(follower, None) is None
    assert bus.statistics().subscriptions == 0


async def test_events_persisted_between_subscribe_and_read_come_once() -> None:
    bus = LocalBus()
    log = FakeLog(bus)
    log.persist()
    log.persist()
    # The owner appends (and publishes) 3 while our first read is in flight: the read misses
    # it, the bus has it, the second read finds it too. Yielded once.
    log.before_read = lambda: log.append() and None
    follower = follow_run(bus, CHANNEL, log.read_after, is_terminal=is_terminal)
    assert seqs(await next_batch(follower)) == [1, 2, 3]
    log.append()
    assert seqs(await next_batch(follower)) == [4]  # the bus's copy of 3 was skipped
    await follower.aclose()


async def test_a_dropped_bus_message_is_refilled_from_the_log() -> None:
    bus = LocalBus()
    log = FakeLog(bus)
    follower = follow_run(bus, CHANNEL, log.read_after, is_terminal=is_terminal)
    assert await next_batch(follower) == []
    log.append()
    assert seqs(await next_batch(follower)) == [1]
    log.persist()  # 2 is persisted, its publish lost
    log.persist()  # and 3
    log.append()
    assert seqs(await next_batch(follower)) == [2, 3, 4]
    assert log.reads[-1] == 4  # read after 1, then once more to see nothing new
    await follower.aclose()


async def test_duplicate_delivery_is_yielded_once() -> None:
    bus = LocalBus()
    log = FakeLog(bus)
    follower = follow_run(bus, CHANNEL, log.read_after, is_terminal=is_terminal)
    assert await next_batch(follower) == []
    first = log.append()
    bus.publish(CHANNEL, encode_events([first]))  # sent twice (a writer's retry)
    second = log.append()
    bus.publish(CHANNEL, encode_events([first, second]))
    log.append("run.completed")
    got: list[int] = []
    async with asyncio.timeout(5):
        async for batch in follower:
            got += seqs(batch)
    assert got == [1, 2, 3]
    assert log.reads == [0]  # duplicates are no gap: the log was not read again


async def test_a_gap_signal_from_the_bus_rereads_the_log() -> None:
    bus = LocalBus(limits=BusLimits(subscription_buffer=2))
    log = FakeLog(bus)
    follower = follow_run(bus, CHANNEL, log.read_after, is_terminal=is_terminal)
    assert await next_batch(follower) == []  # caught up (nothing yet) and subscribed
    for _ in range(5):
        log.append()  # the follower's buffer overflows: None, then the newest
    assert seqs(await next_batch(follower)) == [1, 2, 3, 4, 5]
    log.append("run.failed")
    assert seqs(await next_batch(follower)) == [6]
    assert bus.statistics().overflowed > 0


async def test_heartbeats_when_idle_and_the_log_as_a_safety_net() -> None:
    bus = LocalBus()
    log = FakeLog(bus)
    follower = follow_run(bus, CHANNEL, log.read_after, idle_s=0.02, is_terminal=is_terminal)
    assert await next_batch(follower) == []  # nothing persisted yet
    assert await next_batch(follower) == []  # a heartbeat
    log.persist("run.completed")  # its publish was lost: the idle re-read finds it
    batch = await next_batch(follower)
    while not batch:
        batch = await next_batch(follower)
    assert seqs(batch) == [1]
    async with asyncio.timeout(5):
        assert await anext(follower, None) is None


async def test_deltas_pass_only_while_in_sync() -> None:
    bus = LocalBus()
    log = FakeLog(bus)
    log.persist()
    follower = follow_run(bus, CHANNEL, log.read_after, is_terminal=is_terminal)
    assert seqs(await next_batch(follower)) == [1]
    log.delta("a")
    log.delta("b")
    batch = await next_batch(follower)
    assert [e.data["text"] for e in batch] == ["a", "b"]
    # A stale delta (built before the newest persisted event we yielded) is dropped.
    stale = log.event("message.delta")
    stale.ts = 0.0
    bus.publish(CHANNEL, encode_events([stale]))
    log.append()
    assert seqs(await next_batch(follower)) == [2]
    # Deltas that arrive just before a gap is found belong after the missing events: dropped.
    log.persist()  # 3: publish lost
    log.persist()  # 4: publish lost
    pending = log.event("message.delta")
    five = log.persist()
    bus.publish(CHANNEL, encode_events([pending, five]))
    assert seqs(await next_batch(follower)) == [3, 4, 5]
    log.delta("b")
    log.append("run.completed")
    batch = await next_batch(follower)  # (what was waiting comes in one batch)
    assert [(e.type, e.seq) for e in batch] == [("message.delta", 0), ("run.completed", 6)]


def test_payload_round_trip() -> None:
    events = [Event(type="message", seq=3, data={"role": "assistant"}),
              Event(type="message.delta", data={"text": "hé"})]
    assert decode_events(encode_events(events)) == events
    single = Event(type="run.started", seq=1)
    import msgspec

    assert decode_events(msgspec.json.encode(single)) == [single]


async def test_no_gap_no_duplicate_under_random_loss_duplication_and_overflow() -> None:
    import random

    for seed in range(20):
        rng = random.Random(seed)
        bus = LocalBus(limits=BusLimits(subscription_buffer=rng.choice([2, 3, 8, 64])))
        log = FakeLog(bus, page=rng.choice([1, 3, 100]))
        for _ in range(rng.randrange(5)):
            log.persist()
        follower = follow_run(bus, CHANNEL, log.read_after, after_seq=0,
                              idle_s=0.05, is_terminal=is_terminal)
        got = seqs(await next_batch(follower))
        total = 60
        while len(log.events) < total:
            for _ in range(rng.randrange(1, 6)):  # a burst, then the follower reads
                if len(log.events) >= total:
                    break
                kind = "run.completed" if len(log.events) == total - 1 else "message"
                roll = rng.random()
                if roll < 0.15:
                    log.persist(kind)  # publish lost
                elif roll < 0.3:
                    event = log.append(kind)
                    bus.publish(CHANNEL, encode_events([event]))  # delivered twice
                else:
                    log.append(kind)
                if rng.random() < 0.2:
                    log.delta()
            if len(log.events) < total or rng.random() < 0.5:
                batch = await next_batch(follower)
                got += seqs([e for e in batch if e.seq])
        async with asyncio.timeout(5):
            async for batch in follower:
                got += seqs([e for e in batch if e.seq])
        assert got == list(range(1, total + 1)), seed
