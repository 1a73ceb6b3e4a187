"""Agents as tools: child runs under the parent's slot, deadline and cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roost import Agent, Runtime, Settings, tool
from roost.tools.agent_tool import AgentTool

gate = asyncio.Event()
digging = asyncio.Event()


@tool
async def dig(topic: str) -> str:
    """Dig into a topic.

    Args:
        topic: What to dig into.
    """
    digging.set()
    await gate.wait()
    return f"notes on {topic}"


def agents() -> list[Agent]:
    digger = Agent(name="digger", model="demo", tools=[dig], description="Digs into topics.")
    return [digger, Agent(name="boss", model="demo", tools=[digger.as_tool(timeout_s=60)])]


@pytest.fixture
async def runtime() -> AsyncIterator[Runtime]:
    global gate, digging
    gate, digging = asyncio.Event(), asyncio.Event()
    rt = Runtime(Settings(store={"url": "memory://"}, admission={"max_running": 1}), agents())
    await rt.start()
    yield rt
    await rt.close()


async def test_a_child_runs_under_its_parents_slot_at_max_running_1(runtime: Runtime) -> None:
    gate.set()
    session = await runtime.create_session("default", "boss")
    async with asyncio.timeout(10):  # a child waiting for its parent's slot would hang here
        run = await (await runtime.submit_turn("default", session.id, "ask the digger "
                                               "about owls")).wait()
    assert run.status == "completed", run.error
    events = await runtime.store.read_events("default", session.id, limit=100)
    [result] = [e for e in events if e.type == "tool.result"]
    assert result.data["outcome"] == "ok" and "notes on" in result.data["content"]
    children = (await runtime.list_sessions("default", agent="digger")).items
    [child] = children
    assert child.metadata["parent_run_id"] == run.id
    child_events = await runtime.store.read_events("default", child.id, limit=100)
    assert child_events[0].data["parent_run_id"] == run.id
    child_run = await runtime.get_run("default", child_events[0].run_id)
    assert child_run.parent_run_id == run.id
    # Usage rolled up: the parent's own two model calls plus the child's.
    own = sum(e.data["usage"]["input_tokens"] for e in events
              if e.type == "message" and e.data.get("role") == "assistant")
    assert run.usage.input_tokens == own + child_run.usage.input_tokens
    assert runtime.admission.statistics().running == 0


async def test_cancelling_the_parent_cancels_the_child(runtime: Runtime) -> None:
    session = await runtime.create_session("default", "boss")
    handle = await runtime.submit_turn("default", session.id, "ask the digger about owls")
    async with asyncio.timeout(10):
        await digging.wait()  # the child run is inside its tool
    [child] = [h for h in runtime.runs.values() if h.run.parent_run_id == handle.run.id]
    handle.cancel("user")
    async with asyncio.timeout(10):
        assert (await handle.wait()).status == "cancelled"
        assert (await child.wait()).status == "cancelled"


async def test_the_child_gets_the_parents_remaining_deadline(runtime: Runtime) -> None:
    session = await runtime.create_session("default", "boss")
    async with asyncio.timeout(10):
        run = await (await runtime.submit_turn("default", session.id, "ask the digger about "
                                               "owls", timeout_s=0.5)).wait()
    assert run.status == "timed_out"
    [child] = (await runtime.list_sessions("default", agent="digger")).items
    events = await runtime.store.read_events("default", child.id, limit=100)
    child_run = await runtime.get_run("default", events[0].run_id)
    assert child_run.status in ("timed_out", "cancelled")
    assert child_run.deadline is not None and child_run.deadline <= run.deadline + 0.01  # type: ignore[operator]


def test_bad_arguments_are_shown_to_the_model() -> None:
    with pytest.raises(Exception, match="invalid arguments"):
        asyncio.run(AgentTool("x").call('{"input": ""}', None))  # type: ignore[arg-type]
