"""The store contracts: everything the runtime needs from persistence, and nothing more.

Three contracts, each a small `Protocol`, and `Store`, a backend that keeps all three:

* `SessionLog` — sessions, their state and their append-only event log;
* `RunStore` — run records, their usage, and run ownership across a fleet (claim, renew,
  find what a dead instance left);
* `LeaseStore` — leases and claims: one active run per session, idempotency keys, and the
  lifecycle state of agents, shared by every instance.

Every tenant-scoped method is scoped by tenant: a session of tenant A is invisible to tenant B
by every method. Fleet-wide methods (`claimable_runs`, `renew_ownership`, `agent_states`)
span tenants on purpose. Backends (memory, sqlite, postgres, redis) must pass
`tests/sessions/test_contract.py`. A wrapper subclasses `roost.sessions.wrapper.StoreWrapper`
and overrides what it changes.

Errors: a backend raises `SessionNotFound`, `RunNotFound`, `VersionConflict`, or
`StoreUnavailable` when the backend cannot be reached; a driver's exception never escapes.

Clocks: leases and run ownership (`acquire_lease`, `claim_run`, `renew_ownership`,
`claimable_runs`) are decided on the store's own clock where it has one (PostgreSQL
`clock_timestamp()`, Redis `TIME`), so instances with skewed clocks agree on who owns what.
A run's owner is *live* while `lease_expires_at` is set and in the future.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from roost.sessions.records import Event, IdempotencyRecord, Page, RunRecord, Session
from roost.sessions.usage import UsageTotals

#: the most runs one `list_runs` call returns; a larger `limit` is `InvalidInput`
MAX_LIST_RUNS: Final = 1000

#: the statuses `claim_run` takes a run from unless told otherwise
CLAIMABLE_STATUSES: Final = ("queued", "running", "interrupted")


@runtime_checkable
class SessionLog(Protocol):
    """Sessions, their state, and their append-only event log."""

    #: backend name for metrics and logs: "memory", "sqlite", "postgres", "redis"
    backend: str

    async def open(self) -> None:
        """Connect, create or migrate the schema when configured. Idempotent."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Return when the backend answers; raise `StoreUnavailable` otherwise."""

    # -- sessions ---------------------------------------------------------------
    async def create_session(self, session: Session) -> Session: ...

    async def get_session(self, tenant: str, session_id: str) -> Session:
        """The session, or `SessionNotFound`."""

    async def list_sessions(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        """Newest first; `cursor` is the opaque `next_cursor` of the previous page."""

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        """Delete the session, its events and its runs; False when it did not exist."""

    async def patch_state(
        self,
        tenant: str,
        session_id: str,
        delta: dict[str, Any],
        expected_version: int | None = None,
    ) -> Session:
        """Shallow-merge `delta` into state (a None value deletes the key), bump version.

        With `expected_version`, raise `VersionConflict` unless it is the current version.
        """

    # -- the event log ----------------------------------------------------------
    async def append(
        self,
        tenant: str,
        session_id: str,
        events: list[Event],
        expected_version: int,
        run: RunRecord | None = None,
    ) -> int:
        """Append atomically if the session is at `expected_version`; return the new version.

        Assigns `seq` to each event in place (last_seq + 1, + 2, …). When `run` is given it is
        upserted in the same transaction, so a step and its run status land together.
        Raises `VersionConflict` (nothing written) when the version moved.
        """

    async def read_events(
        self, tenant: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Event]:
        """Events with seq > after, oldest first, at most `limit`."""

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        """The newest `limit` events, oldest first."""

    async def read_run_events(
        self, tenant: str, session_id: str, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        """The events of one run with seq > after, oldest first, at most `limit`.

        Indexed by run: the cost does not depend on the length of the session's log.
        Events without a run_id belong to no run. `SessionNotFound` for an unknown session.
        """

    # -- maintenance ------------------------------------------------------------
    async def expire_sessions(self, now: float) -> int:
        """Delete sessions whose expires_at <= now (with their events, runs and leases), and
        idempotency records expired by `now`; return the number of sessions deleted."""


@runtime_checkable
class RunStore(Protocol):
    """Run records, their usage, and which instance of the fleet owns each run."""

    async def put_run(self, run: RunRecord) -> None:
        """Insert or replace a run record."""

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        """The run, or `RunNotFound`."""

    async def list_runs(
        self,
        tenant: str,
        *,
        session_id: str | None = None,
        status: str | None = None,
        agent: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Newest first by (created_at, id), at most `limit` (1..`MAX_LIST_RUNS`).

        Filters combine with AND; `since`/`until` bound `created_at` to [since, until).
        A listing is for recent activity: totals over a window come from `usage_summary`,
        which sums where the runs are instead of shipping each one.
        """

    async def usage_summary(
        self,
        tenant: str,
        *,
        group_by: Sequence[str] = ("agent", "model"),
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        """The tenant's runs created in [since, until), counted and their usage summed per
        group of `group_by` (keys from `USAGE_GROUP_KEYS`), sorted by key.

        No runs, no groups. `InvalidInput` for an unknown key or more than
        `MAX_USAGE_GROUPS` groups (see `roost.sessions.usage`).
        """

    # -- ownership: every non-terminal run is owned by one live instance --------
    async def claim_run(
        self,
        tenant: str,
        run_id: str,
        owner: str,
        ttl_s: float,
        *,
        statuses: Collection[str] = CLAIMABLE_STATUSES,
    ) -> RunRecord | None:
        """Take the run for `owner`, atomically; one of any number of claimants wins.

        Succeeds only if the run's status is in `statuses` and it has no live owner (none, or
        its lease expired). Then sets owner, `lease_expires_at` = now + ttl_s, status
        "running", attempt + 1, error None, updated_at now, and returns the record.
        None when a live owner holds it (`owner` itself included: a second claim loses) or
        its status is not in `statuses`. `RunNotFound` when the tenant has no such run.
        """

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        """Extend, in one round trip, every lease `owner` holds to now + ttl_s: its
        non-terminal runs and its live session leases. Returns how many runs it renewed."""

    async def claimable_runs(
        self, *, include_interrupted: bool = False, limit: int = 100
    ) -> list[RunRecord]:
        """Runs of every tenant whose owner died: status queued or running and an expired
        `lease_expires_at`; waiting runs without an owner whose wait expired (their
        `lease_expires_at` is the wait's deadline); with `include_interrupted`, also
        interrupted runs with no live owner. Oldest lease expiry first (no lease first), at
        most `limit`. Indexed."""


@runtime_checkable
class LeaseStore(Protocol):
    """Leases and claims shared by the fleet: sessions, idempotency keys, agent states."""

    # -- one active run per session across processes -----------------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew, when `owner` holds it) the session's run lease until now + ttl_s.

        False when another owner holds an unexpired lease. An expired lease is free.
        """

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        """Release the lease if `owner` holds it."""

    # -- idempotency: one submission per client key ----------------------------
    async def claim_idempotency_key(
        self, tenant: str, scope: str, key: str, fingerprint: str, value: str, ttl_s: float
    ) -> tuple[bool, IdempotencyRecord]:
        """Store (tenant, scope, key) unless an unexpired record holds it, atomically.

        `(True, the new record)` when this call stored it, `(False, the existing record)`
        otherwise, whatever its fingerprint (the caller compares). Expired records are absent.
        """

    # -- agents: lifecycle state every instance reads ---------------------------
    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        """Store an agent's lifecycle state; `scope` is "*" (every tenant) or a tenant."""

    async def agent_states(self) -> dict[tuple[str, str], str]:
        """Every stored state, keyed by (scope, agent)."""


@runtime_checkable
class Store(SessionLog, RunStore, LeaseStore, Protocol):
    """A backend that keeps all three contracts: what the runtime is given."""
