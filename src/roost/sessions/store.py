"""The `Store` protocol: everything the runtime needs from persistence, and nothing more.

Every method is scoped by tenant: a session of tenant A is invisible to tenant B by every
method. Backends (memory, sqlite, postgres, redis) must pass `tests/sessions/test_contract.py`.

Errors: a backend raises `SessionNotFound`, `VersionConflict`, or `StoreUnavailable` when the
backend cannot be reached; a driver's exception never escapes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final, Protocol, runtime_checkable

from roost.sessions.records import Event, Page, RunRecord, Session
from roost.sessions.usage import UsageTotals

#: the most runs one `list_runs` call returns; a larger `limit` is `InvalidInput`
MAX_LIST_RUNS: Final = 1000

#: the statuses a run can be claimed from (to be resumed by the claimant)
CLAIMABLE_STATUSES: Final = ("queued", "running", "interrupted")


@runtime_checkable
class Store(Protocol):
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

    # -- runs -------------------------------------------------------------------
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

    # -- run ownership: who drives a non-terminal run, and taking over ----------
    async def claim_run(self, tenant: str, run_id: str, owner: str, ttl_s: float, *,
                        statuses: Collection[str] = CLAIMABLE_STATUSES) -> RunRecord | None:
        """Atomically take a run: only when its status is in `statuses` and it has no owner
        or its owner's lease expired (the same owner with a live lease loses too). Sets
        owner, lease (now + ttl_s), status `running`, attempt + 1, no error; returns the
        updated record, or None when it is not claimable. `RunNotFound` when absent."""

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        """One batch per instance: extend the lease of every queued or running run owned by
        `owner`, and of every session lease it holds, to now + ttl_s. Returns runs renewed."""

    async def claimable_runs(self, *, include_interrupted: bool = False,
                             limit: int = 100) -> list[RunRecord]:
        """Across all tenants: queued or running runs whose owner's lease expired (and,
        with `include_interrupted`, interrupted runs nobody holds), oldest expiry first."""

    # -- leases: one active run per session across processes -------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew, when `owner` holds it) the session's run lease until now + ttl_s.

        False when another owner holds an unexpired lease. An expired lease is free.
        """

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        """Release the lease if `owner` holds it."""

    # -- maintenance ------------------------------------------------------------
    async def expire_sessions(self, now: float) -> int:
        """Delete sessions whose expires_at <= now (with their events and runs); return count."""
