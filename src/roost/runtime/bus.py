"""Per-run event channels: a run publishes, any number of readers follow, nobody blocks.

A channel keeps the newest `max_buffer` events. A reader that falls further behind than that
gets `ChannelLagged` and continues from the persisted log (every event but `message.delta`
is persisted), so a slow reader never slows a run and memory stays bounded.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from itertools import islice

from roost.sessions.records import Event


class ChannelLagged(Exception):
    """The reader fell behind the buffer; resume from the log after `last_seq`."""

    def __init__(self, last_seq: int) -> None:
        super().__init__(f"reader lagged; continue from the log after seq {last_seq}")
        self.last_seq = last_seq


class RunChannel:
    def __init__(self, max_buffer: int = 1024) -> None:
        self._events: deque[Event] = deque(maxlen=max_buffer)
        self._offset = 0  # absolute index of _events[0]
        self._waiters: list[asyncio.Future[object]] = []
        self.closed = False

    @property
    def published(self) -> int:
        return self._offset + len(self._events)

    def publish(self, event: Event) -> None:
        if self.closed:
            return
        if len(self._events) == self._events.maxlen:
            self._offset += 1
        self._events.append(event)
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def follow(self, *, after_seq: int = 0,
                     idle_s: float | None = None) -> AsyncIterator[Event | None]:
        """`batches`, one event at a time; None where a batch is empty (heartbeats)."""
        async for batch in self.batches(after_seq=after_seq, idle_s=idle_s):
            if not batch:
                yield None
            for event in batch:
                yield event

    async def batches(self, *, after_seq: int = 0,
                      idle_s: float | None = None) -> AsyncIterator[list[Event]]:
        """Yield the events from the start of the buffer, as many as are there at a time,
        until the channel closes.

        With `after_seq` (a reader catching up after reading the log), persisted events up to
        it are skipped, and so are the deltas before the first newer one (their message is in
        the log). With `idle_s`, yields [] after that long without an event (heartbeats).
        """
        position = self._offset
        last_seq = after_seq
        catching_up = after_seq > 0
        if self._offset:
            # Older events were dropped: unless the buffer still reaches back to after_seq,
            # the reader must replay the log first.
            first = next((e.seq for e in self._events if e.seq), None)
            if first is not None and first > after_seq + 1:
                raise ChannelLagged(after_seq)
        loop = asyncio.get_running_loop()
        while True:
            if position < self._offset:
                raise ChannelLagged(last_seq)
            if position < self.published:
                batch: list[Event] = []
                for event in islice(self._events, position - self._offset, None):
                    if event.seq:
                        if event.seq <= after_seq:
                            continue
                        catching_up = False
                        last_seq = event.seq
                    elif catching_up:
                        continue
                    batch.append(event)
                position = self.published
                if batch:
                    yield batch
                continue
            if self.closed:
                return
            waiter = loop.create_future()
            self._waiters.append(waiter)
            # A timer, not asyncio.wait: a stream waits like this between every two events
            # and every two heartbeats, thousands of streams at once.
            timer = None if idle_s is None else loop.call_later(idle_s, _idle, waiter)
            try:
                if await waiter is _IDLE:
                    if waiter in self._waiters:  # (a publish since the timer took it out)
                        self._waiters.remove(waiter)
                    yield []
            finally:
                if timer is not None:
                    timer.cancel()
                if not waiter.done():
                    waiter.cancel()


_IDLE = object()


def _idle(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_IDLE)
