"""The local half of every bus: subscriptions, their buffers, and the counters.

A `Hub` maps a channel to the open subscriptions on it and hands each incoming payload to
every one of them. A subscription's buffer is bounded; when a slow reader lets it fill, the
oldest payload is dropped and a `None` is put in front of what is left, so the reader learns
it missed something before it sees anything newer. Consecutive `None`s collapse into one.

`attach`/`detach` callbacks let a network backend SUBSCRIBE/LISTEN when the first
subscription of a channel opens and UNSUBSCRIBE/UNLISTEN when the last one closes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from roost.bus.base import BusStatistics


class HubSubscription:
    """A `Subscription`: an async context manager and an async iterator over one channel."""

    __slots__ = ("_buffer", "_closed", "_hub", "_max", "_waiter", "channel")

    def __init__(self, hub: Hub, channel: str, max_buffer: int) -> None:
        self.channel = channel
        self._hub = hub
        self._buffer: deque[bytes | None] = deque()
        self._max = max_buffer
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        await self._hub.attach(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.end()
        await self._hub.detach(self)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes | None:
        # Cancel-safe: a cancelled wait (a timeout around it) loses nothing from the buffer.
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._buffer.popleft()

    def take_buffered(self) -> list[bytes | None]:
        taken = list(self._buffer)
        self._buffer.clear()
        return taken

    def deliver(self, payload: bytes | None) -> bool:
        """Buffer one payload (None: a gap); False when the oldest had to be dropped."""
        if self._closed:
            return True
        buffer = self._buffer
        if payload is None and buffer and buffer[-1] is None:
            return True
        kept = True
        while len(buffer) >= self._max:
            kept = False
            if buffer[0] is None:
                del buffer[1]  # the oldest payload; the gap marker stays in front
            else:
                buffer[0] = None
        buffer.append(payload)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return kept

    def end(self) -> None:
        """No more payloads: iteration stops once the buffer is empty."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Hub:
    """Channels to subscriptions, plus the bus's counters (see `BusStatistics`)."""

    def __init__(self, max_buffer: int,
                 on_first: Callable[[str], Awaitable[None]] | None = None,
                 on_last: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.channels: dict[str, set[HubSubscription]] = {}
        self._max_buffer = max_buffer
        self._on_first = on_first
        self._on_last = on_last
        self.published = 0
        self.dropped = 0
        self.delivered = 0
        self.overflowed = 0
        self.reconnects = 0
        self.closed = False

    def subscription(self, channel: str) -> HubSubscription:
        return HubSubscription(self, channel, self._max_buffer)

    async def attach(self, sub: HubSubscription) -> None:
        if self.closed:
            raise RuntimeError("the bus is closed")
        subs = self.channels.get(sub.channel)
        if subs is None:
            subs = self.channels[sub.channel] = set()
        subs.add(sub)
        if len(subs) == 1 and self._on_first is not None:
            try:
                await self._on_first(sub.channel)
            except BaseException:  # cancelled while subscribing: __aexit__ will not run
                sub.end()
                await self.detach(sub)
                raise

    async def detach(self, sub: HubSubscription) -> None:
        subs = self.channels.get(sub.channel)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if not subs:
            del self.channels[sub.channel]
            if self._on_last is not None and not self.closed:
                await self._on_last(sub.channel)

    def dispatch(self, channel: str, payload: bytes | None) -> None:
        subs = self.channels.get(channel)
        if not subs:
            return
        for sub in subs:
            if not sub.deliver(payload):
                self.overflowed += 1
        if payload is not None:
            self.delivered += len(subs)

    def gap_all(self) -> None:
        """Tell every subscription it may have missed messages (after a reconnect)."""
        for subs in self.channels.values():
            for sub in subs:
                sub.deliver(None)

    def end_all(self) -> None:
        self.closed = True
        for subs in self.channels.values():
            for sub in subs:
                sub.end()
        self.channels.clear()

    def statistics(self, queued: int = 0) -> BusStatistics:
        return BusStatistics(
            published=self.published, dropped=self.dropped, delivered=self.delivered,
            overflowed=self.overflowed, reconnects=self.reconnects,
            subscriptions=sum(len(s) for s in self.channels.values()), queued=queued,
        )
