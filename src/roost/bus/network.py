"""What the Redis and PostgreSQL buses share: the outbox, its writer, and the listener.

Two connections per process, each owned by one task of the bus:

- The **writer** drains the outbox: it takes what is waiting (up to `max_batch`) and sends
  it in one round trip. When the connection fails it reconnects with jittered exponential
  backoff and sends the same batch again (a message may then arrive twice; never out of order
  from this publisher). Meanwhile `publish` keeps enqueueing until the outbox is full, then
  drops, counts, and remembers the channel: once the writer gets through, it sends a *gap
  marker* on each such channel, which subscribers receive as `None`.
- The **listener** holds one connection subscribed to every channel that has a local
  subscription, multiplexed: the first subscription of a channel subscribes on the server,
  the last one to close unsubscribes. When the connection is lost (or stops answering pings)
  it reconnects with backoff, subscribes to everything again, and only then gives every
  subscription a `None`, so a reader that re-reads the store on `None` cannot miss a message
  published after that read.

Ordering constraint: `_listening` and the set of channels change only under `_lock`, so a
subscription opened while the listener reconnects is either subscribed by the reconnect
(and told `None`) or subscribes itself on the live connection -- never neither.

A backend implements the `_connect_*`, `_disconnect_*`, `_write`, `_listen_on`,
`_unlisten`, `_run_listener` hooks; it calls `self._hub.dispatch(channel, payload)` for
each message it receives (payload None for a gap marker).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque

from roost.bus.base import BusLimits, BusStatistics
from roost.bus.hub import Hub, HubSubscription
from roost.errors import ConfigError

log = logging.getLogger("roost.bus")

Batch = list[tuple[str, bytes | None]]  # (channel, payload); None: a gap marker


class NetworkBus:
    backend = "network"
    #: payloads longer than this are not sent; their channel gets a gap marker instead
    max_payload: int | None = None

    def __init__(self, limits: BusLimits | None) -> None:
        self.limits = limits = limits or BusLimits()
        if problems := limits.problems():
            raise ConfigError("invalid bus limits", problems)
        self._hub = Hub(limits.subscription_buffer, self._on_first, self._on_last)
        self._outbox: deque[tuple[str, bytes | None]] = deque()
        self._gapped: dict[str, None] = {}  # channels owed a gap marker (ordered set)
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._listening = False
        #: set while the listener is not connected and subscribed (readiness probes, tests)
        self.disconnected = asyncio.Event()
        self.disconnected.set()
        self._closing = False
        self._writer_ready = False
        self._writer_connected_once = False
        self._listener_connected_once = False
        self._first_attempt = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the FleetBus interface ---------------------------------------------------------

    async def open(self) -> None:
        """Start the writer and the listener; wait for the first connection attempt.

        A server that is away does not fail `open`: the bus keeps reconnecting in the
        background, `publish` drops once the outbox is full, and subscriptions get `None`
        when the connection comes.
        """
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._drain(), name=f"roost-bus-{self.backend}-writer"),
            asyncio.create_task(self._supervise(), name=f"roost-bus-{self.backend}-listener"),
        ]
        try:  # (the attempt is bounded by connect_timeout_s: this guards against surprises)
            async with asyncio.timeout(self.limits.connect_timeout_s * 2):
                await self._first_attempt.wait()
        except TimeoutError:
            log.warning("bus (%s): not connected yet; still trying", self.backend)

    async def close(self) -> None:
        """Flush the outbox (up to `close_timeout_s`), stop both tasks, end subscriptions."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._tasks:
            writer, listener = self._tasks
            listener.cancel()
            done, _ = await asyncio.wait({writer}, timeout=self.limits.close_timeout_s)
            if not done:
                writer.cancel()
            await asyncio.wait(self._tasks)
        await self._disconnect_writer()
        self._hub.dropped += sum(1 for _, payload in self._outbox if payload is not None)
        self._outbox.clear()
        self._hub.end_all()

    def publish(self, channel: str, payload: bytes) -> None:
        hub = self._hub
        if self._closing:
            hub.dropped += 1
            return
        if self.max_payload is not None and len(payload) > self.max_payload:
            # Too big to send: in its place (in order), a gap marker -- re-read the store.
            hub.dropped += 1
            self._enqueue_gap(channel)
        elif len(self._outbox) >= self.limits.outbox_size:
            hub.dropped += 1
            self._enqueue_gap(channel)  # (the outbox is full: sent after what it holds)
        else:
            self._outbox.append((channel, payload))
            hub.published += 1
        self._wake.set()

    def _enqueue_gap(self, channel: str) -> None:
        # The outbox's bound also bounds the set of channels owed a gap marker.
        if len(self._outbox) < self.limits.outbox_size:
            self._outbox.append((channel, None))
        elif len(self._gapped) < self.limits.outbox_size:
            self._gapped[channel] = None

    def subscribe(self, channel: str) -> HubSubscription:
        return self._hub.subscription(channel)

    def statistics(self) -> BusStatistics:
        return self._hub.statistics(queued=len(self._outbox))

    @property
    def connected(self) -> bool:
        """The listener is connected and subscribed (for readiness probes)."""
        return self._listening

    # -- the writer -----------------------------------------------------------------------

    def _take(self) -> Batch:
        outbox = self._outbox
        n = min(len(outbox), self.limits.max_batch)
        batch: Batch = [outbox.popleft() for _ in range(n)]
        if self._gapped:
            batch.extend((channel, None) for channel in self._gapped)
            self._gapped.clear()
        return batch

    async def _drain(self) -> None:
        batch: Batch = []
        delay = self.limits.backoff_min_s
        while True:
            if not batch:
                batch = self._take()
                if not batch:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    if self.limits.linger_s and not self._closing:
                        # Let a burst gather: one round trip (and one wake-up) for many
                        # messages, which is most of the CPU a message costs.
                        await asyncio.sleep(self.limits.linger_s)
                    continue
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    if not self._writer_ready:
                        await self._connect_writer()
                        self._writer_ready = True
                        if self._writer_connected_once:
                            self._hub.reconnects += 1
                        self._writer_connected_once = True
                    await self._write(batch)
                batch = []
                delay = self.limits.backoff_min_s
            except Exception as exc:  # any failure of the connection: reconnect and resend
                self._writer_ready = False
                await self._disconnect_writer()
                if not self._retryable(exc):
                    # The server refused the batch itself: sending it again would stall the
                    # outbox for good. Its channels get a gap marker instead.
                    log.error("bus writer (%s): batch refused, dropped: %s", self.backend, exc)
                    for channel, payload in batch:
                        if payload is not None:
                            self._hub.dropped += 1
                            self._enqueue_gap(channel)
                    batch = []
                    continue
                if self._closing:
                    self._hub.dropped += sum(1 for _, payload in batch if payload is not None)
                    return
                log.warning("bus writer (%s): %s; retrying in %.2fs",
                            self.backend, exc or type(exc).__name__, delay)
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.limits.backoff_max_s)

    # -- the listener ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self.limits.backoff_min_s
        while True:
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    await self._connect_listener()
                # Subscribing again may take a round trip per channel (LISTEN): the timeout
                # grows with their number, or a busy instance could never reconnect.
                channels = len(self._hub.channels)
                async with (asyncio.timeout(self.limits.connect_timeout_s * (1 + channels / 200)),
                            self._lock):
                    if self._hub.channels:
                        await self._listen_on(list(self._hub.channels))
                    self._listening = True
                    self.disconnected.clear()
                    if self._listener_connected_once:
                        self._hub.reconnects += 1
                    self._listener_connected_once = True
                    # Subscribed again, now: whatever was published while away is lost.
                    self._hub.gap_all()
                self._first_attempt.set()
                delay = self.limits.backoff_min_s
                await self._run_listener()
                log.warning("bus listener (%s): connection lost; reconnecting", self.backend)
            except Exception as exc:  # any failure of the connection: reconnect
                log.warning("bus listener (%s): %s; retrying in %.2fs",
                            self.backend, exc or type(exc).__name__, delay)
            finally:
                self._listening = False
                self.disconnected.set()
                self._first_attempt.set()
                await self._disconnect_listener()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.limits.backoff_max_s)

    async def _on_first(self, channel: str) -> None:
        async with self._lock:
            if not self._listening:
                return  # the next (re)connect subscribes it, then signals None
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    await self._listen_on([channel])
            except Exception as exc:
                # Not known to be live: force a reconnect, which will signal None to it.
                log.warning("bus listener (%s): subscribe failed: %s", self.backend, exc)
                if self._listening:  # (else the supervisor already knows, and may have
                    self._listening = False  # a new connection that must not be broken)
                    await self._abort_listener()

    async def _on_last(self, channel: str) -> None:
        async with self._lock:
            if not self._listening:
                return
            try:
                async with asyncio.timeout(self.limits.connect_timeout_s):
                    await self._unlisten(channel)
            except Exception as exc:
                log.warning("bus listener (%s): unsubscribe failed: %s", self.backend, exc)
                if self._listening:  # (else the supervisor already knows, and may have
                    self._listening = False  # a new connection that must not be broken)
                    await self._abort_listener()

    # -- backend hooks --------------------------------------------------------------------

    def _retryable(self, exc: Exception) -> bool:
        """Whether a failed write is worth sending again (a connection problem), or the
        server refused the batch itself."""
        return True

    async def _connect_writer(self) -> None:
        raise NotImplementedError

    async def _disconnect_writer(self) -> None:
        """Close the writer's connection, if any; must not raise."""
        raise NotImplementedError

    async def _write(self, batch: Batch) -> None:
        raise NotImplementedError

    async def _connect_listener(self) -> None:
        raise NotImplementedError

    async def _disconnect_listener(self) -> None:
        """Close the listener's connection, if any; must not raise."""
        raise NotImplementedError

    async def _listen_on(self, channels: list[str]) -> None:
        """Subscribe on the listener's connection; return once the server confirmed."""
        raise NotImplementedError

    async def _unlisten(self, channel: str) -> None:
        raise NotImplementedError

    async def _run_listener(self) -> None:
        """Receive and dispatch until the connection is lost or stops answering."""
        raise NotImplementedError

    async def _abort_listener(self) -> None:
        """Break the listener's connection now, so `_run_listener` returns or raises."""
        raise NotImplementedError

