"""The `Store` contract: every backend runs this suite, unchanged, on a real server.

The `store` fixture (tests/sessions/conftest.py) yields one open, empty store per backend.
What is pinned here is what the runtime relies on; a new backend is done when this passes.

The concurrent-writers test defaults to 50 writers x 200 appends; ROOST_CONTRACT_WRITERS and
ROOST_CONTRACT_APPENDS shrink it for a slow remote server.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest

from roost.errors import (
    Conflict,
    InvalidInput,
    RunNotFound,
    SessionNotFound,
    StoreUnavailable,
    VersionConflict,
)
from roost.sessions import Event, RunRecord, Session, Store, Usage, open_store
from roost.sessions import usage as usage_module
from roost.sessions.store import MAX_LIST_RUNS
from roost.sessions.usage import UsageTotals
from tests.conftest import POSTGRES_URL, REDIS_URL

T = "default"
WRITERS = int(os.environ.get("ROOST_CONTRACT_WRITERS", "50"))
APPENDS = int(os.environ.get("ROOST_CONTRACT_APPENDS", "200"))


def new_id(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def make_session(store: Store, tenant: str = T, **fields: Any) -> Session:
    fields.setdefault("id", new_id())
    fields.setdefault("agent", "helper")
    return await store.create_session(Session(tenant=tenant, **fields))


def message(text: str, run_id: str | None = None) -> Event:
    return Event(type="message", data={"role": "user", "content": text}, run_id=run_id)


async def read_all(store: Store, tenant: str, session_id: str, page: int = 1000) -> list[Event]:
    events: list[Event] = []
    while batch := await store.read_events(tenant, session_id, after=len(events), limit=page):
        assert [e.seq for e in batch] == list(range(len(events) + 1, len(events) + len(batch) + 1))
        events.extend(batch)
    return events


# -- lifecycle ----------------------------------------------------------------------------
async def test_ping_and_idempotent_open(store: Store) -> None:
    await store.ping()
    await store.open()
    await store.ping()
    assert store.backend in ("memory", "sqlite", "postgres", "redis")


async def test_closed_store_is_unavailable(store: Store) -> None:
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.get_session(T, "anything")
    await store.close()  # idempotent; the fixture closes once more


# -- sessions -----------------------------------------------------------------------------
async def test_create_and_get_round_trip(store: Store) -> None:
    session = Session(
        id=new_id(),
        agent="helper",
        user_id="u-1",
        state={"n": 1, "nested": {"a": [1, 2.5, None, True, "x"]}},
        metadata={"source": "api"},
        created_at=1_700_000_000.123456,
        updated_at=1_700_000_001.654321,
        expires_at=1_900_000_000.5,
    )
    created = await store.create_session(session)
    assert created == session
    got = await store.get_session(T, session.id)
    assert got == session
    # The store keeps its own copy: mutating what we passed or got changes nothing stored.
    session.state["n"] = 99
    got.state["nested"]["a"].append("mutated")
    assert (await store.get_session(T, session.id)).state == {
        "n": 1,
        "nested": {"a": [1, 2.5, None, True, "x"]},
    }


async def test_create_existing_session_conflicts(store: Store) -> None:
    session = await make_session(store)
    with pytest.raises(Conflict):
        await store.create_session(Session(id=session.id, agent="other"))
    assert (await store.get_session(T, session.id)).agent == "helper"


async def test_get_missing_session(store: Store) -> None:
    with pytest.raises(SessionNotFound):
        await store.get_session(T, "no-such-session")


async def test_value_json_cannot_hold_is_invalid_input(store: Store) -> None:
    with pytest.raises(InvalidInput):
        await store.create_session(Session(id=new_id(), agent="a", state={"x": object()}))
    session = await make_session(store)
    with pytest.raises(InvalidInput):
        await store.append(T, session.id, [Event(type="message", data={"x": object()})], 0)
    with pytest.raises(InvalidInput):
        await store.patch_state(T, session.id, {"x": object()})
    got = await store.get_session(T, session.id)
    assert (got.version, got.last_seq) == (0, 0)


async def test_list_filters_newest_first(store: Store) -> None:
    base = 1_700_000_000.0
    specs = [("a", "u1"), ("b", "u1"), ("a", "u2"), ("a", None), ("b", "u2"), ("a", "u1")]
    made = [
        await make_session(store, agent=agent, user_id=user, created_at=base + i)
        for i, (agent, user) in enumerate(specs)
    ]
    newest_first = list(reversed(made))

    async def ids(**filters: Any) -> list[str]:
        page = await store.list_sessions(T, **filters)
        assert page.next_cursor is None
        return [s.id for s in page.items]

    assert await ids() == [s.id for s in newest_first]
    assert await ids(agent="a") == [s.id for s in newest_first if s.agent == "a"]
    assert await ids(user_id="u1") == [s.id for s in newest_first if s.user_id == "u1"]
    assert await ids(agent="b", user_id="u2") == [made[4].id]
    assert await ids(agent="nobody") == []
    full = (await store.list_sessions(T, agent="b")).items
    assert full == [made[4], made[1]]  # whole records, not just ids


async def test_list_pagination_is_stable_without_gaps(store: Store) -> None:
    # 40 timestamps x 3 sessions: ties on created_at must be broken by id, across pages.
    base = 1_700_000_000.0
    await asyncio.gather(
        *(make_session(store, id=f"p-{i:03d}", created_at=base + i // 3) for i in range(120))
    )
    seen: list[Session] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await store.list_sessions(T, cursor=cursor, limit=50)
        pages += 1
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert [len(seen[:50]), len(seen[50:100]), len(seen[100:])] == [50, 50, 20]
    keys = [(s.created_at, s.id) for s in seen]
    assert keys == sorted(keys, reverse=True)
    assert len(set(keys)) == 120
    assert {s.id for s in seen} == {f"p-{i:03d}" for i in range(120)}


async def test_list_exact_page_has_no_dangling_cursor(store: Store) -> None:
    for i in range(4):
        await make_session(store, created_at=1_700_000_000.0 + i)
    first = await store.list_sessions(T, limit=2)
    assert len(first.items) == 2 and first.next_cursor is not None
    second = await store.list_sessions(T, limit=2, cursor=first.next_cursor)
    assert len(second.items) == 2 and second.next_cursor is None


async def test_list_rejects_bad_cursor_and_limit(store: Store) -> None:
    with pytest.raises(InvalidInput):
        await store.list_sessions(T, cursor="not a cursor!")
    with pytest.raises(InvalidInput):
        await store.list_sessions(T, limit=0)


async def test_delete_removes_events_and_runs(store: Store) -> None:
    session = await make_session(store)
    run = RunRecord(id=new_id("r"), session_id=session.id, agent="helper", status="running")
    await store.append(T, session.id, [message("hi", run.id), message("there")], 0, run=run)
    other_run = RunRecord(id=new_id("r"), session_id=session.id, agent="helper")
    await store.put_run(other_run)
    await store.acquire_lease(T, session.id, "worker-1", 30)

    assert await store.delete_session(T, session.id) is True
    assert await store.delete_session(T, session.id) is False
    with pytest.raises(SessionNotFound):
        await store.get_session(T, session.id)
    with pytest.raises(SessionNotFound):
        await store.read_events(T, session.id)
    for run_id in (run.id, other_run.id):
        with pytest.raises(RunNotFound):
            await store.get_run(T, run_id)
    assert await store.list_runs(T, session_id=session.id) == []
    assert await store.list_runs(T) == []

    # A new session under the same id starts clean: nothing of the old one comes back.
    again = await make_session(store, id=session.id)
    assert (again.version, again.last_seq) == (0, 0)
    assert await store.read_events(T, session.id) == []
    assert await store.acquire_lease(T, session.id, "worker-2", 30) is True


# -- state --------------------------------------------------------------------------------
async def test_patch_state_merges_deletes_and_bumps_version(store: Store) -> None:
    session = await make_session(store, state={"a": 1, "b": {"x": 1, "y": 2}, "c": "keep"})
    patched = await store.patch_state(T, session.id, {"a": 2, "b": {"x": 9}, "c": None, "d": []})
    # Shallow: "b" is replaced whole, not merged; None deletes.
    assert patched.state == {"a": 2, "b": {"x": 9}, "d": []}
    assert patched.version == 1
    assert patched.updated_at >= session.updated_at
    assert await store.get_session(T, session.id) == patched
    deleted_missing = await store.patch_state(T, session.id, {"zzz": None})
    assert deleted_missing.state == patched.state and deleted_missing.version == 2


async def test_patch_state_compare_and_set(store: Store) -> None:
    session = await make_session(store)
    first = await store.patch_state(T, session.id, {"k": 1}, expected_version=0)
    assert first.version == 1
    with pytest.raises(VersionConflict) as info:
        await store.patch_state(T, session.id, {"k": 2}, expected_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert (await store.get_session(T, session.id)).state == {"k": 1}
    # None: unconditional.
    assert (await store.patch_state(T, session.id, {"k": 3})).version == 2
    await store.append(T, session.id, [message("m")], expected_version=2)
    # Appends and patches share one version counter.
    with pytest.raises(VersionConflict):
        await store.patch_state(T, session.id, {"k": 4}, expected_version=2)
    assert (await store.patch_state(T, session.id, {"k": 4}, expected_version=3)).version == 4
    with pytest.raises(SessionNotFound):
        await store.patch_state(T, "missing", {"k": 1})


# -- the event log ------------------------------------------------------------------------
async def test_append_assigns_seq_in_place_and_bumps_version(store: Store) -> None:
    session = await make_session(store)
    batch = [message("one"), Event(type="tool.call", data={"name": "f"}), message("three")]
    assert all(e.seq == 0 for e in batch)
    version = await store.append(T, session.id, batch, expected_version=0)
    assert version == 1
    assert [e.seq for e in batch] == [1, 2, 3]
    nxt = [message("four")]
    assert await store.append(T, session.id, nxt, expected_version=1) == 2
    assert nxt[0].seq == 4
    got = await store.get_session(T, session.id)
    assert (got.version, got.last_seq) == (2, 4)
    assert await store.read_events(T, session.id) == [*batch, *nxt]


async def test_append_stale_version_writes_nothing(store: Store) -> None:
    session = await make_session(store)
    await store.append(T, session.id, [message("first")], expected_version=0)
    run = RunRecord(id=new_id("r"), session_id=session.id, agent="helper")
    stale = [message("late"), message("later")]
    with pytest.raises(VersionConflict) as info:
        await store.append(T, session.id, stale, expected_version=0, run=run)
    assert (info.value.session_id, info.value.expected, info.value.actual) == (session.id, 0, 1)
    assert [e.seq for e in stale] == [0, 0]
    got = await store.get_session(T, session.id)
    assert (got.version, got.last_seq) == (1, 1)
    assert [e.data["content"] for e in await store.read_events(T, session.id)] == ["first"]
    with pytest.raises(RunNotFound):
        await store.get_run(T, run.id)
    with pytest.raises(SessionNotFound):
        await store.append(T, "missing", [message("x")], expected_version=0)


async def test_append_upserts_run_in_the_same_step(store: Store) -> None:
    session = await make_session(store)
    run = RunRecord(id=new_id("r"), session_id=session.id, agent="helper", input="hello")
    run.status = "running"
    v = await store.append(T, session.id, [Event(type="run.started", run_id=run.id)], 0, run=run)
    assert (await store.get_run(T, run.id)).status == "running"
    run.status, run.output = "completed", "bye"
    run.usage = Usage(input_tokens=10, output_tokens=5, cost=0.25)
    await store.append(T, session.id, [Event(type="run.completed", run_id=run.id)], v, run=run)
    assert await store.get_run(T, run.id) == run
    events = await store.read_events(T, session.id)
    assert [(e.type, e.run_id) for e in events] == [
        ("run.started", run.id),
        ("run.completed", run.id),
    ]
    foreign = RunRecord(id=new_id("r"), session_id="another-session", agent="helper")
    with pytest.raises(InvalidInput):
        await store.append(T, session.id, [message("x")], 2, run=foreign)


# 50 writers racing for one session lose ~49 of every 50 compare-and-sets: 10,000 appends
# cost 100-250k conflicts, two round trips each, on the network backends.
@pytest.mark.timeout(300)
async def test_concurrent_writers_never_interleave_or_lose_appends(store: Store) -> None:
    """WRITERS tasks x APPENDS appends to one session, each retrying on a lost CAS."""
    session = await make_session(store)
    conflicts = 0

    async def writer(w: int) -> None:
        nonlocal conflicts
        for i in range(APPENDS):
            while True:
                version = (await store.get_session(T, session.id)).version
                event = Event(type="message", data={"w": w, "i": i})
                try:
                    await store.append(T, session.id, [event], expected_version=version)
                except VersionConflict:
                    conflicts += 1
                    continue
                assert event.seq > 0
                break

    started = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    elapsed = time.perf_counter() - started
    total = WRITERS * APPENDS
    events = await read_all(store, T, session.id)
    assert len(events) == total
    assert [e.seq for e in events] == list(range(1, total + 1))
    per_writer: dict[int, list[int]] = {}
    for e in events:
        per_writer.setdefault(e.data["w"], []).append(e.data["i"])
    assert per_writer == {w: list(range(APPENDS)) for w in range(WRITERS)}
    got = await store.get_session(T, session.id)
    assert (got.version, got.last_seq) == (total, total)
    print(f"\n{store.backend}: {total} appends, {conflicts} conflicts, {elapsed:.2f}s")


async def test_read_events_pages_and_tail(store: Store) -> None:
    session = await make_session(store)
    version = 0
    for chunk in range(5):
        version = await store.append(
            T, session.id, [message(f"{chunk}-{n}") for n in range(5)], version
        )
    page = await store.read_events(T, session.id, after=0, limit=10)
    assert [e.seq for e in page] == list(range(1, 11))
    page = await store.read_events(T, session.id, after=20, limit=10)
    assert [e.seq for e in page] == [21, 22, 23, 24, 25]
    assert await store.read_events(T, session.id, after=25) == []
    assert await store.read_events(T, session.id, after=3, limit=0) == []
    assert [e.seq for e in await store.read_events(T, session.id, after=7, limit=3)] == [8, 9, 10]
    assert [e.seq for e in await store.tail_events(T, session.id, 4)] == [22, 23, 24, 25]
    assert len(await store.tail_events(T, session.id, 100)) == 25
    assert await store.tail_events(T, session.id, 0) == []
    tail = await store.tail_events(T, session.id, 1)
    assert tail[0].data == {"role": "user", "content": "4-4"}
    empty = await make_session(store)
    assert await store.read_events(T, empty.id) == []
    assert await store.tail_events(T, empty.id, 5) == []
    with pytest.raises(SessionNotFound):
        await store.tail_events(T, "missing", 5)


# -- runs ---------------------------------------------------------------------------------
async def test_runs_put_get_list(store: Store) -> None:
    s1, s2 = await make_session(store), await make_session(store)
    base = 1_700_000_000.0
    runs = [
        RunRecord(
            id=f"r-{i}",
            session_id=(s1 if i % 2 else s2).id,
            agent="helper",
            status="completed" if i < 3 else "running",
            created_at=base + i,
            updated_at=base + i,
        )
        for i in range(5)
    ]
    for run in runs:
        await store.put_run(run)
    assert await store.get_run(T, "r-3") == runs[3]
    assert [r.id for r in await store.list_runs(T)] == ["r-4", "r-3", "r-2", "r-1", "r-0"]
    assert [r.id for r in await store.list_runs(T, session_id=s1.id)] == ["r-3", "r-1"]
    assert [r.id for r in await store.list_runs(T, status="completed")] == ["r-2", "r-1", "r-0"]
    assert [r.id for r in await store.list_runs(T, session_id=s2.id, status="running")] == ["r-4"]
    assert [r.id for r in await store.list_runs(T, limit=2)] == ["r-4", "r-3"]

    replaced = RunRecord(
        id="r-3",
        session_id=s1.id,
        agent="helper",
        status="failed",
        input="question",
        output=None,
        deadline=base + 100.5,
        attempt=2,
        usage=Usage(input_tokens=3, output_tokens=4, cost=0.001),
        error={"type": "model_error", "message": "boom", "retryable": True},
        created_at=base + 3,
        updated_at=base + 50,
    )
    await store.put_run(replaced)
    assert await store.get_run(T, "r-3") == replaced
    assert [r.id for r in await store.list_runs(T, status="failed")] == ["r-3"]
    with pytest.raises(RunNotFound):
        await store.get_run(T, "r-404")
    with pytest.raises(SessionNotFound):
        await store.put_run(RunRecord(id="r-x", session_id="missing", agent="helper"))
    with pytest.raises(InvalidInput):
        await store.list_runs(T, limit=0)


# -- runs by model, window and agent; usage summaries --------------------------------------
# 2023-11-14T22:13:20Z. The runs below straddle the next UTC midnight (BASE + 6400), one a
# quarter second before it. Costs are binary fractions, so sums are exact in any order.
BASE = 1_700_000_000.0
MIDNIGHT = BASE + 6400


async def seed_usage(store: Store) -> tuple[Session, Session]:
    s1, s2 = await make_session(store), await make_session(store)
    rows = [  # id, session, agent, model, status, created_at offset, usage
        ("u-0", s1, "helper", "openai:gpt-4o-mini", "completed", 0.0, (10, 2, 0.5)),
        ("u-1", s2, "helper", "demo", "completed", 1500.0, (20, 4, 0.25)),
        ("u-2", s1, "writer", "openai:gpt-4o-mini", "failed", 3000.0, (5, 0, 0.125)),
        ("u-3", s2, "writer", "", "running", 6399.75, (1, 1, 0.0)),
        ("u-4", s1, "helper", "openai:gpt-4o-mini", "completed", 6400.0, (100, 50, 1.0)),
    ]
    for run_id, session, agent, model, status, offset, (i, o, c) in rows:
        await store.put_run(RunRecord(
            id=run_id, session_id=session.id, agent=agent, model=model, status=status,
            created_at=BASE + offset, updated_at=BASE + offset,
            usage=Usage(input_tokens=i, output_tokens=o, cost=c),
        ))
    other = await make_session(store, tenant="other")
    await store.put_run(RunRecord(id="u-x", session_id=other.id, tenant="other", agent="helper",
                                  model="demo", created_at=BASE, usage=Usage(input_tokens=7)))
    return s1, s2


def totals(key: dict[str, str], runs: int, i: int, o: int, c: float) -> UsageTotals:
    return UsageTotals(key=key, runs=runs, input_tokens=i, output_tokens=o, cost=c)


async def test_run_model_round_trips(store: Store) -> None:
    session = await make_session(store)
    served = RunRecord(id=new_id("r"), session_id=session.id, agent="helper",
                       model="openai:gpt-4o-mini")
    await store.put_run(served)
    assert await store.get_run(T, served.id) == served
    plain = RunRecord(id=new_id("r"), session_id=session.id, agent="helper")
    v = await store.append(T, session.id, [Event(type="run.started", run_id=plain.id)], 0,
                           run=plain)
    assert (await store.get_run(T, plain.id)).model == ""
    plain.model, plain.status = "demo", "completed"
    await store.append(T, session.id, [Event(type="run.completed", run_id=plain.id)], v,
                       run=plain)
    assert await store.get_run(T, plain.id) == plain
    assert {r.id: r.model for r in await store.list_runs(T)} == {
        served.id: "openai:gpt-4o-mini", plain.id: "demo"}


async def test_list_runs_by_window_and_agent(store: Store) -> None:
    s1, s2 = await seed_usage(store)

    async def ids(**filters: Any) -> list[str]:
        return [r.id for r in await store.list_runs(T, **filters)]

    assert await ids() == ["u-4", "u-3", "u-2", "u-1", "u-0"]
    assert await ids(since=BASE + 1500) == ["u-4", "u-3", "u-2", "u-1"]  # since is inclusive
    assert await ids(until=BASE + 3000) == ["u-1", "u-0"]  # until is exclusive
    assert await ids(since=BASE + 1500, until=MIDNIGHT) == ["u-3", "u-2", "u-1"]
    assert await ids(agent="writer") == ["u-3", "u-2"]
    assert await ids(agent="helper", since=BASE + 1) == ["u-4", "u-1"]
    assert await ids(session_id=s1.id, since=BASE + 1) == ["u-4", "u-2"]
    assert await ids(session_id=s2.id, until=MIDNIGHT, agent="helper") == ["u-1"]
    assert await ids(status="completed", until=MIDNIGHT) == ["u-1", "u-0"]
    assert await ids(session_id=s1.id, status="completed", agent="helper") == ["u-4", "u-0"]
    assert await ids(since=BASE, until=MIDNIGHT, limit=1) == ["u-3"]
    assert await ids(since=MIDNIGHT, until=MIDNIGHT) == []
    assert await ids(agent="nobody") == []
    assert [r.id for r in await store.list_runs("other", agent="helper")] == ["u-x"]
    assert await store.list_runs("nobody", since=0.0) == []
    assert len(await store.list_runs(T, limit=MAX_LIST_RUNS)) == 5
    for bad, field in (({"limit": MAX_LIST_RUNS + 1}, "limit"),
                       ({"since": float("nan")}, "since"),
                       ({"until": float("inf")}, "until")):
        with pytest.raises(InvalidInput) as caught:
            await store.list_runs(T, **bad)
        assert caught.value.field == field


async def test_usage_summary_groups_and_windows(store: Store) -> None:
    s1, s2 = await seed_usage(store)
    assert await store.usage_summary(T) == [  # by agent and model, sorted by key
        totals({"agent": "helper", "model": "demo"}, 1, 20, 4, 0.25),
        totals({"agent": "helper", "model": "openai:gpt-4o-mini"}, 2, 110, 52, 1.5),
        totals({"agent": "writer", "model": ""}, 1, 1, 1, 0.0),
        totals({"agent": "writer", "model": "openai:gpt-4o-mini"}, 1, 5, 0, 0.125),
    ]
    assert await store.usage_summary(T, group_by=("day",)) == [
        totals({"day": "2023-11-14"}, 4, 36, 7, 0.875),
        totals({"day": "2023-11-15"}, 1, 100, 50, 1.0),
    ]
    assert await store.usage_summary(T, group_by=["hour", "status"]) == [
        totals({"hour": "2023-11-14T22", "status": "completed"}, 2, 30, 6, 0.75),
        totals({"hour": "2023-11-14T23", "status": "failed"}, 1, 5, 0, 0.125),
        totals({"hour": "2023-11-14T23", "status": "running"}, 1, 1, 1, 0.0),
        totals({"hour": "2023-11-15T00", "status": "completed"}, 1, 100, 50, 1.0),
    ]
    [grand] = await store.usage_summary(T, group_by=())
    assert grand == totals({}, 5, 136, 57, 1.875) and grand.total_tokens == 193
    window = await store.usage_summary(T, group_by=("model",), since=BASE + 1500,
                                       until=MIDNIGHT)
    assert window == [
        totals({"model": ""}, 1, 1, 1, 0.0),
        totals({"model": "demo"}, 1, 20, 4, 0.25),
        totals({"model": "openai:gpt-4o-mini"}, 1, 5, 0, 0.125),
    ]
    assert await store.usage_summary(T, since=MIDNIGHT + 1) == []
    assert await store.usage_summary(T, group_by=(), until=BASE) == []
    # Tenant-scoped, and a deleted session's runs stop counting.
    assert await store.usage_summary("other", group_by=("agent",)) == [
        totals({"agent": "helper"}, 1, 7, 0, 0.0)]
    assert await store.usage_summary("nobody") == []
    await store.delete_session(T, s2.id)
    assert await store.usage_summary(T, group_by=()) == [totals({}, 3, 115, 52, 1.625)]


async def test_usage_summary_rejects_bad_keys_and_too_many_groups(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_usage(store)
    for group_by in (("tenant",), ("agent", "agent"), ("input",), "agent"):
        with pytest.raises(InvalidInput) as caught:
            await store.usage_summary(T, group_by=group_by)
        assert caught.value.field == "group_by"
    with pytest.raises(InvalidInput) as caught:
        await store.usage_summary(T, since=float("nan"))
    assert caught.value.field == "since"
    monkeypatch.setattr(usage_module, "MAX_USAGE_GROUPS", 3)
    assert len(await store.usage_summary(T, group_by=("day",))) == 2
    with pytest.raises(InvalidInput, match="more than 3 groups") as caught:
        await store.usage_summary(T)  # four (agent, model) groups
    assert caught.value.field == "group_by"


# -- leases -------------------------------------------------------------------------------
async def test_leases(store: Store) -> None:
    session = await make_session(store)
    sid = session.id
    assert await store.acquire_lease(T, sid, "a", 30) is True
    assert await store.acquire_lease(T, sid, "a", 30) is True  # renewal by the holder
    assert await store.acquire_lease(T, sid, "b", 30) is False
    await store.release_lease(T, sid, "b")  # not the holder: no effect
    assert await store.acquire_lease(T, sid, "b", 30) is False
    await store.release_lease(T, sid, "a")
    assert await store.acquire_lease(T, sid, "b", 30) is True
    await store.release_lease(T, sid, "b")
    await store.release_lease(T, sid, "b")  # releasing a free lease is fine
    with pytest.raises(SessionNotFound):
        await store.acquire_lease(T, "missing", "a", 30)
    with pytest.raises(InvalidInput):
        await store.acquire_lease(T, sid, "a", 0)


async def test_expired_lease_is_free(store: Store) -> None:
    session = await make_session(store)
    assert await store.acquire_lease(T, session.id, "a", 0.05)
    # No event marks an expiry on a shared clock: poll, bounded.
    deadline = time.monotonic() + 5
    while not await store.acquire_lease(T, session.id, "b", 30):
        assert time.monotonic() < deadline, "an expired lease was never released"
        await asyncio.sleep(0.02)
    assert await store.acquire_lease(T, session.id, "a", 30) is False


# -- TTL ----------------------------------------------------------------------------------
async def test_expire_sessions(store: Store) -> None:
    # Expiry times far in the future of the wall clock, so only the `now` we pass counts
    # (a backend with native TTLs must not have removed them on its own).
    base = time.time() + 10_000
    old = [await make_session(store, expires_at=base + i) for i in range(3)]
    young = await make_session(store, expires_at=base + 1_000)
    forever = await make_session(store)
    other_tenant = await make_session(store, tenant="t-other", expires_at=base)
    for s in old:
        run = RunRecord(id=new_id("r"), session_id=s.id, agent="helper")
        await store.append(T, s.id, [message("bye")], 0, run=run)

    assert await store.expire_sessions(base - 1) == 0
    assert await store.expire_sessions(base + 2) == 4  # <= now: the boundary is included
    for s in old:
        with pytest.raises(SessionNotFound):
            await store.get_session(T, s.id)
    with pytest.raises(SessionNotFound):
        await store.get_session("t-other", other_tenant.id)
    assert await store.list_runs(T) == []
    assert (await store.get_session(T, young.id)).id == young.id
    assert (await store.get_session(T, forever.id)).id == forever.id
    assert await store.expire_sessions(base + 2) == 0
    recreated = await make_session(store, id=old[0].id)
    assert recreated.last_seq == 0 and await store.read_events(T, recreated.id) == []


# -- tenants ------------------------------------------------------------------------------
async def test_tenant_isolation(store: Store) -> None:
    a, b = "tenant-a", "tenant-b"
    sid = new_id()
    mine = await make_session(store, tenant=a, id=sid, agent="agent-a", state={"owner": "a"})
    run = RunRecord(id=new_id("r"), session_id=sid, tenant=a, agent="agent-a", status="running")
    await store.append(a, sid, [message("secret", run.id)], 0, run=run)
    assert await store.acquire_lease(a, sid, "owner-a", 30)

    # B knows the ids but has no such session: every method says so, none reveals A's.
    with pytest.raises(SessionNotFound):
        await store.get_session(b, sid)
    assert (await store.list_sessions(b)).items == []
    with pytest.raises(SessionNotFound):
        await store.patch_state(b, sid, {"owner": "b"})
    with pytest.raises(SessionNotFound):
        await store.append(b, sid, [message("intrusion")], 1)
    with pytest.raises(SessionNotFound):
        await store.read_events(b, sid)
    with pytest.raises(SessionNotFound):
        await store.tail_events(b, sid, 10)
    assert await store.delete_session(b, sid) is False
    with pytest.raises(RunNotFound):
        await store.get_run(b, run.id)
    assert await store.list_runs(b) == []
    assert await store.list_runs(b, session_id=sid) == []
    with pytest.raises(SessionNotFound):
        await store.acquire_lease(b, sid, "owner-b", 30)
    await store.release_lease(b, sid, "owner-a")
    with pytest.raises(SessionNotFound):
        await store.put_run(RunRecord(id=run.id, session_id=sid, tenant=b, agent="agent-b"))
    assert await store.expire_sessions(0) == 0

    # B's own session under the same id is a different session in every respect.
    theirs = await make_session(store, tenant=b, id=sid, agent="agent-b")
    assert theirs.version == 0
    assert await store.append(b, sid, [message("b's own")], 0) == 1
    assert [e.data["content"] for e in await store.read_events(b, sid)] == ["b's own"]
    assert await store.acquire_lease(b, sid, "owner-b", 30) is True
    b_run = RunRecord(id=run.id, session_id=sid, tenant=b, agent="agent-b", status="queued")
    await store.put_run(b_run)
    assert await store.get_run(b, run.id) == b_run
    assert [s.id for s in (await store.list_sessions(b)).items] == [sid]
    assert await store.delete_session(b, sid) is True

    # A's session, log, run and lease are untouched.
    got = await store.get_session(a, sid)
    assert got.agent == "agent-a" and got.state == {"owner": "a"} and got.version == 1
    assert [e.data["content"] for e in await store.read_events(a, sid)] == ["secret"]
    assert await store.get_run(a, run.id) == run
    assert await store.acquire_lease(a, sid, "owner-x", 30) is False
    assert [s.id for s in (await store.list_sessions(a)).items] == [sid]
    assert mine.tenant == a


# -- payloads -----------------------------------------------------------------------------
UNICODE = (
    'héllo 👋🏽 👨‍👩‍👧‍👦 مرحبا بالعالم שלום עולם 日本語 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u200f\u202e e\u0301 \\ " \n\t'
)


async def test_unicode_round_trips(store: Store) -> None:
    sid = f"sess-✓-日本-{uuid.uuid4().hex[:6]}"
    session = await make_session(
        store,
        id=sid,
        agent="ассистент",
        user_id="ユーザー",
        state={UNICODE: UNICODE, "list": [UNICODE, "🙂"]},
        metadata={"title": UNICODE},
    )
    assert await store.get_session(T, sid) == session
    assert [s.id for s in (await store.list_sessions(T, user_id="ユーザー")).items] == [sid]
    run = RunRecord(id=f"run-🚀-{uuid.uuid4().hex[:6]}", session_id=sid, agent="ассистент")
    run.input = UNICODE
    event = Event(type="message", data={"role": "user", "content": UNICODE, UNICODE: 1})
    await store.append(T, sid, [event], 0, run=run)
    assert await store.read_events(T, sid) == [event]
    assert await store.get_run(T, run.id) == run
    patched = await store.patch_state(T, sid, {"🔑": "مفتاح"})
    assert (await store.get_session(T, sid)).state["🔑"] == "مفتاح" == patched.state["🔑"]


def mib_text(seed: str) -> str:
    # Mixed widths (1-4 UTF-8 bytes) so no backend gets away with ASCII-only handling.
    unit = f"{seed} αβγ €😀 "
    return unit * (1024 * 1024 // len(unit.encode()) + 1)


async def test_one_mebibyte_state_and_event(store: Store) -> None:
    big = mib_text("state")
    assert len(big.encode()) >= 1024 * 1024
    session = await make_session(store, state={"blob": big})
    assert (await store.get_session(T, session.id)).state["blob"] == big
    content = mib_text("event")
    event = Event(type="message", data={"role": "assistant", "content": content})
    await store.append(T, session.id, [event], 0)
    assert (await store.read_events(T, session.id))[0].data["content"] == content
    assert (await store.tail_events(T, session.id, 1))[0] == event
    patched = await store.patch_state(T, session.id, {"more": content})
    assert patched.state == {"blob": big, "more": content}


# -- the fleet: run ownership, run events, idempotency keys, agent states -----------------
def sibling(store: Store) -> Store | None:
    """A second store object on the same data (another instance of the fleet), or None."""
    if store.backend == "memory":
        return None
    if store.backend == "sqlite":
        return open_store(f"sqlite:///{store.path}")  # type: ignore[attr-defined]
    if store.backend == "postgres":
        return open_store(POSTGRES_URL, schema=store._schema)  # type: ignore[attr-defined]
    return open_store(REDIS_URL, prefix=store._prefix)  # type: ignore[attr-defined]


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Wait for `condition` (a lease to run out on the store's clock), at most `timeout_s`."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await condition():
                return
            # Nothing to wait on: the store's clock, not an event, ends a lease.
            await asyncio.sleep(0.01)


async def make_run(store: Store, tenant: str = T, **fields: Any) -> RunRecord:
    session = await make_session(store, tenant)
    fields.setdefault("id", new_id("r"))
    fields.setdefault("agent", "helper")
    run = RunRecord(tenant=tenant, session_id=session.id, **fields)
    await store.put_run(run)
    return run


async def test_ownership_fields_round_trip(store: Store) -> None:
    run = await make_run(store, owner="i-1", lease_expires_at=1_700_000_000.125, status="running")
    got = await store.get_run(T, run.id)
    assert (got.owner, got.lease_expires_at) == ("i-1", 1_700_000_000.125)
    [listed] = await store.list_runs(T, session_id=run.session_id)
    assert (listed.owner, listed.lease_expires_at) == ("i-1", 1_700_000_000.125)
    bare = await make_run(store)
    assert (await store.get_run(T, bare.id)).owner is None
    assert (await store.get_run(T, bare.id)).lease_expires_at is None


async def test_claim_run_one_of_many_wins(store: Store) -> None:
    run = await make_run(store, status="queued", error={"type": "x"})
    before = time.time()
    results = await asyncio.gather(
        *(store.claim_run(T, run.id, f"i-{n}", 30.0) for n in range(20))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    won = winners[0]
    assert won.status == "running" and won.attempt == 2 and won.error is None
    assert won.owner is not None and won.lease_expires_at is not None
    assert before + 25 < won.lease_expires_at < time.time() + 35
    stored = await store.get_run(T, run.id)
    assert (stored.owner, stored.status, stored.attempt) == (won.owner, "running", 2)
    assert stored.lease_expires_at == won.lease_expires_at


async def test_claim_run_one_wins_across_store_objects(store: Store) -> None:
    other = sibling(store)
    if other is None:
        pytest.skip("one process's memory")
    await other.open()
    try:
        runs = [await make_run(store, status="running", owner="dead",
                               lease_expires_at=time.time() - 60) for _ in range(5)]
        for run in runs:
            results = await asyncio.gather(
                *(s.claim_run(T, run.id, f"{name}-{n}", 30.0)
                  for n in range(10) for name, s in (("a", store), ("b", other)))
            )
            assert sum(r is not None for r in results) == 1
    finally:
        await other.close()


async def test_claim_run_loses_to_a_live_lease_and_wins_after_it(store: Store) -> None:
    # Its owner died: the lease ran out (written as past, so no waiting on the clock).
    run = await make_run(store, status="running", owner="dead", lease_expires_at=time.time() - 5)
    first = await store.claim_run(T, run.id, "i-1", 30.0)
    assert first is not None and first.attempt == 2 and first.owner == "i-1"
    assert await store.claim_run(T, run.id, "i-2", 30.0) is None
    assert await store.claim_run(T, run.id, "i-1", 30.0) is None  # a second claim loses too
    assert (await store.get_run(T, run.id)).attempt == 2
    # On the store's own clock: a short lease runs out by itself.
    short = await make_run(store, status="queued")
    assert await store.claim_run(T, short.id, "i-1", 0.05) is not None

    async def taken() -> bool:
        return await store.claim_run(T, short.id, "i-2", 30.0) is not None

    await until(taken)
    assert (await store.get_run(T, short.id)).owner == "i-2"


async def test_claim_run_statuses_and_missing_runs(store: Store) -> None:
    done = await make_run(store, status="completed")
    assert await store.claim_run(T, done.id, "i-1", 30.0) is None
    waiting = await make_run(store, status="waiting")
    assert await store.claim_run(T, waiting.id, "i-1", 30.0) is None
    assert await store.claim_run(T, waiting.id, "i-1", 30.0, statuses=("waiting",)) is not None
    queued = await make_run(store, status="queued")
    assert await store.claim_run(T, queued.id, "i-1", 30.0, statuses=("running",)) is None
    interrupted = await make_run(store, status="interrupted")
    claimed = await store.claim_run(T, interrupted.id, "i-1", 30.0)
    assert claimed is not None and claimed.status == "running"
    with pytest.raises(RunNotFound):
        await store.claim_run(T, "no-such-run", "i-1", 30.0)
    with pytest.raises(RunNotFound):
        await store.claim_run("other-tenant", queued.id, "i-1", 30.0)
    with pytest.raises(InvalidInput):
        await store.claim_run(T, queued.id, "i-1", 0)


async def test_a_run_write_never_shortens_its_owners_lease(store: Store) -> None:
    run = await make_run(store, status="queued")
    claimed = await store.claim_run(T, run.id, "i-1", 5.0)
    assert claimed is not None and claimed.lease_expires_at is not None
    assert await store.renew_ownership("i-1", 60.0) == 1
    renewed = (await store.get_run(T, run.id)).lease_expires_at
    assert renewed is not None and renewed > claimed.lease_expires_at
    # The owner writes the record it holds (leased at claim time) with its next step.
    session = await store.get_session(T, run.session_id)
    await store.append(T, run.session_id, [message("step", run.id)], session.version,
                       run=claimed)
    assert (await store.get_run(T, run.id)).lease_expires_at == renewed
    await store.put_run(claimed)
    assert (await store.get_run(T, run.id)).lease_expires_at == renewed
    # Finishing clears it.
    await store.put_run(msgspec.structs.replace(claimed, status="completed",
                                                lease_expires_at=None))
    assert (await store.get_run(T, run.id)).lease_expires_at is None


async def test_renew_ownership_extends_only_that_owners_live_work(store: Store) -> None:
    past = time.time() - 1
    mine = await make_run(store, status="running", owner="i-1", lease_expires_at=past)
    queued = await make_run(store, "tenant-b", status="queued", owner="i-1",
                            lease_expires_at=past)
    finished = await make_run(store, status="completed", owner="i-1", lease_expires_at=past)
    theirs = await make_run(store, status="running", owner="i-2", lease_expires_at=past)
    renewed_session = await make_session(store)
    control = await make_session(store)
    assert await store.acquire_lease(T, renewed_session.id, "i-1", 0.5)
    assert await store.renew_ownership("i-1", 60.0) == 2
    assert await store.acquire_lease(T, control.id, "i-1", 0.5)  # after the renewal
    for run in (mine, queued):
        lease = (await store.get_run(run.tenant, run.id)).lease_expires_at
        assert lease is not None and lease > time.time() + 50
    assert (await store.get_run(T, finished.id)).lease_expires_at == past
    assert (await store.get_run(T, theirs.id)).lease_expires_at == past
    assert await store.renew_ownership("nobody", 60.0) == 0

    async def control_expired() -> bool:
        return await store.acquire_lease(T, control.id, "i-2", 30.0)

    # The control lease was taken later than the renewed one with the same ttl: once it has
    # run out, the renewed one would have too, had it not been renewed.
    await until(control_expired)
    assert not await store.acquire_lease(T, renewed_session.id, "i-2", 30.0)


async def test_claimable_runs_include_expired_waits_claimed_once(store: Store) -> None:
    """A run waiting for a person has no owner; its lease is the wait's deadline. Past it,
    the fleet's scan finds the run, and one claim (from status waiting) takes it."""
    clock = time.time()
    expired = await make_run(store, "tenant-b", status="waiting", lease_expires_at=clock - 15)
    await make_run(store, "tenant-a", status="waiting", lease_expires_at=clock + 60)
    assert [(r.tenant, r.id) for r in await store.claimable_runs()] == [("tenant-b", expired.id)]
    assert await store.claim_run("tenant-b", expired.id, "i-1", 30.0) is None  # not by default
    claimed = await store.claim_run("tenant-b", expired.id, "i-1", 30.0, statuses=("waiting",))
    assert claimed is not None and (claimed.status, claimed.owner) == ("running", "i-1")
    assert await store.claim_run("tenant-b", expired.id, "i-2", 30.0,
                                 statuses=("waiting",)) is None
    assert await store.claimable_runs() == []


