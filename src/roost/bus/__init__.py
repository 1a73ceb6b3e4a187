"""The fleet bus: messages between the instances that share one store.

    bus = open_bus(settings.store_url, prefix="roost:")   # same URL as the store
    await bus.open()
    bus.publish("run:r1", encode_events([event]))          # never blocks
    async with bus.subscribe("run:r1") as sub:
        async for payload in sub: ...                      # bytes, or None: re-read the store

`memory://` and `sqlite://` get the in-process `LocalBus` (one instance); `redis://` and
`rediss://` a `RedisBus` (pub/sub); `postgresql://` and `postgres://` a `PostgresBus`
(LISTEN/NOTIFY). The network backends are imported only when asked for.

Channels. A channel is cheap on the server but costs a subscription (and, on PostgreSQL, a
LISTEN round trip) per follower, so name them by what is followed, not by what is sent:
`run:<run_id>` for a run's events (see `roost.runtime.follow.run_channel`), one
`instance:<instance_id>` per instance for commands meant for the owner of a run (cancel,
interrupt: the run record names its owner), one `fleet` channel for broadcasts (an agent
paused or resumed). The bus is a hint, never the record: write the change to the store first,
then publish; a subscriber that gets `None` re-reads the store (its runs' records, the
agents' states) instead of trusting that it heard everything.
"""

from __future__ import annotations

from typing import Any

from roost.bus.base import BusLimits, BusStatistics, FleetBus, Subscription
from roost.bus.local import LocalBus

__all__ = ["BusLimits", "BusStatistics", "FleetBus", "LocalBus", "Subscription", "open_bus"]


def open_bus(store_url: str, **options: Any) -> FleetBus:
    """Build (not yet open) the bus for the fleet sharing `store_url`.

    Options: `limits` (`BusLimits`) for every backend; `prefix` and `client_name` for Redis;
    `schema` and `application_name` for PostgreSQL. Options meant for another backend are
    ignored, so one set can be passed whatever the URL (as with the store's options).
    A missing driver raises `ImportError` naming the extra to install.
    """
    from roost.errors import ConfigError

    scheme, sep, _ = store_url.partition("://")
    if not sep:
        raise ConfigError(f"bus URL {store_url!r} has no scheme",
                          [("bus.url", "expected scheme://")])
    limits = options.get("limits")
    if scheme in ("memory", "sqlite"):
        return LocalBus(limits=limits)
    if scheme in ("redis", "rediss", "unix"):
        try:
            from roost.bus.redis import RedisBus
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the Redis bus needs redis-py: pip install 'roost[redis]'") from exc
        return RedisBus(store_url, limits=limits, **_pick(options, "prefix", "client_name"))
    if scheme in ("postgresql", "postgres"):
        try:
            from roost.bus.postgres import PostgresBus
        except ImportError as exc:  # pragma: no cover
            raise ImportError(
                "the PostgreSQL bus needs asyncpg: pip install 'roost[postgres]'") from exc
        return PostgresBus(store_url, limits=limits,
                           **_pick(options, "schema", "application_name"))
    raise ConfigError(
        f"unknown bus scheme {scheme!r}",
        [("bus.url", "use memory://, sqlite://…, postgresql://… or redis://…")],
    )


def _pick(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {name: options[name] for name in names if options.get(name) is not None}
