from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roost import Agent, Policies, Runtime, Settings
from roost.errors import SessionBusy
from roost.testing.scripted import ScriptedModel, call
from roost.tools import tool


def make_runtime(*agents: Agent, **settings: Any) -> Runtime:
    return Runtime(Settings(store={"url": "memory://"}, **settings), agents)


@pytest.fixture
async def started() -> AsyncIterator[Callable[..., Any]]:
    runtimes: list[Runtime] = []

    async def start(*agents: Agent, **settings: Any) -> Runtime:
        runtime = make_runtime(*agents, **settings)
        await runtime.start()
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.close()


def slow_agent(policy: str, delay: float = 0.05, name: str = "slow") -> Agent:
    return Agent(name=name, model=ScriptedModel(["ok"], delay_s=delay, repeat_last=True),
                 policies=Policies(double_texting=policy, max_pending_turns=3))  # type: ignore[arg-type]


async def test_reject_policy_gives_409_while_busy(started: Callable[..., Any]) -> None:
    runtime = await started(slow_agent("reject"))
    session = await runtime.create_session("default", "slow")
    first = await runtime.submit_turn("default", session.id, "one")
    with pytest.raises(SessionBusy):
        await runtime.submit_turn("default", session.id, "two")
    assert (await first.wait()).status == "completed"
    second = await runtime.submit_turn("default", session.id, "three")
    assert (await second.wait()).status == "completed"


async def test_enqueue_policy_runs_in_order_and_is_bounded(started: Callable[..., Any]) -> None:
    runtime = await started(slow_agent("enqueue"))
    session = await runtime.create_session("default", "slow")
    handles = [await runtime.submit_turn("default", session.id, f"turn {i}") for i in range(4)]
    with pytest.raises(SessionBusy, match="3 turns waiting"):
        await runtime.submit_turn("default", session.id, "one too many")
    runs = [await h.wait() for h in handles]
    assert [r.status for r in runs] == ["completed"] * 4
    events = await runtime.store.read_events("default", session.id, limit=1000)
    order = [e.run_id for e in events if e.type == "run.started"]
    assert order == [r.id for r in runs]


async def test_interrupt_policy_cancels_the_active_run(started: Callable[..., Any]) -> None:
    runtime = await started(slow_agent("interrupt", delay=0.5))
    session = await runtime.create_session("default", "slow")
    first = await runtime.submit_turn("default", session.id, "one")
    await asyncio.sleep(0.05)
    second = await runtime.submit_turn("default", session.id, "two")
    assert (await first.wait()).status == "cancelled"
    assert (await second.wait()).status == "completed"
    events = await runtime.store.read_events("default", session.id, limit=1000)
    assert [e.type for e in events if e.type.startswith("run.")] == [
        "run.started", "run.cancelled", "run.started", "run.completed"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=st.sampled_from(["reject", "enqueue", "interrupt"]),
       arrivals=st.lists(st.floats(min_value=0, max_value=0.02), min_size=2, max_size=6))
async def test_no_policy_ever_interleaves_two_runs(policy: str, arrivals: list[float]) -> None:
    runtime = make_runtime(slow_agent(policy, delay=0.01))
    await runtime.start()
    try:
        session = await runtime.create_session("default", "slow")
        handles = []
        for gap in arrivals:
            await asyncio.sleep(gap)
            with contextlib.suppress(SessionBusy):
                handles.append(await runtime.submit_turn("default", session.id, "hi"))
        for handle in handles:
            await handle.wait()
        events = await runtime.store.read_events("default", session.id, limit=10_000)
        # Each run's events form one contiguous block of the log.
        blocks: list[str] = []
        for event in events:
            if not blocks or blocks[-1] != event.run_id:
                blocks.append(event.run_id)  # type: ignore[arg-type]
        assert len(blocks) == len(set(blocks)), blocks
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
    finally:
        await runtime.close()


async def test_paused_agent_rejects_or_queues_then_resumes(started: Callable[..., Any]) -> None:
    from roost.runtime.runtime import AgentUnavailable

    queueing = Agent(name="q", model=ScriptedModel(["ok"], repeat_last=True),
                     policies=Policies(when_paused="queue"))
    rejecting = Agent(name="r", model=ScriptedModel(["ok"], repeat_last=True))
    runtime = await started(queueing, rejecting)
    sq = await runtime.create_session("default", "q")
    sr = await runtime.create_session("default", "r")
    runtime.set_agent_state("q", "pause")
    runtime.set_agent_state("r", "pause")
    with pytest.raises(AgentUnavailable, match="paused"):
        await runtime.submit_turn("default", sr.id, "hi")
    waiting = await runtime.submit_turn("default", sq.id, "hi")
    await asyncio.sleep(0.05)
    assert waiting.run.status == "queued" and not waiting.done.done()
    runtime.set_agent_state("q", "resume")
    assert (await waiting.wait()).status == "completed"
    runtime.set_agent_state("r", "stop")
    with pytest.raises(AgentUnavailable, match="stopped"):
        await runtime.submit_turn("default", sr.id, "hi")


