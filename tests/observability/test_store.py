"""The instrumented Store wrapper: same results and errors, timed and traced per operation."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Collection, Sequence
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from roost.errors import SessionNotFound, StoreUnavailable, VersionConflict
from roost.observability import InstrumentedStore, Observability, ObservabilityConfig
from roost.sessions.records import Event, IdempotencyRecord, Page, RunRecord, Session
from roost.sessions.store import CLAIMABLE_STATUSES, Store
from roost.sessions.usage import UsageTotals
from roost.sessions.wrapper import StoreWrapper
from tests.observability import make_run, scrape, traced, value


class RecordingStore:
    """A scripted backend: remembers calls, returns canned values, fails on request."""

    backend = "sqlite"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.fail: dict[str, BaseException] = {}
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def _do(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if name in self.fail:
            raise self.fail[name]

    async def open(self) -> None:
        await self._do("open")

    async def close(self) -> None:
        await self._do("close")

    async def ping(self) -> None:
        await self._do("ping")

    async def create_session(self, session: Session) -> Session:
        await self._do("create_session", session)
        return session

    async def get_session(self, tenant: str, session_id: str) -> Session:
        await self._do("get_session", tenant, session_id)
        return Session(id=session_id, tenant=tenant, agent="a")

    async def list_sessions(self, tenant: str, *, agent: str | None = None,
                            user_id: str | None = None, cursor: str | None = None,
                            limit: int = 50) -> Page:
        await self._do("list_sessions", tenant, agent, user_id, cursor, limit)
        return Page(items=[])

    async def delete_session(self, tenant: str, session_id: str) -> bool:
        await self._do("delete_session", tenant, session_id)
        return True

    async def patch_state(self, tenant: str, session_id: str, delta: dict[str, Any],
                          expected_version: int | None = None) -> Session:
        await self._do("patch_state", tenant, session_id, delta, expected_version)
        return Session(id=session_id, tenant=tenant, agent="a", state=delta)

    async def append(self, tenant: str, session_id: str, events: list[Event],
                     expected_version: int, run: RunRecord | None = None) -> int:
        await self._do("append", tenant, session_id, events, expected_version, run)
        return expected_version + 1

    async def read_events(self, tenant: str, session_id: str, *, after: int = 0,
                          limit: int = 100) -> list[Event]:
        await self._do("read_events", tenant, session_id, after, limit)
        return [Event(type="message", seq=after + 1)]

    async def tail_events(self, tenant: str, session_id: str, limit: int) -> list[Event]:
        await self._do("tail_events", tenant, session_id, limit)
        return []

    async def put_run(self, run: RunRecord) -> None:
        await self._do("put_run", run)

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        await self._do("get_run", tenant, run_id)
        return make_run(run_id)

    async def list_runs(self, tenant: str, *, session_id: str | None = None,
                        status: str | None = None, agent: str | None = None,
                        since: float | None = None, until: float | None = None,
                        limit: int = 100) -> list[RunRecord]:
        await self._do("list_runs", tenant, session_id, status, agent, since, until, limit)
        return []

    async def acquire_lease(self, tenant: str, session_id: str, owner: str,
                            ttl_s: float) -> bool:
        await self._do("acquire_lease", tenant, session_id, owner, ttl_s)
        return True

    async def release_lease(self, tenant: str, session_id: str, owner: str) -> None:
        await self._do("release_lease", tenant, session_id, owner)

    async def expire_sessions(self, now: float) -> int:
        await self._do("expire_sessions", now)
        return 2

    async def usage_summary(self, tenant: str, *, group_by: Sequence[str] = ("agent", "model"),
                            since: float | None = None,
                            until: float | None = None) -> list[UsageTotals]:
        await self._do("usage_summary", tenant, tuple(group_by), since, until)
        return []

    async def read_run_events(self, tenant: str, session_id: str, run_id: str, *,
                              after: int = 0, limit: int = 1000) -> list[Event]:
        await self._do("read_run_events", tenant, session_id, run_id, after, limit)
        return []

    async def claim_run(self, tenant: str, run_id: str, owner: str, ttl_s: float, *,
                        statuses: Collection[str] = CLAIMABLE_STATUSES) -> RunRecord | None:
        await self._do("claim_run", tenant, run_id, owner, ttl_s, tuple(statuses))
        return None

    async def renew_ownership(self, owner: str, ttl_s: float) -> int:
        await self._do("renew_ownership", owner, ttl_s)
        return 0

    async def claimable_runs(self, *, include_interrupted: bool = False,
                             limit: int = 100) -> list[RunRecord]:
        await self._do("claimable_runs", include_interrupted, limit)
        return []

    async def claim_idempotency_key(self, tenant: str, scope: str, key: str, fingerprint: str,
                                    value: str, ttl_s: float) -> tuple[bool, IdempotencyRecord]:
        await self._do("claim_idempotency_key", tenant, scope, key, fingerprint, value, ttl_s)
        return True, IdempotencyRecord(fingerprint=fingerprint, value=value, created_at=0.0,
                                       expires_at=ttl_s)

    async def set_agent_state(self, scope: str, agent: str, state: str) -> None:
        await self._do("set_agent_state", scope, agent, state)

    async def agent_states(self) -> dict[tuple[str, str], str]:
        await self._do("agent_states")
        return {}

    def backend_extra(self) -> str:
        return "extra"


PROTOCOL_METHODS = sorted(
    name for name, member in inspect.getmembers(Store)
    if inspect.iscoroutinefunction(member) and not name.startswith("_")
)

CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "open": ((), {}), "close": ((), {}), "ping": ((), {}),
    "create_session": ((Session(id="s", agent="a"),), {}),
    "get_session": (("t", "s"), {}),
    "list_sessions": (("t",), {"agent": "a", "user_id": "u", "cursor": "c", "limit": 5}),
    "delete_session": (("t", "s"), {}),
    "patch_state": (("t", "s", {"k": 1}, 3), {}),
    "append": (("t", "s", [Event(type="message")], 4, None), {}),
    "read_events": (("t", "s"), {"after": 7, "limit": 2}),
    "tail_events": (("t", "s", 9), {}),
    "put_run": ((make_run(),), {}),
    "get_run": (("t", "r"), {}),
    "list_runs": (("t",), {"session_id": "s", "status": "completed", "agent": "a",
                           "since": 1.0, "until": 2.0, "limit": 3}),
    "acquire_lease": (("t", "s", "me", 30.0), {}),
    "release_lease": (("t", "s", "me"), {}),
    "expire_sessions": ((123.0,), {}),
    "usage_summary": (("t",), {"group_by": ("agent", "day"), "since": 1.0, "until": 2.0}),
    "read_run_events": (("t", "s", "r"), {"after": 3, "limit": 4}),
    "claim_run": (("t", "r", "me", 30.0), {"statuses": ("queued",)}),
    "renew_ownership": (("me", 30.0), {}),
    "claimable_runs": ((), {"include_interrupted": True, "limit": 5}),
    "claim_idempotency_key": (("t", "submit", "k", "fp", "v", 60.0), {}),
    "set_agent_state": (("*", "a", "paused"), {}),
    "agent_states": ((), {}),
}


def test_every_protocol_method_is_forwarded_explicitly() -> None:
    # InstrumentedStore times StoreWrapper._call, which every forwarded method goes through.
    assert set(PROTOCOL_METHODS) == set(CALLS), "update CALLS and StoreWrapper"
    assert issubclass(InstrumentedStore, StoreWrapper)
    for name in PROTOCOL_METHODS:
        assert name in StoreWrapper.__dict__, f"StoreWrapper does not forward {name}"


async def test_results_and_arguments_pass_through_and_every_operation_is_timed() -> None:
    obs = Observability()
    inner = RecordingStore()
    store = obs.instrument_store(inner)
    assert isinstance(store, Store) and store.backend == "sqlite"
    assert await store.append("t", "s", [Event(type="message")], 4) == 5
    assert await store.expire_sessions(1.0) == 2
    assert (await store.read_events("t", "s", after=7, limit=2))[0].seq == 8
    for name in PROTOCOL_METHODS:
        args, kwargs = CALLS[name]
        await getattr(store, name)(*args, **kwargs)
    assert ("expire_sessions", (123.0,)) in inner.calls
    assert ("patch_state", ("t", "s", {"k": 1}, 3)) in inner.calls
    assert ("list_sessions", ("t", "a", "u", "c", 5)) in inner.calls
    assert ("list_runs", ("t", "s", "completed", "a", 1.0, 2.0, 3)) in inner.calls
    assert ("claim_run", ("t", "r", "me", 30.0, ("queued",))) in inner.calls
    assert ("claimable_runs", (True, 5)) in inner.calls
    s = scrape(obs)
    for name in PROTOCOL_METHODS:
        assert value(s, "roost_store_operation_seconds_count", backend="sqlite",
                     operation=name) >= 1, name
    assert store.backend_extra() == "extra"  # type: ignore[attr-defined,unused-ignore]


async def test_errors_propagate_unchanged_and_are_counted_by_type() -> None:
    obs = Observability()
    inner = RecordingStore()
    store = obs.instrument_store(inner)
    inner.fail["append"] = VersionConflict("s", 4, 5)
    inner.fail["get_session"] = SessionNotFound("no such session")
    inner.fail["ping"] = StoreUnavailable("down")
    with pytest.raises(VersionConflict):
        await store.append("t", "s", [], 4)
    with pytest.raises(SessionNotFound):
        await store.get_session("t", "s")
    with pytest.raises(StoreUnavailable):
        await store.ping()
    s = scrape(obs)
    assert value(s, "roost_store_errors_total", backend="sqlite", operation="append",
                 kind="version_conflict") == 1
    assert value(s, "roost_store_errors_total", backend="sqlite", operation="get_session",
                 kind="session_not_found") == 1
    assert value(s, "roost_store_errors_total", backend="sqlite", operation="ping",
                 kind="store_unavailable") == 1
    assert value(s, "roost_store_operation_seconds_count", backend="sqlite",
                 operation="append") == 1


async def test_store_spans_nest_under_the_run_and_end_on_cancellation() -> None:
    obs, exporter = traced(ObservabilityConfig(trace_store=True))
    inner = RecordingStore()
    store = obs.instrument_store(inner)
    run = make_run()
    token = obs.hooks.run_start(run, model="demo")
    await store.append("t", "s", [], 1)
    inner.fail["put_run"] = StoreUnavailable("down")
    with pytest.raises(StoreUnavailable):
        await store.put_run(run)
    inner.gate = asyncio.Event()
    inner.entered.clear()
    pending = asyncio.create_task(store.get_run("t", "r"))
    await inner.entered.wait()  # the backend call is in progress
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    run.status = "completed"
    obs.hooks.run_end(token, run)

    spans = {s.name: s for s in exporter.get_finished_spans()}
    agent = spans["invoke_agent support"]
    append, put_run, get_run = spans["append sqlite"], spans["put_run sqlite"], spans["get_run sqlite"]
    for span in (append, put_run, get_run):
        assert span.kind is SpanKind.CLIENT
        assert span.parent is not None and span.parent.span_id == agent.context.span_id
        assert span.attributes is not None
        assert span.attributes["db.system.name"] == "sqlite"
    assert append.attributes is not None and append.attributes["db.operation.name"] == "append"
    assert put_run.status.status_code is StatusCode.ERROR
    assert get_run.attributes is not None and get_run.attributes["error.type"] == "cancelled"


def test_nothing_to_measure_returns_the_store_itself() -> None:
    obs = Observability(ObservabilityConfig(metrics=False))
    inner = RecordingStore()
    assert obs.instrument_store(inner) is inner


async def test_store_spans_only_with_trace_store() -> None:
    for trace_store in (False, True):
        obs, exporter = traced(ObservabilityConfig(trace_store=trace_store))
        store = obs.instrument_store(RecordingStore())
        await store.ping()
        assert value(scrape(obs), "roost_store_operation_seconds_count", backend="sqlite",
                     operation="ping") == 1  # timed either way
        names = [s.name for s in exporter.get_finished_spans()]
        assert names == (["ping sqlite"] if trace_store else [])
