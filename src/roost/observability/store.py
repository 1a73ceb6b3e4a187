"""`InstrumentedStore`: a `Store` wrapper timing every operation, with a span per call.

    store = obs.instrument_store(open_store(url))   # still a Store; same errors, same results

`roost_store_operation_seconds{backend, operation}` times every call (failures included);
`roost_store_errors_total{backend, operation, kind}` counts the ones that raised, by Roost
error type (`version_conflict`, `session_not_found`, `store_unavailable`, …). With tracing on,
each call is a client span `{operation} {backend}` carrying `db.system.name` and
`db.operation.name`, child of the current run or request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from roost.errors import RoostError
from roost.observability import tracing
from roost.observability.metrics import Metrics
from roost.sessions.records import Event, Page, RunRecord, Session
from roost.sessions.store import CLAIMABLE_STATUSES, Store
from roost.sessions.usage import UsageTotals

T = TypeVar("T")

_DB_SYSTEM = {"postgres": "postgresql", "sqlite": "sqlite", "redis": "redis", "memory": "memory"}


class InstrumentedStore:
    """A `Store` that measures the `Store` it wraps. Build it with `Observability.instrument_store`."""

    def __init__(self, inner: Store, *, metrics: Metrics | None, tracer: trace.Tracer | None):
        self.inner = inner
        self.backend = inner.backend
        self._m = metrics
        self._spans = tracing.span_starter(tracer)
        self._db_system = _DB_SYSTEM.get(self.backend, self.backend)

    def __getattr__(self, name: str) -> Any:
        # Backend-specific extras (and methods added to the protocol later) still work,
        # uninstrumented; tests/observability pin that every protocol method is wrapped.
        return getattr(self.inner, name)

    async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
        span = ctx_token = None
        spans = self._spans
        if spans is not None:
            span = spans.start(f"{operation} {self.backend}", SpanKind.CLIENT,
                               {"db.system.name": self._db_system,
                                "db.operation.name": operation})
            # Current for the driver's own instrumentation; one coroutine, so properly nested.
            ctx_token = tracing.attach(span)
        start = time.perf_counter()
        kind: str | None = None
        try:
            return await awaitable
        except asyncio.CancelledError:
            kind = "cancelled"
            raise
        except RoostError as exc:
            kind = exc.type
            raise
        except Exception as exc:  # a backend bug; still counted, still raised
            kind = type(exc).__name__
            raise
        finally:
            m = self._m
            if m is not None:
                m.child(m.store_latency, self.backend, operation).observe(
                    time.perf_counter() - start)
                if kind is not None and kind != "cancelled":
                    m.child(m.store_errors, self.backend, operation,
                            m.guard("store_error")(kind)).inc()
            if span is not None:
                if kind is not None and span.is_recording():
                    span.set_attribute("error.type", kind)
                    if kind != "cancelled":
                        span.set_status(Status(StatusCode.ERROR))
                span.end()
                tracing.detach(ctx_token)

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

    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        return await self._call("acquire_lease", self.inner.acquire_lease(
            tenant, session_id, owner, ttl_s))

    async def claim_run(self, tenant: str, run_id: str, owner: str, ttl_s: float, *,
                        statuses: Collection[str] = CLAIMABLE_STATUSES) -> RunRecord | None:
        return await self._call("claim_run", self.inner.claim_run(
            tenant, run_id, owner, ttl_s, statuses=statuses))

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        return await self._call("renew_ownership", self.inner.renew_ownership(owner, ttl_s))

    async def claimable_runs(self, *, include_interrupted: bool = False,
                             limit: int = 100) -> list[RunRecord]:
        return await self._call("claimable_runs", self.inner.claimable_runs(
            include_interrupted=include_interrupted, limit=limit))

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        await self._call("release_lease", self.inner.release_lease(tenant, session_id, owner))

    async def expire_sessions(self, now: float) -> int:
        return await self._call("expire_sessions", self.inner.expire_sessions(now))

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
