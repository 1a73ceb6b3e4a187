"""The run queue and schedules in process memory, over a `MemoryStore`'s run records."""

from __future__ import annotations

import heapq

from roost.background.records import Schedule
from roost.errors import RunNotFound
from roost.sessions.records import RunRecord, now
from roost.sessions.store import Store


class MemoryBackground:
    """Nothing here awaits between reading the queue and claiming a run: one event loop
    makes each `claim` atomic."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._heap: list[tuple[float, float, str, str]] = []  # (due, enqueued, tenant, run)
        self._queued: set[tuple[str, str]] = set()
        self._schedules: dict[tuple[str, str], Schedule] = {}
        self._ticks: dict[tuple[str, str, float], float] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        heapq.heappush(self._heap, (not_before, now(), run.tenant, run.id))
        self._queued.add((run.tenant, run.id))

    async def claim(self, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
        claimed: list[RunRecord] = []
        clock = now()
        while self._heap and len(claimed) < limit and self._heap[0][0] <= clock:
            _, _, tenant, run_id = heapq.heappop(self._heap)
            if (tenant, run_id) not in self._queued:
                continue  # removed (cancelled) while it waited
            self._queued.discard((tenant, run_id))
            try:
                run = await self._store.claim_run(tenant, run_id, owner, ttl_s,
                                                  statuses=("queued",))
            except RunNotFound:
                continue
            if run is not None:
                claimed.append(run)
        return claimed

    async def remove(self, tenant: str, run_id: str) -> bool:
        if (tenant, run_id) not in self._queued:
            return False
        self._queued.discard((tenant, run_id))
        return True

    async def next_due(self) -> float | None:
        while self._heap and (self._heap[0][2], self._heap[0][3]) not in self._queued:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    async def depth(self) -> int:
        return len(self._queued)

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