async def test_claimable_runs_are_the_expired_ones_of_every_tenant(store: Store) -> None:
    clock = time.time()
    older = await make_run(store, "tenant-a", status="running", owner="dead",
                           lease_expires_at=clock - 20)
    newer = await make_run(store, "tenant-b", status="queued", owner="dead",
                           lease_expires_at=clock - 10)
    await make_run(store, "tenant-a", status="running", owner="alive",
                   lease_expires_at=clock + 60)
    await make_run(store, "tenant-a", status="completed", owner="dead",
                   lease_expires_at=clock - 30)
    await make_run(store, "tenant-b", status="waiting", owner="dead",
                   lease_expires_at=clock - 30)
    await make_run(store, "tenant-b", status="queued")  # never owned: the queue's business
    orphan = await make_run(store, "tenant-b", status="interrupted")
    dropped = await make_run(store, "tenant-a", status="interrupted", owner="dead",
                             lease_expires_at=clock - 5)
    await make_run(store, "tenant-a", status="interrupted", owner="alive",
                   lease_expires_at=clock + 60)

    found = await store.claimable_runs()
    assert [(r.tenant, r.id) for r in found] == [("tenant-a", older.id), ("tenant-b", newer.id)]
    assert found[0].owner == "dead" and found[0].lease_expires_at == clock - 20
    assert [r.id for r in await store.claimable_runs(limit=1)] == [older.id]
    with_interrupted = await store.claimable_runs(include_interrupted=True)
    assert [r.id for r in with_interrupted] == [orphan.id, older.id, newer.id, dropped.id]

    assert await store.claim_run("tenant-a", older.id, "i-1", 30.0) is not None
    assert [r.id for r in await store.claimable_runs()] == [newer.id]
    await store.put_run(msgspec.structs.replace(newer, status="completed"))
    assert await store.claimable_runs() == []
    await store.delete_session("tenant-b", orphan.session_id)
    assert [r.id for r in await store.claimable_runs(include_interrupted=True)] == [dropped.id]


