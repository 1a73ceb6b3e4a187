"""The durable run queue and the schedules, beside the session store.

    queue = open_background_store(settings.store.url, session_store, **settings.store.options)
    await queue.enqueue(run, not_before=now())       # after put_run(run) with status queued
    claimed = await queue.claim(owner, ttl_s=10, limit=free_slots)

A queued run is a run record with status `queued` and no owner, plus an entry in the queue
(tenant, run id, not before). `claim` is the queue's one exclusive step: in one atomic
operation it removes up to `limit` due entries, in fair order, and claims their runs for
`owner` exactly as `RunStore.claim_run` does (status running, owner, a lease on the store's
clock, attempt + 1). From then on the run is an ordinary owned run: its owner renews the
lease, and if the owner dies the fleet's takeover finds it (`recovery.py`); one that died
before the run started is put back in the queue (`requeue`). Any number of instances may
claim at once; each entry goes to one of them:

- PostgreSQL: `DELETE … WHERE … IN (SELECT … FOR UPDATE SKIP LOCKED)` and the run update in
  one statement — concurrent claimers skip each other's rows instead of waiting on them;
- Redis: one Lua script (the queue is a sorted set by due time);
- SQLite: one `BEGIN IMMEDIATE` transaction; memory: synchronous code.

Fair order between tenants. Claiming oldest-first would let one tenant's burst of 10,000
runs hold back every other tenant's for as long as the burst takes, and an instance claims
only what it can start at once, so admission's fair queue never sees the others. Each entry
gets a *rank* when queued (start-time fair queuing): one past its tenant's last entry still
queued, but never below the lowest rank in the queue (the queue's virtual clock), and claims
take the due entries of lowest rank first (then oldest). Two tenants with backlogs alternate;
a tenant arriving late starts at the current clock — it neither waits behind the backlog nor
jumps ahead of what is already being served. Enqueue costs two indexed lookups more.

Schedules are per tenant; `claim_tick(schedule, tick)` is how a tick fires once across the
fleet: a put-if-absent of (schedule, tick) that also advances the schedule's `last_tick`.
Tick claims are kept `tick_retention_s` (pruned by `prune_ticks`).
"""

from __future__ import annotations

from typing import Protocol

from roost.background.records import Schedule
from roost.errors import ConfigError
from roost.sessions.records import RunRecord
from roost.sessions.store import Store


class BackgroundStore(Protocol):
    """The run queue and the schedules of one store; see the module docstring."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # -- the run queue ------------------------------------------------------------
    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        """Put the (stored, queued, unowned) run in the queue, due at `not_before`."""

    async def claim(self, owner: str, ttl_s: float, limit: int) -> list[RunRecord]:
        """Take up to `limit` due runs for `owner`, atomically (see the module docstring).
        Entries whose run is gone or no longer queued (cancelled) are dropped."""

    async def remove(self, tenant: str, run_id: str) -> bool:
        """Take a run out of the queue (it was cancelled); False when it was not there."""

    async def next_due(self) -> float | None:
        """When the earliest entry is due (epoch seconds), None when the queue is empty."""

    async def depth(self) -> int:
        """How many entries wait (due or not)."""

    # -- schedules ----------------------------------------------------------------
    async def put_schedule(self, schedule: Schedule) -> None:
        """Insert or replace."""

    async def get_schedule(self, tenant: str, schedule_id: str) -> Schedule | None: ...

    async def list_schedules(self, tenant: str | None, agent: str | None = None
                             ) -> list[Schedule]:
        """Oldest first; `tenant` None lists every tenant's (the scheduler's view)."""

    async def delete_schedule(self, tenant: str, schedule_id: str) -> bool: ...

    async def claim_tick(self, tenant: str, schedule_id: str, tick: float, run_id: str
                         ) -> bool:
        """Fire `tick` of the schedule for this caller, once across the fleet: True for the
        one caller that stored it (and set the schedule's `last_tick`/`last_run_id`)."""

    async def prune_ticks(self, before: float) -> int:
        """Forget tick claims older than `before`; returns how many."""


def open_background_store(url: str, store: Store, *, tick_retention_s: float = 86_400.0,
                          **options: object) -> BackgroundStore:
    """The background store for the session store at `url` (built, not open). The memory
    backend works on `store` itself; the others keep a connection of their own."""
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        from roost.background.stores.memory import MemoryBackground

        return MemoryBackground(store)
    if scheme == "sqlite":
        from roost.background.stores.sqlite import SQLiteBackground

        path = rest[1:] if rest.startswith("/") else rest
        if path == ":memory:":  # the store's private database: this process alone
            from roost.background.stores.memory import MemoryBackground

            return MemoryBackground(store)
        return SQLiteBackground(path or ".roost/roost.db", store)
    if scheme in ("postgres", "postgresql"):
        try:
            from roost.background.stores.postgres import PostgresBackground
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigError("the run queue on PostgreSQL needs asyncpg: "
                              "pip install 'roost[postgres]'", [("store.url", str(exc))]) from exc
        schema = options.get("schema")
        return PostgresBackground(url, store, schema=schema if isinstance(schema, str) else None)
    if scheme in ("redis", "rediss"):
        try:
            from roost.background.stores.redis import RedisBackground
        except ImportError as exc:  # pragma: no cover
            raise ConfigError("the run queue on Redis needs redis-py: pip install 'roost[redis]'",
                              [("store.url", str(exc))]) from exc
        prefix = options.get("prefix")
        return RedisBackground(url, store, prefix=prefix if isinstance(prefix, str) else "roost:",
                               tick_retention_s=tick_retention_s)
    raise ConfigError(f"no run queue for {scheme!r}", [("store.url", url)])
