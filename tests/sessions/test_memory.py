"""What MemoryStore promises beyond the contract: it behaves like a serialising backend."""

from __future__ import annotations

import asyncio

import pytest

from roost.errors import ConfigError, StoreUnavailable, VersionConflict
from roost.sessions import Event, RunRecord, Session, open_store
from roost.sessions.memory import MemoryStore

T = "default"


async def test_url_and_options() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    with pytest.raises(ConfigError) as info:
        open_store("memory://", busy_timeout_s=1)
    assert info.value.problems == [("store.options.busy_timeout_s", "unknown option")]


async def test_needs_open_and_keeps_data_across_close() -> None:
    store = MemoryStore()
    with pytest.raises(StoreUnavailable):
        await store.get_session(T, "s")
    await store.open()
    await store.create_session(Session(id="s", agent="a"))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.append(T, "s", [Event(type="message")], 0)
    await store.open()
    assert (await store.get_session(T, "s")).version == 0


async def test_records_are_copied_through_json() -> None:
    store = MemoryStore()
    await store.open()
    # What JSON turns a value into is what every real backend returns: tuples become lists.
    await store.create_session(Session(id="s", agent="a", state={"t": (1, 2)}))
    assert (await store.get_session(T, "s")).state == {"t": [1, 2]}
    event = Event(type="message", data={"content": ["x"]})
    run = RunRecord(id="r", session_id="s", agent="a")
    await store.append(T, "s", [event], 0, run=run)
    event.data["content"].append("mutated after append")
    run.status = "mutated after append"
    assert (await store.read_events(T, "s"))[0].data == {"content": ["x"]}
    assert (await store.get_run(T, "r")).status == "queued"
    read = await store.tail_events(T, "s", 1)
    read[0].data["content"].append("mutated after read")
    assert (await store.read_events(T, "s"))[0].data == {"content": ["x"]}


async def test_concurrent_callers_interleave_between_calls_only() -> None:
    # Every method yields once before its atomic step, like a networked backend: two
    # writers that read the same version really race, and exactly one wins.
    store = MemoryStore()
    await store.open()
    await store.create_session(Session(id="s", agent="a"))
    results = await asyncio.gather(
        store.append(T, "s", [Event(type="message")], 0),
        store.append(T, "s", [Event(type="message")], 0),
        return_exceptions=True,
    )
    assert sorted(map(type, results), key=str) == sorted([int, VersionConflict], key=str)
    assert (await store.get_session(T, "s")).last_seq == 1


async def test_run_moved_between_sessions_follows_deletes() -> None:
    store = MemoryStore()
    await store.open()
    for sid in ("a", "b"):
        await store.create_session(Session(id=sid, agent="x"))
    await store.put_run(RunRecord(id="r", session_id="a", agent="x"))
    await store.put_run(RunRecord(id="r", session_id="b", agent="x"))
    assert await store.list_runs(T, session_id="a") == []
    await store.delete_session(T, "a")
    assert (await store.get_run(T, "r")).session_id == "b"
    await store.delete_session(T, "b")
    assert await store.list_runs(T) == []
