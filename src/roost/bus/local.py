"""The in-process bus: for one instance (memory and SQLite stores) and for tests.

    bus = LocalBus()
    await bus.open()
    async with bus.subscribe("run:r1") as sub:
        bus.publish("run:r1", b"hello")
        assert await anext(sub) == b"hello"

`publish` hands the payload straight to the subscriptions' buffers (no outbox, no task): it
cannot block, and a slow subscription only loses its own oldest messages.
"""

from __future__ import annotations

from roost.bus.base import BusLimits, BusStatistics
from roost.bus.hub import Hub, HubSubscription
from roost.errors import ConfigError


class LocalBus:
    backend = "local"

    def __init__(self, *, limits: BusLimits | None = None) -> None:
        self.limits = limits or BusLimits()
        if problems := self.limits.problems():
            raise ConfigError("invalid bus limits", problems)
        self._hub = Hub(self.limits.subscription_buffer)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._hub.end_all()

    def publish(self, channel: str, payload: bytes) -> None:
        if self._hub.closed:
            self._hub.dropped += 1
            return
        self._hub.published += 1
        self._hub.dispatch(channel, payload)

    def subscribe(self, channel: str) -> HubSubscription:
        return self._hub.subscription(channel)

    def statistics(self) -> BusStatistics:
        return self._hub.statistics()