async def test_read_run_events_reads_one_run_at_any_depth(store: Store) -> None:
    session = await make_session(store)
    layout = [("r1", 10), (None, 1000), ("r2", 200), (None, 90), ("r3", 100), ("r2", 100)]
    version = session.version
    for run_id, count in layout:
        for start in range(0, count, 100):
            batch = [message(f"{run_id}-{start + n}", run_id)
                     for n in range(min(100, count - start))]
            version = await store.append(T, session.id, batch, version)
    everything = await read_all(store, T, session.id)
    assert len(everything) == 1500
    by_run: dict[str | None, list[int]] = {}
    for event in everything:
        by_run.setdefault(event.run_id, []).append(event.seq)

    r2 = await store.read_run_events(T, session.id, "r2")
    assert [e.seq for e in r2] == by_run["r2"] and len(r2) == 300
    assert {e.run_id for e in r2} == {"r2"}
    assert r2[0].data == everything[by_run["r2"][0] - 1].data
    r3 = await store.read_run_events(T, session.id, "r3", after=by_run["r3"][49], limit=20)
    assert [e.seq for e in r3] == by_run["r3"][50:70]
    assert [e.seq for e in await store.read_run_events(T, session.id, "r1")] == by_run["r1"]
    assert await store.read_run_events(T, session.id, "r1", limit=0) == []
    assert await store.read_run_events(T, session.id, "no-such-run") == []
    with pytest.raises(SessionNotFound):
        await store.read_run_events(T, "no-such-session", "r1")
    with pytest.raises(SessionNotFound):
        await store.read_run_events("other-tenant", session.id, "r1")
    await store.delete_session(T, session.id)
    with pytest.raises(SessionNotFound):
        await store.read_run_events(T, session.id, "r2")


