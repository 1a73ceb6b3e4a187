"""Long runs and per-run budgets in one process (the SIGKILL test is in tests/e2e)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from roost import Agent, Runtime, Settings
from roost.agent import Limits
from roost.engine.run_budget import RunBudget
from roost.testing.scripted import ScriptedModel, call
from roost.tools import tool
from tests.runtime.long_run_agent import long_agent


async def test_a_long_run_compacts_its_context_as_it_grows(tmp_path: Path) -> None:
    steps = 200
    agent = long_agent(steps)
    rt = Runtime(Settings(store={"url": f"sqlite:///{tmp_path / 'r.db'}"}), [agent])
    await rt.start()
    try:
        session = await rt.create_session("default", "long")
        async with asyncio.timeout(60):
            run = await (await rt.submit_turn("default", session.id, "go")).wait()
        assert run.status == "completed", run.error
        assert run.output == f"all {steps} steps done"
        log = await rt.store.read_run_events("default", session.id, run.id, limit=10_000)
        assert sum(e.type == "tool.result" for e in log) == steps
        compactions = [e for e in log if e.type == "compaction"]
        assert len(compactions) >= 5, "the context was never compacted within the run"
        # The model's context stayed bounded (the trigger's worth of messages, ~90): without
        # compaction the last request would carry all 400 of the run's messages.
        model = agent.model
        assert isinstance(model, ScriptedModel)
        longest = max(len(r.messages) for r in model.requests
                      if r.metadata.get("purpose") != "compaction")
        assert longest < 120, longest
    finally:
        await rt.close()


calls: list[int] = []


@tool
async def work(n: int) -> str:
    """Work."""
    calls.append(n)
    await asyncio.sleep(0)
    return f"worked {n}"


async def run_with(agent: Agent, budget: RunBudget | None) -> tuple[Runtime, str, object]:
    rt = Runtime(Settings(store={"url": "memory://"}), [agent])
    await rt.start()
    session = await rt.create_session("default", agent.name)
    async with asyncio.timeout(10):
        run = await (await rt.submit_turn("default", session.id, "go", budget=budget)).wait()
    return rt, session.id, run


async def test_max_tool_calls_stops_the_run_and_the_session_stays_usable() -> None:
    calls.clear()
    model = ScriptedModel([call("work", n=1), call("work", n=2), call("work", n=3),
                           "never", "second turn answer"])
    agent = Agent(name="w", model=model, tools=[work])
    rt, session_id, run = await run_with(agent, RunBudget(max_tool_calls=2))
    try:
        assert run.status == "budget_exceeded"  # type: ignore[attr-defined]
        assert run.error["type"] == "budget_exceeded"  # type: ignore[attr-defined]
        assert run.error["budget"] == "max_tool_calls"  # type: ignore[attr-defined]
        assert calls == [1, 2]
        stored = await rt.store.get_run("default", run.id)  # type: ignore[attr-defined]
        assert stored.status == "budget_exceeded"
        log = await rt.store.read_events("default", session_id, limit=100)
        assert log[-1].type == "run.failed" and log[-1].data["error"]["budget"] == "max_tool_calls"
        started = next(e for e in log if e.type == "run.started")
        assert started.data["budget"] == {"max_tool_calls": 2}
        # The dangling call is closed in the window: the next turn runs normally.
        again = await (await rt.submit_turn("default", session_id, "next")).wait()
        assert again.status == "completed"
    finally:
        await rt.close()


async def test_max_tokens_stops_the_run() -> None:
    model = ScriptedModel([call("work", n=1)], repeat_last=True)
    agent = Agent(name="t", model=model, tools=[work], limits=Limits(max_steps=100))
    rt, _, run = await run_with(agent, RunBudget(max_tokens=30))
    try:
        assert run.status == "budget_exceeded"  # type: ignore[attr-defined]
        assert run.error["budget"] == "max_tokens"  # type: ignore[attr-defined]
        assert 1 < model.calls < 100
    finally:
        await rt.close()


async def test_max_duration_stops_a_run_in_flight() -> None:
    @tool
    async def slow() -> str:
        """Slow."""
        await asyncio.sleep(30)
        return "slow"

    agent = Agent(name="d", model=ScriptedModel([call("slow"), "never"]), tools=[slow])
    rt, _, run = await run_with(agent, RunBudget(max_duration_s=0.3))
    try:
        assert run.status == "budget_exceeded"  # type: ignore[attr-defined]
        assert run.error["budget"] == "max_duration_s"  # type: ignore[attr-defined]
    finally:
        await rt.close()


async def test_the_agent_limits_cap_and_default_the_budget() -> None:
    calls.clear()
    model = ScriptedModel([call("work", n=1), call("work", n=2), "never"])
    agent = Agent(name="c", model=model, tools=[work], limits=Limits(max_tool_calls=1))
    rt, _, run = await run_with(agent, RunBudget(max_tool_calls=50))
    try:
        assert run.status == "budget_exceeded"  # type: ignore[attr-defined]
        assert calls == [1]
    finally:
        await rt.close()
    assert RunBudget.resolve(None, RunBudget(max_cost=1.0)) == RunBudget(max_cost=1.0)
    assert RunBudget.resolve(RunBudget(max_cost=5.0), RunBudget(max_cost=1.0)) == RunBudget(
        max_cost=1.0)
    assert RunBudget.resolve(None, None) is None
