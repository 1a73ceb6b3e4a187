"""Across processes, one active run per session: the store's session lease.

In one process the lanes (`lanes.py`) order a session's turns; across the instances of a
fleet the store's lease does. An instance takes a session's lease before its run starts and
releases it when the run ends. Leases (and the ownership of runs) are renewed in one batch
per instance per `lease_ttl_s / 3`, never by a write per run: when an instance dies its
leases simply expire and another instance may take the session — or take over the run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from roost.errors import RoostError, SessionBusy
from roost.sessions.records import RunRecord

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")

Key = tuple[str, str]  # (tenant, session_id)


class SessionLeases:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._held: dict[Key, int] = {}  # session → runs of this process holding its lease
        self.renewals = 0
        self.renewal_failures = 0

    @property
    def ttl(self) -> float:
        return self.runtime.settings.runtime.lease_ttl_s

    async def try_take(self, tenant: str, session_id: str) -> bool:
        """Take the session's lease if it is free (or ours); False when another holds it."""
        key = (tenant, session_id)
        if key in self._held:
            self._held[key] += 1
            return True
        rt = self.runtime
        if not await rt.store.acquire_lease(tenant, session_id, rt.instance_id, self.ttl):
            return False
        self._held[key] = self._held.get(key, 0) + 1
        return True

    async def take(self, run: RunRecord, *, policy: str) -> None:
        """Hold the run's session: `reject` tries once (`SessionBusy`); the other policies
        wait their turn, polling with backoff (bounded by the caller's deadline)."""
        delay = 0.01
        while not await self.try_take(run.tenant, run.session_id):
            if policy == "reject":
                raise SessionBusy("the session has an active run on another instance",
                                  session_id=run.session_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def release(self, tenant: str, session_id: str) -> None:
        key = (tenant, session_id)
        count = self._held.get(key, 0) - 1
        if count > 0:
            self._held[key] = count
            return
        self._held.pop(key, None)
        rt = self.runtime
        try:
            await rt.store.release_lease(tenant, session_id, rt.instance_id)
        except RoostError as exc:  # it expires by itself
            log.warning("releasing the lease of session %s failed: %s", session_id, exc)

    def held(self) -> int:
        return len(self._held)

    async def renew_forever(self) -> None:
        """Keep this instance's leases alive: one batch every ttl / 3."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self.renew()

    async def renew(self) -> None:
        """One store call for everything this instance holds: its runs and its sessions."""
        rt = self.runtime
        try:
            await rt.store.renew_ownership(rt.instance_id, self.ttl)
            self.renewals += 1
        except RoostError as exc:
            self.renewal_failures += 1
            log.warning("lease renewal failed: %s", exc)
