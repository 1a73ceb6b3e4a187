"""The `Store` protocol: everything the runtime needs from persistence, and nothing more.

Every method is scoped by tenant: a session of tenant A is invisible to tenant B by every
method. Backends (memory, sqlite, postgres, redis) must pass `tests/sessions/test_contract.py`.

Errors: a backend raises `SessionNotFound`, `VersionConflict`, or `StoreUnavailable` when the
backend cannot be reached; a driver's exception never escapes.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from roost.sessions.records import Event, Page, RunRecord, Session


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
        self, tenant: str, *, session_id: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[RunRecord]:
        """Newest first."""

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
