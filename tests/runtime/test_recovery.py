"""Resume at the run's own place in the log, or not at all."""

from __future__ import annotations

import asyncio

import pytest

from roost import Agent, Runtime, Settings
from roost.errors import Conflict
from roost.testing.scripted import ScriptedModel, call
from roost.tools import tool


async def test_a_crashed_run_is_closed_not_resumed_after_the_session_moved_on() -> None:
    """Run A is interrupted mid-tool; run B of the same session completes; resuming A
    must not append its steps after B's: A is closed (interrupted, orphaned) instead."""
    inside = asyncio.Event()

    @tool
    async def work() -> str:
        """Work."""
        inside.set()
        await asyncio.sleep(30)
        return "worked"

    agent = Agent(name="w", model=ScriptedModel([call("work"), "answer for B"]), tools=[work])
    first = Runtime(Settings(store={"url": "memory://"}), [agent])
    await first.start()
    session = await first.create_session("default", "w")
    handle = await first.submit_turn("default", session.id, "A")
    async with asyncio.timeout(5):
        await inside.wait()
    await first.drain(grace_s=0)
    a = await handle.wait()
    assert a.status == "interrupted"

    second = Runtime(Settings(store={"url": "memory://"}), [agent], store=first.store)
    await second.start()
    try:
        b = await (await second.submit_turn("default", session.id, "B")).wait()
        assert b.status == "completed"
        with pytest.raises(Conflict, match="moved on"):
            await second.resume_run("default", a.id)
        closed = await second.store.get_run("default", a.id)
        assert closed.status == "interrupted" and closed.error is not None
        assert closed.error["type"] == "orphaned" and closed.owner is None
        log = await second.store.read_events("default", session.id, limit=100)
        runs = [e.run_id for e in log]
        last_of_a = max(i for i, r in enumerate(runs) if r == a.id)
        assert all(r == b.id for r in runs[last_of_a + 1:]), "A's steps came after B's"
        # Resuming it again is refused: it is no longer resumable where it stands.
        with pytest.raises(Conflict):
            await second.resume_run("default", a.id)
    finally:
        await second.close()
        await first.close()