async def test_drain_interrupts_leftovers_and_resume_continues(started: Callable[..., Any]) -> None:
    counts = {"n": 0}
    release = asyncio.Event()

    @tool
    async def work() -> str:
        """Work."""
        counts["n"] += 1
        if counts["n"] == 1:
            await asyncio.sleep(30)
        return "worked"

    agent = Agent(name="w", model=ScriptedModel([call("work"), "finished"]), tools=[work])
    runtime = await started(agent)
    session = await runtime.create_session("default", "w")
    handle = await runtime.submit_turn("default", session.id, "go")
    await asyncio.sleep(0.05)
    await runtime.drain(grace_s=0.05)
    run = await handle.wait()
    assert run.status == "interrupted"
    release.set()
    with pytest.raises(Exception, match="shutting down"):
        await runtime.submit_turn("default", session.id, "more")
    # A new runtime over the same store resumes it (the store outlives the first runtime).
    second = Runtime(Settings(), [agent], store=runtime.store)
    second.started = True
    resumed = await second.resume_run("default", run.id)
    final = await resumed.wait()
    assert final.status == "completed" and final.output == "finished" and final.attempt == 2
    assert counts["n"] == 2
    await second.drain(0)


async def test_deadline_in_the_session_queue_never_starts(started: Callable[..., Any]) -> None:
    runtime = await started(slow_agent("enqueue", delay=0.5))
    session = await runtime.create_session("default", "slow")
    first = await runtime.submit_turn("default", session.id, "one")
    second = await runtime.submit_turn("default", session.id, "two", timeout_s=0.05)
    assert (await second.wait()).status == "timed_out"
    assert (await first.wait()).status == "completed"
    events = await runtime.store.read_events("default", session.id, limit=100)
    assert second.run.id not in {e.run_id for e in events}
    assert (await runtime.store.get_run("default", second.run.id)).status == "timed_out"


async def test_cancel_run_by_id(started: Callable[..., Any]) -> None:
    runtime = await started(slow_agent("enqueue", delay=5))
    session = await runtime.create_session("default", "slow")
    handle = await runtime.submit_turn("default", session.id, "one")
    await asyncio.sleep(0.02)
    run = await runtime.cancel_run("default", handle.run.id)
    assert run.status == "cancelled"
    assert (await runtime.get_run("default", handle.run.id)).status == "cancelled"


async def test_sessions_are_tenant_scoped(started: Callable[..., Any]) -> None:
    from roost.errors import SessionNotFound

    runtime = await started(slow_agent("enqueue", delay=0))
    session = await runtime.create_session("acme", "slow")
    with pytest.raises(SessionNotFound):
        await runtime.submit_turn("default", session.id, "hi")
    handle = await runtime.submit_turn("acme", session.id, "hi")
    assert (await handle.wait()).tenant == "acme"


async def test_ttl_sweep_deletes_expired_sessions(started: Callable[..., Any]) -> None:
    runtime = await started(slow_agent("enqueue", delay=0), sessions={"ttl_s": 0.05})
    session = await runtime.create_session("default", "slow")
    assert session.expires_at is not None
    await asyncio.sleep(0.1)
    assert await runtime.sweep() == 1
    from roost.errors import SessionNotFound

    with pytest.raises(SessionNotFound):
        await runtime.get_session("default", session.id)


async def test_history_survives_cache_eviction(started: Callable[..., Any]) -> None:
    model = ScriptedModel(["first answer", "second answer"])
    agent = Agent(name="h", model=model)
    runtime = await started(agent, sessions={"cache_max_sessions": 1})
    session = await runtime.create_session("default", "h")
    await (await runtime.submit_turn("default", session.id, "first")).wait()
    await runtime.create_session("default", "h")  # evicts the first session
    assert runtime.cache.get("default", session.id) is None
    await (await runtime.submit_turn("default", session.id, "second")).wait()
    history = [(m.role, m.content) for m in model.requests[1].messages]
    assert history == [("user", "first"), ("assistant", "first answer"), ("user", "second")]


async def test_compaction_summarises_old_history_and_survives_a_cold_load(
        started: Callable[..., Any]) -> None:
    from roost.engine.compaction import CompactionPolicy

    answers = [f"answer {i} " + "y" * 300 for i in range(6)]
    model = ScriptedModel(answers[:3] + ["SUMMARY: the user asked three questions"] + answers[3:],
                          repeat_last=True)
    agent = Agent(name="c", model=model, policies=Policies(
        history_token_budget=4000,
        compaction=CompactionPolicy(trigger_tokens=400, keep_tokens=150)))
    runtime = await started(agent)
    session = await runtime.create_session("default", "c")
    for i in range(3):
        handle = await runtime.submit_turn("default", session.id, f"question {i} " + "x" * 300)
        await handle.wait()
    # Wait until the compaction event lands (it runs after the client got its answer).
    for _ in range(100):
        events = await runtime.store.read_events("default", session.id, limit=1000)
        if any(e.type == "compaction" for e in events):
            break
        await asyncio.sleep(0.01)
    compaction = next(e for e in events if e.type == "compaction")
    assert "SUMMARY" in compaction.data["summary"]
    runtime.cache.discard("default", session.id)  # force a cold load from the log
    await (await runtime.submit_turn("default", session.id, "question 3")).wait()
    sent = model.requests[-1].messages
    assert sent[0].role == "system" and "SUMMARY" in (sent[0].content or "")
    assert "question 0" not in " ".join(m.content or "" for m in sent[1:])
    # Raw events stay in the store.
    assert sum(1 for e in events if e.type == "message" and e.data["role"] == "user") == 3
