"""The run queue and schedules in process memory, over a `MemoryStore`'s run records."""

from __future__ import annotations

import heapq

from roost.background.records import Schedule
from roost.errors import RunNotFound
from roost.sessions.records import RunRecord, now
from roost.sessions.store import Store


class MemoryBackground:
    """Nothing here awaits between reading the queue and claiming a run: one event loop
    makes each `claim` atomic. Entries wait in `_delayed` (by due time) until due, then in
    `_ready` (by rank); `_entries` holds the live ones (a heap entry not there is stale)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._delayed: list[tuple[float, str, str]] = []  # (due, tenant, run)
        self._ready: list[tuple[float, float, str, str]] = []  # (rank, enqueued, tenant, run)
        self._entries: dict[tuple[str, str], tuple[float, float]] = {}  # → (rank, enqueued)
        self._last: dict[str, float] = {}  # each tenant's newest rank
        self._served = 0.0  # the rank of the newest claimed entry: the virtual clock
        self._schedules: dict[tuple[str, str], Schedule] = {}
        self._ticks: dict[tuple[str, str, float], float] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        self._drop_stale()
        floor = self._ready[0][0] if self._ready else self._served
        rank = max(self._last.get(run.tenant, -1.0) + 1, floor)
        self._last[run.tenant] = rank
        self._entries[(run.tenant, run.id)] = (rank, now())
        heapq.heappush(self._delayed, (not_before, run.tenant, run.id))

    async def claim(self, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
        clock = now()
        while self._delayed and self._delayed[0][0] <= clock:
            _, tenant, run_id = heapq.heappop(self._delayed)
            entry = self._entries.get((tenant, run_id))
            if entry is not None:
                heapq.heappush(self._ready, (entry[0], entry[1], tenant, run_id))
        claimed: list[RunRecord] = []
        while self._ready and len(claimed) < limit:
            rank, _, tenant, run_id = heapq.heappop(self._ready)
            if self._entries.pop((tenant, run_id), None) is None:
                continue  # removed (cancelled) while it waited
            self._served = max(self._served, rank)
            try:
                run = await self._store.claim_run(tenant, run_id, owner, ttl_s,
                                                  statuses=("queued",))
            except RunNotFound:
                continue
            if run is not None:
                claimed.append(run)
        return claimed

    async def remove(self, tenant: str, run_id: str) -> bool:
        return self._entries.pop((tenant, run_id), None) is not None

    async def next_due(self) -> float | None:
        self._drop_stale()
        if self._ready:
            return now()
        while self._delayed and (self._delayed[0][1], self._delayed[0][2]) not in self._entries:
            heapq.heappop(self._delayed)
        return self._delayed[0][0] if self._delayed else None

    async def depth(self) -> int:
        return len(self._entries)

    def _drop_stale(self) -> None:
        while self._ready and (self._ready[0][2], self._ready[0][3]) not in self._entries:
            heapq.heappop(self._ready)

    async def put_schedule(self, schedule: Schedule) -> None:
        self._schedules[(schedule.tenant, schedule.id)] = schedule

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None:
        return self._schedules.get((tenant, schedule_id))

    async def list_schedules(self, tenant: str | None, agent: str | None = None
                             ) -> list[Schedule]:
        found = [s for s in self._schedules.values()
                 if tenant in (None, s.tenant) and agent in (None, s.agent)]
        return sorted(found, key=lambda s: (s.created_at, s.id))

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool:
        return self._schedules.pop((tenant, schedule_id), None) is not None

    async def claim_tick(self, tenant: str, schedule_id: str, tick: float, run_id: str
                         ) -> bool:
        key = (tenant, schedule_id, tick)
        if key in self._ticks:
            return False
        self._ticks[key] = tick
        schedule = self._schedules.get((tenant, schedule_id))
        if schedule is not None and (schedule.last_tick or 0) < tick:
            schedule.last_tick = tick
            schedule.last_run_id = run_id
        return True

    async def prune_ticks(self, before: float) -> int:
        old = [k for k, tick in self._ticks.items() if tick < before]
        for key in old:
            del self._ticks[key]
        return len(old)
