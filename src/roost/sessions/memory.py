"""`MemoryStore`: the `Store` contract in a process's memory, for tests and `memory://`.

Nothing survives the process. Every record is copied through the JSON codec on the way in
and out, so a caller never shares a mutable dict with the store and a value JSON cannot hold
fails here as it would on SQLite or PostgreSQL: tests that pass on memory pass on the others.

Concurrency: each method yields to the event loop once on entry (as a real backend would
while it talks to its server), then does its check-and-write with no await in between, so a
compare-and-set is atomic among the tasks of one event loop. Use it from one loop only.

    store = MemoryStore()
    await store.open()
    await store.create_session(Session(id="s1", agent="helper"))
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from roost.errors import (
    ConfigError,
    Conflict,
    InvalidInput,
    RunNotFound,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)
from roost.sessions import codec
from roost.sessions.records import (
    TERMINAL_STATUSES,
    Event,
    IdempotencyRecord,
    Page,
    RunRecord,
    Session,
    kept_lease,
    now,
)
from roost.sessions.store import CLAIMABLE_STATUSES, MAX_LIST_RUNS
from roost.sessions.usage import UsageSummer, UsageTotals, check_window


@dataclass(slots=True)
class _Entry:
    """One session and everything that dies with it."""

    session: Session
    events: list[Event] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    # The log again, by run: read_run_events never scans the session's whole log.
    run_events: dict[str, list[Event]] = field(default_factory=dict)
    lease_owner: str | None = None
    lease_expires_at: float = 0.0  # time.time() seconds


class MemoryStore:
    """A dict-backed `Store`; data lives until the process exits (close() keeps it)."""

    backend = "memory"

    def __init__(self, **options: object) -> None:
        if options:
            raise ConfigError(
                f"the memory store takes no options, got {sorted(options)}",
                [(f"store.options.{name}", "unknown option") for name in sorted(options)],
            )
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._runs: dict[tuple[str, str], RunRecord] = {}
        self._idempotency: dict[tuple[str, str, str], IdempotencyRecord] = {}
        self._agent_states: dict[tuple[str, str], str] = {}
        self._open = False

    # -- lifecycle --------------------------------------------------------------
    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        await self._enter()

    # -- sessions ---------------------------------------------------------------
    async def create_session(self, session: Session) -> Session:
        stored = _copy_session(session)
        await self._enter()
        key = (stored.tenant, stored.id)
        if key in self._entries:
            raise Conflict(f"session {stored.id} already exists", session_id=stored.id)
        self._entries[key] = _Entry(stored)
        return _copy_session(stored)

    async def get_session(self, tenant: str, session_id: str) -> Session:
        await self._enter()
        return _copy_session(self._entry(tenant, session_id).session)

    async def list_sessions(
        self,
        tenant: str,
        *,
        agent: str | None = None,
        user_id: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page:
        _check_limit(limit, minimum=1)
        after = codec.decode_cursor(cursor) if cursor is not None else None
        await self._enter()
        # A scan: fine for tests and small dev servers; SQLite is the store with indexes.
        keys = sorted(
            (
                (s.created_at, s.id)
                for s in (e.session for (t, _), e in self._entries.items() if t == tenant)
                if (agent is None or s.agent == agent)
                and (user_id is None or s.user_id == user_id)
                and (after is None or (s.created_at, s.id) < after)
            ),
            reverse=True,
        )
        page = keys[: limit + 1]
        items = [_copy_session(self._entries[(tenant, sid)].session) for _, sid in page[:limit]]
        next_cursor = codec.encode_cursor(*page[limit - 1]) if len(page) > limit else None
        return Page(items=items, next_cursor=next_cursor)

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        await self._enter()
        return self._drop(tenant, session_id)

    async def patch_state(
        self,
        tenant: str,
        session_id: str,
        delta: dict[str, Any],
        expected_version: int | None = None,
    ) -> Session:
        delta = _copy_delta(delta)
        await self._enter()
        session = self._entry(tenant, session_id).session
        if expected_version is not None and session.version != expected_version:
            raise VersionConflict(session_id, expected_version, session.version)
        for key, value in delta.items():
            if value is None:
                session.state.pop(key, None)
            else:
                session.state[key] = value
        session.version += 1
        session.updated_at = now()
        return _copy_session(session)

    # -- the event log ----------------------------------------------------------
    async def append(
        self,
        tenant: str,
        session_id: str,
        events: list[Event],
        expected_version: int,
        run: RunRecord | None = None,
    ) -> int:
        copies = [codec.decode_event(codec.encode(e)) for e in events]
        run_copy = _copy_run(run, tenant, session_id) if run is not None else None
        await self._enter()
        entry = self._entry(tenant, session_id)
        session = entry.session
        if session.version != expected_version:
            raise VersionConflict(session_id, expected_version, session.version)
        first = session.last_seq + 1
        for offset, event in enumerate(copies):
            event.seq = first + offset
        entry.events.extend(copies)
        for event in copies:
            if event.run_id is not None:
                entry.run_events.setdefault(event.run_id, []).append(event)
        session.last_seq += len(copies)
        session.version += 1
        session.updated_at = now()
        if run_copy is not None:
            self._put_run(run_copy)
        for offset, event in enumerate(events):
            event.seq = first + offset
        return session.version

    async def read_events(
        self, tenant: str, session_id: str, *, after: int = 0, limit: int = 100
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        await self._enter()
        events = self._entry(tenant, session_id).events
        start = bisect.bisect_right(events, after, key=_seq)
        return [_copy_event(e) for e in events[start : start + limit]]

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        _check_limit(limit, minimum=0)
        await self._enter()
        events = self._entry(tenant, session_id).events
        return [_copy_event(e) for e in events[max(0, len(events) - limit) :]] if limit else []

    async def read_run_events(
        self, tenant: str, session_id: str, run_id: str, *, after: int = 0, limit: int = 1000
    ) -> list[Event]:
        _check_limit(limit, minimum=0)
        await self._enter()
        events = self._entry(tenant, session_id).run_events.get(run_id, [])
        start = bisect.bisect_right(events, after, key=_seq)
        return [_copy_event(e) for e in events[start : start + limit]]

    # -- runs -------------------------------------------------------------------
    async def put_run(self, run: RunRecord) -> None:
        copy = _copy_run(run, run.tenant, run.session_id)
        await self._enter()
        self._entry(copy.tenant, copy.session_id)
        self._put_run(copy)

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        await self._enter()
        run = self._runs.get((tenant, run_id))
        if run is None:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        return _copy_run(run, run.tenant, run.session_id)

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
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        since, until = check_window(since, until)
        await self._enter()
        chosen = [
            r
            for r in self._tenant_runs(tenant, session_id)
            if (status is None or r.status == status)
            and (agent is None or r.agent == agent)
            and _in_window(r.created_at, since, until)
        ]
        chosen.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [_copy_run(r, r.tenant, r.session_id) for r in chosen[:limit]]

    async def usage_summary(
        self,
        tenant: str,
        *,
        group_by: Sequence[str] = ("agent", "model"),
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageTotals]:
        summer = UsageSummer(group_by)
        since, until = check_window(since, until)
        await self._enter()
        for r in self._tenant_runs(tenant, None):
            if _in_window(r.created_at, since, until):
                summer.add(agent=r.agent, model=r.model, status=r.status,
                           created_at=r.created_at, usage=r.usage)
        return summer.totals()

    async def claim_run(
        self,
        tenant: str,
        run_id: str,
        owner: str,
        ttl_s: float,
        *,
        statuses: Collection[str] = CLAIMABLE_STATUSES,
    ) -> RunRecord | None:
        _check_ttl(ttl_s)
        await self._enter()
        # No await from here on: the check and the claim are one step.
        run = self._runs.get((tenant, run_id))
        if run is None:
            raise RunNotFound(f"run {run_id} not found", run_id=run_id)
        clock = time.time()
        if run.status not in statuses or _live(run, clock):
            return None
        run.owner, run.lease_expires_at = owner, clock + ttl_s
        run.status, run.error, run.updated_at = "running", None, clock
        run.attempt += 1
        return _copy_run(run, run.tenant, run.session_id)

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        _check_ttl(ttl_s)
        await self._enter()
        clock = time.time()
        renewed = 0
        # A scan: fine for tests and small dev servers.
        for run in self._runs.values():
            if run.owner == owner and run.status not in TERMINAL_STATUSES:
                run.lease_expires_at = clock + ttl_s
                renewed += 1
        for entry in self._entries.values():
            if entry.lease_owner == owner and entry.lease_expires_at > clock:
                entry.lease_expires_at = clock + ttl_s
        return renewed

    async def claimable_runs(
        self, *, include_interrupted: bool = False, limit: int = 100
    ) -> list[RunRecord]:
        _check_limit(limit, minimum=1, maximum=MAX_LIST_RUNS)
        await self._enter()
        clock = time.time()
        found = [
            r for r in self._runs.values()
            if (r.status in ("queued", "running") and r.lease_expires_at is not None
                and r.lease_expires_at <= clock)
            or (r.status == "waiting" and r.owner is None and r.lease_expires_at is not None
                and r.lease_expires_at <= clock)
            or (include_interrupted and r.status == "interrupted" and not _live(r, clock))
        ]
        found.sort(key=lambda r: (r.lease_expires_at or 0.0, r.tenant, r.id))
        return [_copy_run(r, r.tenant, r.session_id) for r in found[:limit]]

    def _tenant_runs(self, tenant: str, session_id: str | None) -> list[RunRecord]:
        # A scan of the tenant's runs: fine for tests and small dev servers.
        if session_id is not None:
            entry = self._entries.get((tenant, session_id))
            return [self._runs[(tenant, rid)] for rid in entry.run_ids] if entry else []
        return [r for (t, _), r in self._runs.items() if t == tenant]

    # -- leases -----------------------------------------------------------------
    async def acquire_lease(self, tenant: str, session_id: str, owner: str, ttl_s: float) -> bool:
        if not ttl_s > 0:
            raise InvalidInput("lease ttl_s must be positive", field="ttl_s")
        await self._enter()
        entry = self._entry(tenant, session_id)
        clock = time.time()
        held = entry.lease_owner is not None and entry.lease_expires_at > clock
        if held and entry.lease_owner != owner:
            return False
        entry.lease_owner, entry.lease_expires_at = owner, clock + ttl_s
        return True

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        await self._enter()
        entry = self._entries.get((tenant, session_id))
        if entry is not None and entry.lease_owner == owner:
            entry.lease_owner, entry.lease_expires_at = None, 0.0

    # -- idempotency and agent states --------------------------------------------
    async def claim_idempotency_key(
        self, tenant: str, scope: str, key: str, fingerprint: str, value: str, ttl_s: float
    ) -> tuple[bool, IdempotencyRecord]:
        _check_ttl(ttl_s)
        await self._enter()
        clock = time.time()
        existing = self._idempotency.get((tenant, scope, key))
        if existing is not None and existing.expires_at > clock:
            return False, msgspec.structs.replace(existing)
        record = IdempotencyRecord(fingerprint=fingerprint, value=value, created_at=clock,
                                   expires_at=clock + ttl_s)
        self._idempotency[(tenant, scope, key)] = record
        return True, msgspec.structs.replace(record)

    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        await self._enter()
        self._agent_states[(scope, agent)] = state

    async def agent_states(self) -> dict[tuple[str, str], str]:
        await self._enter()
        return dict(self._agent_states)

    # -- maintenance ------------------------------------------------------------
    async def expire_sessions(self, now: float) -> int:
        await self._enter()
        for key in [k for k, r in self._idempotency.items() if r.expires_at <= now]:
            del self._idempotency[key]
        expired = [
            key
            for key, e in self._entries.items()
            if e.session.expires_at is not None and e.session.expires_at <= now
        ]
        for tenant, session_id in expired:
            self._drop(tenant, session_id)
        return len(expired)

    # -- internals: no awaits below, so each call is one atomic step ----------
    async def _enter(self) -> None:
        # The one suspension point of every method: concurrent callers interleave here,
        # never inside a check-and-write.
        await asyncio.sleep(0)
        if not self._open:
            raise StoreUnavailable("memory store is not open")

    def _entry(self, tenant: str, session_id: str) -> _Entry:
        entry = self._entries.get((tenant, session_id))
        if entry is None:
            raise SessionNotFound(f"session {session_id} not found", session_id=session_id)
        return entry

    def _drop(self, tenant: str, session_id: str) -> bool:
        entry = self._entries.pop((tenant, session_id), None)
        if entry is None:
            return False
        for run_id in entry.run_ids:
            self._runs.pop((tenant, run_id), None)
        return True

    def _put_run(self, run: RunRecord) -> None:
        key = (run.tenant, run.id)
        previous = self._runs.get(key)
        if previous is not None and previous.session_id != run.session_id:
            old = self._entries.get((run.tenant, previous.session_id))
            if old is not None:
                old.run_ids.discard(run.id)
        if previous is not None:
            run.lease_expires_at = kept_lease(previous, run)
        self._runs[key] = run
        self._entries[(run.tenant, run.session_id)].run_ids.add(run.id)


def _live(run: RunRecord, clock: float) -> bool:
    return run.owner is not None and run.lease_expires_at is not None and (
        run.lease_expires_at > clock)


def _check_ttl(ttl_s: float) -> None:
    if not ttl_s > 0:
        raise InvalidInput("ttl_s must be positive", field="ttl_s")


def _seq(event: Event) -> int:
    return event.seq


def _check_limit(limit: int, *, minimum: int, maximum: int | None = None) -> None:
    if limit < minimum:
        raise InvalidInput(f"limit must be at least {minimum}", field="limit")
    if maximum is not None and limit > maximum:
        raise InvalidInput(f"limit must be at most {maximum}", field="limit")


def _in_window(created_at: float, since: float | None, until: float | None) -> bool:
    return (since is None or created_at >= since) and (until is None or created_at < until)


def _copy_delta(delta: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(delta, dict):
        raise InvalidInput("a state delta must be a JSON object", field="delta")
    return codec.decode_object(codec.encode(delta))


def _copy_session(session: Session) -> Session:
    return codec.decode_session(codec.encode(session))


def _copy_event(event: Event) -> Event:
    return codec.decode_event(codec.encode(event))


def _copy_run(run: RunRecord, tenant: str, session_id: str) -> RunRecord:
    if run.tenant != tenant or run.session_id != session_id:
        raise InvalidInput(
            f"run {run.id} belongs to session {run.session_id} of tenant {run.tenant}, "
            f"not session {session_id} of tenant {tenant}",
            field="run",
        )
    return codec.decode_run(codec.encode(run))
