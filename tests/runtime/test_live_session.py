"""The one owner of a hot session: loaded once, the only writer, settles lost acks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roost import Agent, Policies, Runtime, Settings
from roost.errors import SessionMoved, StoreUnavailable
from roost.runtime.cache import SessionCache
from roost.runtime.live_session import LiveSession, LiveSessions
from roost.sessions import Event, Session, open_store
from roost.sessions.memory import MemoryStore
from roost.testing.scripted import ScriptedModel, call
from roost.tools import tool


class CountingStore(MemoryStore):
    """A memory store that counts session loads and can fail the next appends."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.fail_appends = 0
        self.lose_acks = 0  # appends that commit, then raise as if the reply were lost
        self.load_gate: asyncio.Event | None = None

    async def get_session(self, tenant: str, session_id: str) -> Session:
        self.loads += 1
        if self.load_gate is not None:
            await self.load_gate.wait()
        return await super().get_session(tenant, session_id)

    async def append(self, tenant: str, session_id: str, events: list[Event],
                     expected_version: int, run: Any = None) -> int:
        if self.fail_appends:
            self.fail_appends -= 1
            raise StoreUnavailable("the store is down (test)")
        version = await super().append(tenant, session_id, events, expected_version, run=run)
        if self.lose_acks:
            self.lose_acks -= 1
            raise StoreUnavailable("the acknowledgement was lost (test)")
        return version


async def test_two_turns_on_a_cold_session_load_it_once() -> None:
    store = CountingStore()
    await store.open()
    await store.create_session(Session(id="s1", agent="a"))
    sessions = LiveSessions(store, SessionCache())
    store.load_gate = asyncio.Event()
    first = asyncio.ensure_future(sessions.get("default", "s1", lambda name: Agent(name).policies))
    second = asyncio.ensure_future(sessions.get("default", "s1", lambda name: Agent(name).policies))
    await asyncio.sleep(0)
    store.load_gate.set()
    one, two = await asyncio.gather(first, second)
    assert one is two
    assert store.loads == 1


async def test_cold_turns_arriving_together_both_complete() -> None:
    """Two turns for an uncached session at once: one load, both runs complete in order
    (the second used to fail with session_moved on a second loaded copy)."""
    store = CountingStore()
    agent = Agent(name="a", model=ScriptedModel(["done"], repeat_last=True),
                  policies=Policies(double_texting="enqueue"))
    runtime = Runtime(Settings(store={"url": "memory://"}), [agent], store=store)
    await runtime.start()
    try:
        session = await store.create_session(Session(id="cold", agent="a"))
        handles = await asyncio.gather(*(runtime.submit_turn("default", session.id, f"t{i}")
                                         for i in range(2)))
        runs = [await h.wait() for h in handles]
        assert [r.status for r in runs] == ["completed", "completed"]
        assert store.loads == 1
    finally:
        await runtime.close()


async def test_an_append_whose_ack_was_lost_counts_as_written() -> None:
    store = CountingStore()
    await store.open()
    session = await store.create_session(Session(id="s", agent="a"))
    live = LiveSession(store, session, [], Agent("a").policies)
    store.lose_acks = 1
    events = [Event(type="message", run_id="r1", data={"role": "user", "content": "hi"})]
    await live.append(events)
    assert events[0].seq == 1 and live.session.last_seq == 1
    stored = await store.read_events("default", "s")
    assert len(stored) == 1  # written once, not twice
    await live.append([Event(type="run.completed", run_id="r1")])
    assert live.session.last_seq == 2


async def test_an_append_that_did_not_land_raises_and_can_be_retried() -> None:
    store = CountingStore()
    await store.open()
    session = await store.create_session(Session(id="s", agent="a"))
    live = LiveSession(store, session, [], Agent("a").policies)
    store.fail_appends = 1
    events = [Event(type="message", run_id="r1", data={"role": "user", "content": "hi"})]
    with pytest.raises(StoreUnavailable):
        await live.append(events)
    await live.append(events)
    assert [e.seq for e in await store.read_events("default", "s")] == [1]


async def test_another_writer_moves_the_session() -> None:
    store = open_store("memory://")
    await store.open()
    session = await store.create_session(Session(id="s", agent="a"))
    live = LiveSession(store, session, [], Agent("a").policies)
    await store.append("default", "s", [Event(type="message", run_id="other")], 0)
    with pytest.raises(SessionMoved):
        await live.append([Event(type="message", run_id="mine")])
    await live.reload()
    await live.append([Event(type="message", run_id="mine")])
    assert live.session.last_seq == 2


@tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


async def test_store_outage_while_recording_parallel_tool_results_is_store_unavailable() -> None:
    """Two parallel tool results, the store down: the run fails `store_unavailable` (the
    server answers 503), not `internal_error` from an ExceptionGroup."""
    store = CountingStore()
    model = ScriptedModel([[call("lookup", key="a"), call("lookup", key="b")], "done"])
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="a", model=model, tools=[lookup])], store=store)
    await runtime.start()
    try:
        session = await runtime.create_session("default", "a")

        original = store.append

        async def fail_on_tool_results(tenant: str, session_id: str, events: list[Event],
                                       expected_version: int, run: Any = None) -> int:
            if events and events[0].type == "tool.result":
                raise StoreUnavailable("the store is down (test)")
            return await original(tenant, session_id, events, expected_version, run=run)

        store.append = fail_on_tool_results  # type: ignore[method-assign]
        run = await (await runtime.submit_turn("default", session.id, "go")).wait()
        assert run.status == "failed"
        assert run.error is not None and run.error["type"] == "store_unavailable"
    finally:
        await runtime.close()


async def test_the_last_run_of_a_long_session_replays_whole() -> None:
    """A session of more than 1,000 events: the replay of its last run has every event
    (it used to read the session's first 1,000 events, then filter by run)."""
    from roost.sessions import RunRecord

    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="a", model=ScriptedModel(["ok"], repeat_last=True))])
    await runtime.start()
    try:
        session = await runtime.create_session("default", "a")
        version = (await runtime.store.get_session("default", session.id)).version
        old = [Event(type="message", run_id="run_old", data={"role": "user", "content": "x"})
               for _ in range(1200)]
        version = await runtime.store.append("default", session.id, old, version)
        mine = [Event(type="message", run_id="run_last", data={"role": "user", "content": "y"})
                for _ in range(5)]
        await runtime.store.append("default", session.id, mine, version)
        run = RunRecord(id="run_last", session_id=session.id, agent="a")
        replay = await runtime.read_run_events("default", run)
        assert [e.seq for e in replay] == list(range(1201, 1206))
        assert [e.seq for e in await runtime.read_run_events("default", run, after=1203)] == [
            1204, 1205]
    finally:
        await runtime.close()