async def test_idempotency_key_is_put_if_absent(store: Store) -> None:
    results = await asyncio.gather(
        *(store.claim_idempotency_key(T, "submit", "key-1", f"fp-{n}", f"run-{n}", 60.0)
          for n in range(20))
    )
    winners = [record for stored, record in results if stored]
    assert len(winners) == 1
    won = winners[0]
    assert won.expires_at == pytest.approx(won.created_at + 60.0)
    assert all(record == won for _, record in results)
    stored, again = await store.claim_idempotency_key(T, "submit", "key-1", "other", "x", 60.0)
    assert not stored and again == won
    # Keys are per tenant and per scope.
    assert (await store.claim_idempotency_key("tenant-b", "submit", "key-1", "f", "v", 60.0))[0]
    assert (await store.claim_idempotency_key(T, "schedule", "key-1", "f", "v", 60.0))[0]
    assert (await store.claim_idempotency_key(T, "sub", "mit:key-1", "f", "v", 60.0))[0]
    # An expired record is absent, and the sweep removes it.
    assert (await store.claim_idempotency_key(T, "submit", "short", "f1", "v1", 0.05))[0]

    async def expired() -> bool:
        stored, _ = await store.claim_idempotency_key(T, "submit", "short", "f2", "v2", 60.0)
        return stored

    await until(expired)
    _, record = await store.claim_idempotency_key(T, "submit", "short", "f3", "v3", 60.0)
    assert (record.fingerprint, record.value) == ("f2", "v2")
    await store.expire_sessions(time.time() + 3600)
    if store.backend != "redis":  # Redis: a native TTL removes it, on the Redis clock
        assert (await store.claim_idempotency_key(T, "submit", "key-1", "f4", "v4", 60.0))[0]


