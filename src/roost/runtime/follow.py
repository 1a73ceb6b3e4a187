"""Follow a run from any instance: the persisted log, then the live tail, no gap, no duplicate.

The run's owner appends each event to the store, then publishes it on the fleet bus (deltas,
never persisted, are only published). A follower on another instance:

1. subscribes to the run's channel FIRST, so anything published from now on is buffered;
2. reads the log after `after_seq`, again and again until a read brings nothing new (the
   owner may be appending while we read);
3. then takes live events from the bus, keeping `last`, the newest seq it has yielded:
   - seq <= last: a duplicate (already read from the log, or delivered twice): skipped;
   - seq == last + 1: yielded;
   - seq > last + 1: something was missed: the log is read after `last` (which brings this
     event too) before going on;
   - a `None` from the subscription (the bus reconnected, or dropped messages): the log is
     read after `last`.
4. `message.delta` events (seq 0) are passed through only while in sync: a delta older than
   the newest persisted event yielded (by its `ts`; deltas of message N are built before
   message N, those of N+1 after it) is stale and dropped, and so are the deltas waiting in
   a batch when a gap is found, since the events filled in belong before them.
5. After `idle_s` without a live event the log is read once more -- a safety net for a bus
   message lost without a trace, say the run's last event published while Redis was away --
   and `[]` is yielded if it brings nothing (the caller sends an SSE heartbeat).

Seqs are the session's: when another run of the session appended in between, the jump reads
the log once more (read_after filters by run) and goes on. A batch holds one bus message plus
whatever else was already buffered (a burst is one SSE write).

The first batch (the catch-up) is yielded even when empty: once the caller has it, the
follower is subscribed and caught up. It stops after yielding an event for which
`is_terminal(event)` is true, or when the bus closes.

Payload format (`encode_events` / `decode_events`): a msgspec JSON array of `Event`s, one
publish per batch the engine emits (often a single event); a bare JSON object is accepted too.

    async for batch in follow_run(bus, run_channel(run_id), read_after, after_seq=last_id,
                                  idle_s=15.0, is_terminal=lambda e: e.type in TERMINAL):
        ...  # SSE frames for `batch`, or a heartbeat comment when it is empty
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence

import msgspec

from roost.bus.base import FleetBus
from roost.sessions.records import Event

_encoder = msgspec.json.Encoder()
_decode_list = msgspec.json.Decoder(list[Event]).decode
_decode_one = msgspec.json.Decoder(Event).decode


def run_channel(run_id: str) -> str:
    """The bus channel of a run's events: `run:<id>`."""
    return f"run:{run_id}"


def encode_events(events: Sequence[Event]) -> bytes:
    """What the publisher sends: a JSON array of events (seq set for persisted ones)."""
    return _encoder.encode(events)


def publish_events(bus: FleetBus, run_id: str, events: Sequence[Event]) -> None:
    """The publisher side, after the append returned (persisted events carry their seq):
    `publish_events(bus, run.id, appended)`; deltas as they stream. Never blocks."""
    bus.publish(run_channel(run_id), _encoder.encode(events))


def decode_events(payload: bytes) -> list[Event]:
    """The events of one bus payload (a JSON array, or a single JSON object)."""
    if payload[:1] == b"{":
        return [_decode_one(payload)]
    return _decode_list(payload)


async def follow_run(
    bus: FleetBus,
    channel: str,
    read_after: Callable[[int], Awaitable[list[Event]]],
    *,
    after_seq: int = 0,
    idle_s: float | None = None,
    is_terminal: Callable[[Event], bool],
) -> AsyncGenerator[list[Event], None]:
    """Yield the run's events after `after_seq` in batches: see the module docstring.

    `read_after(seq)` returns persisted events with seq > `seq` (in any order, possibly
    limited to a page: it is called again until it returns nothing new).
    """
    follower = _Follower(read_after, after_seq, is_terminal)
    async with bus.subscribe(channel) as subscription:
        yield await follower.fill()  # even empty: subscribed and caught up from here on
        while not follower.done:
            try:
                async with asyncio.timeout(idle_s):
                    payload = await anext(subscription)
            except StopAsyncIteration:
                return  # the bus closed
            except TimeoutError:
                yield await follower.fill()
                continue
            batch = await (follower.fill() if payload is None else follower.live(payload))
            # What else is waiting goes in the same batch: one SSE write for a burst.
            for payload in subscription.take_buffered():
                if follower.done:
                    break
                if payload is None:
                    batch = [e for e in batch if e.seq]  # (deltas before a gap: see live())
                batch += await (follower.fill() if payload is None else follower.live(payload))
            if batch or follower.done:
                yield batch


class _Follower:
    """The position of one follower: the newest seq yielded, and when it was built."""

    def __init__(self, read_after: Callable[[int], Awaitable[list[Event]]], after_seq: int,
                 is_terminal: Callable[[Event], bool]) -> None:
        self._read_after = read_after
        self._is_terminal = is_terminal
        self.last = after_seq
        self.last_ts = 0.0
        self.done = False

    async def fill(self) -> list[Event]:
        """The persisted events after `last`, read until a read brings nothing new."""
        out: list[Event] = []
        while not self.done:
            events = sorted((e for e in await self._read_after(self.last) if e.seq > self.last),
                            key=lambda e: e.seq)
            if not events:
                break
            for event in events:
                if event.seq > self.last:  # (a page may repeat a seq: keep the first)
                    self._take(event, out)
                    if self.done:
                        break
        return out

    async def live(self, payload: bytes) -> list[Event]:
        out: list[Event] = []
        for event in decode_events(payload):
            if self.done:
                break
            if not event.seq:
                if event.ts >= self.last_ts:
                    out.append(event)
                    self.done = self._is_terminal(event)
            elif event.seq == self.last + 1:
                self._take(event, out)
            elif event.seq > self.last:
                # Missed one or more: what we hold of this batch's deltas belongs after them.
                out = [e for e in out if e.seq]
                out.extend(await self.fill())
        return out

    def _take(self, event: Event, out: list[Event]) -> None:
        out.append(event)
        self.last = event.seq
        self.last_ts = max(self.last_ts, event.ts)
        self.done = self._is_terminal(event)
