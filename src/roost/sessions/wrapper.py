"""`StoreWrapper`: a `Store` that forwards every call to the store it wraps.

A wrapper (instrumentation, caching, fault injection in tests) subclasses it and overrides
only what it changes; everything else reaches `inner` unchanged, errors included. Every call
passes through `_call(operation, awaitable)`, so a wrapper that treats all operations alike
(timing, tracing) overrides that one method:

    class CountingStore(StoreWrapper):
        calls: Counter[str] = Counter()

        async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
            self.calls[operation] += 1
            return await awaitable

A method added to the protocol is added here once, not in every wrapper.
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from typing import Any, TypeVar

from roost.sessions.records import Event, IdempotencyRecord, Page, RunRecord, Session
from roost.sessions.store import CLAIMABLE_STATUSES, Store
from roost.sessions.usage import UsageTotals

__all__ = ["StoreWrapper"]

T = TypeVar("T")


class StoreWrapper:
    """Delegates the whole `Store` contract to `inner`."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.backend = inner.backend

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (statistics(), …) stay reachable through any wrapper.
        return getattr(self.inner, name)

    async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
        """Every forwarded call: `operation` is the method's name."""
        return await awaitable

    # -- SessionLog --------------------------------------------------------------
    async def open(self) -> None:
        await self._call("open", self.inner.open())

    async def close(self) -> None:
        await self._call("close", self.inner.close())

    async def ping(self) -> None:
        await self._call("ping", self.inner.ping())

    async def create_session(self, session: Session) -> Session:
        return await self._call("create_session", self.inner.create_session(session))

    async def get_session(self, tenant: str, session_id: str) -> Session:
        return await self._call("get_session", self.inner.get_session(tenant, session_id))

    async def list_sessions(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        return await self._call("list_sessions", self.inner.list_sessions(
            tenant, agent=agent, user_id=user_id, cursor=cursor, limit=limit))

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        return await self._call("delete_session", self.inner.delete_session(tenant, session_id))

    async def patch_state(
        self,
        tenant: str,
        session_id: str,
        delta: dict[str, Any],
        expected_version: int | None = None,
    ) -> Session:
        return await self._call("patch_state", self.inner.patch_state(
            tenant, session_id, delta, expected_version))

    async def append(
        self,
        tenant: str,
        session_id: str,
        events: list[Event],
        expected_version: int,
        run: RunRecord | None = None,
    ) -> int:
        return await self._call("append", self.inner.append(
            tenant, session_id, events, expected_version, run))

    async def read_events(
        self, tenant: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Event]:
        return await self._call("read_events", self.inner.read_events(
            tenant, session_id, after=after, limit=limit))

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        return await self._call("tail_events", self.inner.tail_events(tenant, session_id, limit))

    async def read_run_events(
        self, tenant: str, session_id: str, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        return await self._call("read_run_events", self.inner.read_run_events(
            tenant, session_id, run_id, after=after, limit=limit))

    async def expire_sessions(self, now: float) -> int:
        return await self._call("expire_sessions", self.inner.expire_sessions(now))

    # -- RunStore ----------------------------------------------------------------
    async def put_run(self, run: RunRecord) -> None:
        await self._call("put_run", self.inner.put_run(run))

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        return await self._call("get_run", self.inner.get_run(tenant, run_id))

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
        return await self._call("list_runs", self.inner.list_runs(
            tenant, session_id=session_id, status=status, agent=agent, since=since,
            until=until, limit=limit))

    async def usage_summary(
        self,
        tenant: str,
        *,
        group_by: Sequence[str] = ("agent", "model"),
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        return await self._call("usage_summary", self.inner.usage_summary(
            tenant, group_by=group_by, since=since, until=until))

    async def claim_run(
        self,
        tenant: str,
        run_id: str,
        owner: str,
        ttl_s: float,
        *,
        statuses: Collection[str] = CLAIMABLE_STATUSES,
    ) -> RunRecord | None:
        return await self._call("claim_run", self.inner.claim_run(
            tenant, run_id, owner, ttl_s, statuses=statuses))

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        return await self._call("renew_ownership", self.inner.renew_ownership(owner, ttl_s))

    async def claimable_runs(
        self, *, include_interrupted: bool = False, limit: int = 100
    ) -> list[RunRecord]:
        return await self._call("claimable_runs", self.inner.claimable_runs(
            include_interrupted=include_interrupted, limit=limit))

    # -- LeaseStore --------------------------------------------------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        return await self._call("acquire_lease", self.inner.acquire_lease(
            tenant, session_id, owner, ttl_s))

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        await self._call("release_lease", self.inner.release_lease(tenant, session_id, owner))

    async def claim_idempotency_key(
        self, tenant: str, scope: str, key: str, fingerprint: str, value: str, ttl_s: float
    ) -> tuple[bool, IdempotencyRecord]:
        return await self._call("claim_idempotency_key", self.inner.claim_idempotency_key(
            tenant, scope, key, fingerprint, value, ttl_s))

    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        await self._call("set_agent_state", self.inner.set_agent_state(scope, agent, state))

    async def agent_states(self) -> dict[tuple[str, str], str]:
        return await self._call("agent_states", self.inner.agent_states())
