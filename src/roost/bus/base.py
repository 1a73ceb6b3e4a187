"""The fleet bus contract: publish without waiting, subscribe with a bounded buffer.

Several instances share one store; the bus carries what one of them does to the others:
live run events (for a client following a run through another instance) and control
messages (cancel, interrupt, lifecycle). It is a *hint* channel, never the source of truth:

- `publish` is synchronous and never blocks. It enqueues onto a bounded per-process outbox
  that one writer task drains in batches; when the outbox is full the message is dropped and
  counted, and the channel is marked so its subscribers get a gap (`None`) once the writer
  catches up.
- A `Subscription` yields `bytes`, or `None` meaning "you may have missed messages: re-read
  the source of truth". `None` comes after the bus reconnected, after its own buffer
  overflowed (the oldest messages are dropped), and when a publisher could not send (full
  outbox, a payload over the backend's size limit).
- Order is kept per channel from one publisher. Nothing is kept for a subscriber that was not
  subscribed yet: `async with bus.subscribe(ch)` returns once the subscription is live on the
  server (or, when the server is away, is guaranteed a `None` when it comes back), so
  "subscribe, then read the store" never misses a message published after the read.

    async with bus.subscribe("run:r1") as sub:
        ...                      # read the store here: later messages are in `sub`
        async for payload in sub:
            if payload is None:  # missed something: read the store again
                ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self


@dataclass(frozen=True, slots=True)
class BusStatistics:
    """Counters of one bus (per process): what metrics read."""

    published: int  # accepted by publish() into the outbox
    dropped: int  # refused by publish() (outbox full, bus closed) or failed for good
    delivered: int  # payloads handed to local subscriptions (one per subscription)
    overflowed: int  # payloads a slow subscription lost from its own buffer
    reconnects: int  # connections re-established after a loss (listener or writer)
    subscriptions: int  # open subscriptions now
    queued: int  # waiting in the outbox now


@dataclass(frozen=True, slots=True)
class BusLimits:
    """Bounds and timings of a bus; the defaults suit one instance of a busy fleet."""

    outbox_size: int = 10_000  # messages waiting for the writer before publish() drops
    max_batch: int = 512  # messages per round trip
    # An idle writer waits this long for more before sending. With events arriving one per
    # loop iteration, 2 ms halved the CPU per message (bench_bus --tick-ms 1) for +1.3 ms p50.
    linger_s: float = 0.002
    subscription_buffer: int = 1_024  # per subscription; overflow drops the oldest
    connect_timeout_s: float = 3.0  # connecting, and each command on the connections
    health_check_s: float = 5.0  # ping an idle listener this often; twice without answer: dead
    backoff_min_s: float = 0.05  # first reconnect delay, doubled up to backoff_max_s, jittered
    backoff_max_s: float = 2.0
    close_timeout_s: float = 2.0  # close() lets the writer flush the outbox this long

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if self.outbox_size < 1:
            out.append(("bus.outbox_size", "must be >= 1"))
        if self.max_batch < 1:
            out.append(("bus.max_batch", "must be >= 1"))
        if self.subscription_buffer < 2:
            out.append(("bus.subscription_buffer", "must be >= 2"))
        if self.linger_s < 0:
            out.append(("bus.linger_s", "must be >= 0"))
        if self.connect_timeout_s <= 0 or self.health_check_s <= 0:
            out.append(("bus.timeouts", "must be > 0"))
        if not 0 < self.backoff_min_s <= self.backoff_max_s:
            out.append(("bus.backoff", "need 0 < backoff_min_s <= backoff_max_s"))
        return out


class Subscription(Protocol):
    """One channel's messages as they arrive; `None` = re-read the source of truth."""

    channel: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None: ...

    def __aiter__(self) -> AsyncIterator[bytes | None]: ...

    async def __anext__(self) -> bytes | None: ...

    def take_buffered(self) -> list[bytes | None]:
        """Everything buffered now, without waiting (to batch a burst)."""
        ...


class FleetBus(Protocol):
    """Messages between the instances of a fleet; see the module docstring."""

    backend: str  # "local", "redis" or "postgres"

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def publish(self, channel: str, payload: bytes) -> None:
        """Enqueue and return at once; never raises for a full outbox or a server away."""
        ...

    def subscribe(self, channel: str) -> Subscription: ...

    def statistics(self) -> BusStatistics: ...