async def test_agent_states_survive_a_restart(store: Store) -> None:
    assert await store.agent_states() == {}
    await store.set_agent_state("*", "helper", "paused")
    await store.set_agent_state("tenant-b", "helper", "stopped")
    await store.set_agent_state("*", "a:b", "running")
    await store.set_agent_state("*", "helper", "running")  # the latest wins
    expected = {("*", "helper"): "running", ("tenant-b", "helper"): "stopped",
                ("*", "a:b"): "running"}
    assert await store.agent_states() == expected
    other = sibling(store)
    if other is None:  # memory: close() keeps the data
        await store.close()
        await store.open()
        assert await store.agent_states() == expected
        return
    await other.open()
    try:
        assert await other.agent_states() == expected
    finally:
        await other.close()


async def test_a_child_runs_parent_round_trips(store: Store) -> None:
    session = await make_session(store)
    child = RunRecord(id=new_id("r"), session_id=session.id, agent="helper",
                      parent_run_id="run_parent")
    await store.put_run(child)
    assert (await store.get_run(T, child.id)).parent_run_id == "run_parent"
    v = await store.append(T, session.id, [Event(type="run.started", run_id=child.id)], 0,
                           run=child)
    child.status = "completed"
    await store.append(T, session.id, [Event(type="run.completed", run_id=child.id)], v,
                       run=child)
    assert await store.get_run(T, child.id) == child
    [listed] = await store.list_runs(T, session_id=session.id)
    assert listed.parent_run_id == "run_parent"
