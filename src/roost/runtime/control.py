"""Fleet-wide control: commands that must reach the instance that owns a run, and changes
every instance must apply, carried by the fleet bus (`roost.bus`).

Channels: `instance:<id>` (cancel or interrupt one run: sent to the owner its record names)
and `fleet` (agent lifecycle changes, for every instance). A command is a small JSON object;
delivery is at-least-once, so each is idempotent (cancelling an ended run does nothing).
The store stays the source of truth: after a gap on the bus (`None`: a reconnect, dropped
messages) an instance re-reads what the commands would have told it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from roost.bus.base import FleetBus

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")

FLEET = "fleet"
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def instance_channel(instance_id: str) -> str:
    return f"instance:{instance_id}"


class Control:
    def __init__(self, runtime: Runtime, bus: FleetBus) -> None:
        self.runtime = runtime
        self.bus = bus
        self.received = 0
        #: re-reads what the bus would have said, after a gap (set by the runtime)
        self.on_gap: Callable[[], Awaitable[None]] | None = None

    def cancel_remote(self, owner: str, tenant: str, run_id: str, reason: str) -> None:
        self.bus.publish(instance_channel(owner), _encode(
            {"kind": "cancel", "tenant": tenant, "run_id": run_id, "reason": reason}))

    def announce_agent_state(self, scope: str, agent: str, state: str) -> None:
        self.bus.publish(FLEET, _encode(
            {"kind": "agent_state", "scope": scope, "agent": agent, "state": state}))

    async def listen(self, channel: str) -> None:
        """Apply the commands of one channel until the runtime closes."""
        async with self.bus.subscribe(channel) as subscription:
            async for payload in subscription:
                if payload is None:
                    if self.on_gap is not None:
                        await self.on_gap()
                    continue
                try:
                    self.apply(_decode(payload))
                except (msgspec.DecodeError, KeyError, TypeError, ValueError) as exc:
                    log.warning("control: a message on %s was not understood: %s", channel, exc)

    def apply(self, command: dict[str, Any]) -> None:
        self.received += 1
        rt = self.runtime
        kind = command["kind"]
        if kind == "cancel":
            handle = rt.live_run(command["tenant"], command["run_id"])
            if handle is not None:
                handle.cancel(command.get("reason") or "user")
        elif kind == "agent_state":
            rt.apply_agent_state(command["agent"], command["state"])
        else:
            log.warning("control: unknown command %r", kind)
