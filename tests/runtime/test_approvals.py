"""Human in the loop in one process (the fleet tests are in tests/e2e/test_approvals.py):
a gated call pauses the run before it runs; a decision resumes it from the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roost import Agent, Runtime, Settings
from roost.agent import Policies
from roost.engine.approval import ApprovalPolicy
from roost.errors import Conflict, InvalidInput
from roost.runtime.approvals import DecisionRequest
from roost.runtime.handle import RunHandle
from roost.sessions.records import RunRecord
from roost.testing.scripted import ScriptedModel, call
from roost.tools import tool
from roost.tools.ask_user import ask_user

executed: list[dict[str, object]] = []


@tool(requires_approval=True)
async def transfer(amount: int, to: str) -> str:
    """Move money.

    Args:
        amount: How much.
        to: To whom.
    """
    executed.append({"amount": amount, "to": to})
    return f"sent {amount} to {to}"


@tool
async def lookup(name: str) -> str:
    """Look a name up."""
    return f"{name} is known"


def settings(tmp_path: Path | None = None, **runtime: object) -> Settings:
    url = f"sqlite:///{tmp_path / 'roost.db'}" if tmp_path else "memory://"
    return Settings(store={"url": url}, runtime={"takeover_interval_s": 0.05, **runtime})


async def started(agent: Agent, tmp_path: Path | None = None, **runtime: object) -> Runtime:
    rt = Runtime(settings(tmp_path, **runtime), [agent])
    await rt.start()
    return rt


async def wait_status(rt: Runtime, run_id: str, status: str) -> RunRecord:
    """Poll the store (another task of the runtime changes it) until the run has `status`."""
    async with asyncio.timeout(5):
        while True:
            run = await rt.store.get_run("default", run_id)
            if run.status == status:
                return run
            await asyncio.sleep(0.01)


async def finish(handle: RunHandle) -> RunRecord:
    async with asyncio.timeout(10):
        return await handle.wait()


@pytest.fixture(autouse=True)
def _clear() -> None:
    executed.clear()


async def test_a_gated_call_waits_and_an_approval_runs_it(tmp_path: Path) -> None:
    model = ScriptedModel([[call("lookup", name="Bob"), call("transfer", amount=5, to="Bob")],
                           "done"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer, lookup]), tmp_path)
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay Bob"))
        assert run.status == "waiting" and run.owner is None
        assert not executed and not rt.runs, "a waiting run holds no task"
        assert rt.admission.statistics().running == 0, "a waiting run holds no slot"
        log = await rt.store.read_events("default", session.id, limit=100)
        types = [e.type for e in log]
        # The ungated call of the same step ran; the gated one waits.
        assert types[-3:] == ["tool.result", "approval.required", "run.waiting"]
        required = log[-2].data
        assert required["name"] == "transfer" and required["kind"] == "approval"
        stored = await rt.store.get_run("default", run.id)
        assert stored.status == "waiting" and stored.lease_expires_at is not None

        resumed = await rt.decide_run("default", run.id, [DecisionRequest("approve")])
        done = await finish(resumed)
        assert done.status == "completed" and done.output == "done"
        assert executed == [{"amount": 5, "to": "Bob"}]
        with pytest.raises(Conflict):  # decided once
            await rt.decide_run("default", run.id, [DecisionRequest("approve")])
    finally:
        await rt.close()


async def test_reject_with_reason_is_the_tool_result_the_model_reads() -> None:
    model = ScriptedModel([call("transfer", amount=500, to="Eve"), "ok, not sent"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer]))
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay Eve"))
        done = await finish(await rt.decide_run(
            "default", run.id, [DecisionRequest("reject", reason="Eve is a fraudster")]))
        assert done.status == "completed" and not executed
        tool_messages = [m for m in model.requests[-1].messages if m.role == "tool"]
        assert tool_messages[-1].content == "Rejected by a person: Eve is a fraudster"
    finally:
        await rt.close()


async def test_edited_arguments_are_validated_then_used() -> None:
    model = ScriptedModel([call("transfer", amount=500, to="Eve"), "sent"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer]))
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay"))
        with pytest.raises(InvalidInput) as bad:
            await rt.decide_run("default", run.id, [DecisionRequest(
                "approve", arguments={"amount": "lots", "to": "Eve"})])
        assert bad.value.field == "arguments.amount"
        with pytest.raises(InvalidInput) as unknown:
            await rt.decide_run("default", run.id, [DecisionRequest("approve", call_id="nope")])
        assert unknown.value.field == "call_id"
        assert (await rt.store.get_run("default", run.id)).status == "waiting"
        done = await finish(await rt.decide_run("default", run.id, [DecisionRequest(
            "approve", arguments={"amount": 50, "to": "Eve"})]))
        assert done.status == "completed"
        assert executed == [{"amount": 50, "to": "Eve"}]
    finally:
        await rt.close()


async def test_policy_predicate_gates_only_matching_arguments() -> None:
    @tool
    async def pay(amount: int) -> str:
        """Pay."""
        executed.append({"amount": amount})
        return "paid"

    policy = ApprovalPolicy.from_config(
        {"tools": {"pay": {"when": [{"arg": "amount", "op": ">", "value": 100}]}}})
    model = ScriptedModel([call("pay", amount=10), "small", call("pay", amount=1000), "big"])
    rt = await started(Agent(name="p", model=model, tools=[pay],
                             policies=Policies(approval=policy)))
    try:
        session = await rt.create_session("default", "p")
        small = await finish(await rt.submit_turn("default", session.id, "pay 10"))
        assert small.status == "completed" and executed == [{"amount": 10}]
        big = await finish(await rt.submit_turn("default", session.id, "pay 1000"))
        assert big.status == "waiting" and executed == [{"amount": 10}]
    finally:
        await rt.close()


async def test_timeout_applies_the_configured_outcome() -> None:
    policy = ApprovalPolicy(timeout_s=0.2, on_timeout="approve")
    model = ScriptedModel([call("transfer", amount=1, to="Al"), "done"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer],
                             policies=Policies(approval=policy)))
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay"))
        assert run.status == "waiting"
        await wait_status(rt, run.id, "completed")
        assert executed == [{"amount": 1, "to": "Al"}]
        log = await rt.store.read_events("default", session.id, limit=100)
        decided = [e.data for e in log if e.type == "approval.decided"]
        assert decided == [{"call_id": decided[0]["call_id"], "decision": "approve",
                            "by": "timeout"}]
        assert rt.approvals.statistics()["expired"] == 1
    finally:
        await rt.close()


async def test_ask_user_waits_for_the_answer() -> None:
    model = ScriptedModel([call("ask_user", question="Which city?"),
                           lambda request: f"weather for {request.messages[-1].content}"])
    rt = await started(Agent(name="asker", model=model, tools=[ask_user]))
    try:
        session = await rt.create_session("default", "asker")
        run = await finish(await rt.submit_turn("default", session.id, "weather?"))
        assert run.status == "waiting"
        log = await rt.store.read_events("default", session.id, limit=100)
        assert log[-2].data["kind"] == "question" and log[-2].data["question"] == "Which city?"
        with pytest.raises(InvalidInput):  # a question wants an answer, not an approval
            await rt.decide_run("default", run.id, [DecisionRequest("approve")])
        done = await finish(await rt.decide_run("default", run.id,
                                                [DecisionRequest(None, answer="Oslo")]))
        assert done.status == "completed" and done.output == "weather for Oslo"
    finally:
        await rt.close()


async def test_two_concurrent_decisions_one_wins(tmp_path: Path) -> None:
    model = ScriptedModel([call("transfer", amount=1, to="Al"), "done"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer]), tmp_path)
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay"))
        results = await asyncio.gather(
            *(rt.decide_run("default", run.id, [DecisionRequest("approve")]) for _ in range(5)),
            return_exceptions=True)
        winners = [r for r in results if isinstance(r, RunHandle)]
        assert len(winners) == 1, results
        assert all(isinstance(r, Conflict) for r in results if r not in winners)
        assert (await finish(winners[0])).status == "completed"
        assert len(executed) == 1
    finally:
        await rt.close()


async def test_a_later_turn_supersedes_a_waiting_run() -> None:
    model = ScriptedModel([call("transfer", amount=1, to="Al"), "something else"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer]))
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay"))
        other = await finish(await rt.submit_turn("default", session.id, "never mind"))
        assert other.status == "completed"
        with pytest.raises(Conflict, match="moved on"):
            await rt.decide_run("default", run.id, [DecisionRequest("approve")])
        closed = await rt.store.get_run("default", run.id)
        assert closed.status == "cancelled" and closed.error == {
            "type": "superseded", "message": "a later turn on the session superseded the wait"}
        assert not executed
    finally:
        await rt.close()


async def test_another_tenant_cannot_decide() -> None:
    model = ScriptedModel([call("transfer", amount=1, to="Al"), "done"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer]))
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay"))
        from roost.errors import RunNotFound
        with pytest.raises(RunNotFound):
            await rt.decide_run("other", run.id, [DecisionRequest("approve")])
    finally:
        await rt.close()


def test_approval_policy_from_config_and_description() -> None:
    policy = ApprovalPolicy.from_config({
        "timeout_s": 60, "on_timeout": "approve",
        "tools": {"delete": True, "pay": {"when": [{"arg": "amount", "op": ">=", "value": 10}]}}})
    assert policy is not None and policy.timeout_s == 60 and policy.on_timeout == "approve"
    pay = policy.tools["pay"]
    assert callable(pay) and pay({"amount": 10}) and not pay({"amount": 9})
    assert pay({}) and pay({"amount": "x"}), "in doubt, a person looks"
    described = policy.describe()
    assert described["tools"]["delete"] is True
    assert ApprovalPolicy(tools={"f": lambda a: True}).describe()["tools"] == {"f": "predicate"}
    assert ApprovalPolicy.from_config({"tools": ["a", "b"]}) == ApprovalPolicy(
        tools={"a": True, "b": True})
    for bad in ({"tools": {"x": {"when": [{"arg": "a", "op": "~", "value": 1}]}}},
                {"tools": {"x": "yes"}}, {"timeout_s": 0}, {"on_timeout": "maybe"},
                {"typo": 1}):
        with pytest.raises(ValueError):
            ApprovalPolicy.from_config(bad)


async def test_a_waiting_run_can_be_cancelled_then_not_decided() -> None:
    model = ScriptedModel([call("transfer", amount=1, to="Al"), "done"])
    rt = await started(Agent(name="bank", model=model, tools=[transfer]))
    try:
        session = await rt.create_session("default", "bank")
        run = await finish(await rt.submit_turn("default", session.id, "pay"))
        cancelled = await rt.cancel_run("default", run.id)
        assert cancelled.status == "cancelled" and cancelled.owner is None
        log = await rt.store.read_events("default", session.id, limit=100)
        assert log[-1].type == "run.cancelled"
        with pytest.raises(Conflict):
            await rt.decide_run("default", run.id, [DecisionRequest("approve")])
        assert not executed
    finally:
        await rt.close()
