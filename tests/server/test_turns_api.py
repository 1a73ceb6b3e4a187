"""`POST /v1/sessions/{id}/turns`, `GET /v1/runs/{id}`, `POST /v1/runs/{id}/cancel`:
turns end to end, cancellation, double texting, and failures inside a run."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx
import orjson
import pytest

from roost import Agent, Limits, ModelRequest, Policies, tool
from roost.errors import ModelError
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel, call
from tests.server.conftest import (
    WAIT_S,
    Hold,
    Latch,
    Serve,
    anew_session,
    assert_problem,
    await_until,
    follow_run,
    new_session,
    session_events,
    wait_until,
)

TURN_KEYS = {"run_id", "status", "output", "usage", "error", "events"}


def turn(http: httpx.Client, session_id: str, text: str, **body: Any) -> dict[str, Any]:
    response = http.post(f"/v1/sessions/{session_id}/turns", json={"input": text, **body})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    result: dict[str, Any] = response.json()
    assert set(result) == TURN_KEYS
    return result


@pytest.fixture
def connect() -> Iterator[Callable[[LiveServer], httpx.Client]]:
    """Clients for servers a test starts itself, closed at the end."""
    clients: list[httpx.Client] = []

    def make(server: LiveServer) -> httpx.Client:
        clients.append(httpx.Client(base_url=server.url, timeout=WAIT_S))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def in_thread(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[httpx.Response]]:
    """Run a blocking request in a thread; its response lands in the returned list."""
    out: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


# -- turns end to end -------------------------------------------------------------------------
def test_a_turn_runs_model_tool_model_and_persists_every_step(http: httpx.Client) -> None:
    session = new_session(http, "weather")
    result = turn(http, session["id"], "weather in Paris")
    assert result["status"] == "completed"
    assert result["error"] is None
    assert result["output"].startswith("Here is what I found. get_weather: ")
    assert '"city":"Paris"' in result["output"]
    usage = result["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0 and usage["cost"] == 0.0
    types = [e["type"] for e in result["events"]]
    assert types == ["run.started", "message", "message", "tool.call", "tool.result", "message",
                     "run.completed"]
    started, user, asked, tool_call, tool_result, answer, completed = result["events"]
    assert started["data"] == {"input": "weather in Paris", "agent": "weather", "attempt": 1}
    assert user["data"] == {"role": "user", "content": "weather in Paris"}
    [requested] = asked["data"]["tool_calls"]
    assert requested["name"] == "get_weather"
    assert orjson.loads(requested["arguments"]) == {"city": "Paris"}
    assert tool_call["data"] == requested
    assert tool_result["data"]["call_id"] == requested["id"]
    assert tool_result["data"]["is_error"] is False and tool_result["data"]["outcome"] == "ok"
    assert answer["data"]["role"] == "assistant" and answer["data"]["content"] == result["output"]
    assert completed["data"]["output"] == result["output"]
    assert all(e["run_id"] == result["run_id"] for e in result["events"])
    # What the turn returned is exactly what the log holds.
    assert session_events(http, session["id"]) == result["events"]
    after = http.get(f"/v1/sessions/{session['id']}").json()
    assert after["last_seq"] == 7
    assert after["version"] > session["version"]


def test_the_run_record_is_readable_after_the_turn(http: httpx.Client) -> None:
    session = new_session(http, "calculator")
    result = turn(http, session["id"], "multiply 6 and 7")
    assert "multiply: 42" in result["output"]
    response = http.get(f"/v1/runs/{result['run_id']}")
    assert response.status_code == 200
    run = response.json()
    assert run["id"] == result["run_id"]
    assert run["session_id"] == session["id"]
    assert run["agent"] == "calculator"
    assert run["tenant"] == "default"
    assert run["status"] == "completed"
    assert run["input"] == "multiply 6 and 7"
    assert run["output"] == result["output"]
    assert run["usage"] == result["usage"]
    assert run["attempt"] == 1
    assert run["error"] is None
    assert run["deadline"] > run["created_at"]
    assert run["updated_at"] >= run["created_at"]


def test_turns_of_a_session_share_its_history(serve: Serve,
                                              connect: Callable[[LiveServer], httpx.Client]) -> None:
    model = ScriptedModel(["Nice to meet you, Ada.", "You are Ada."])
    http = connect(serve(Agent(name="chat", model=model, instructions="Be kind.")))
    session = new_session(http, "chat")
    assert turn(http, session["id"], "I am Ada")["output"] == "Nice to meet you, Ada."
    assert turn(http, session["id"], "Who am I?")["output"] == "You are Ada."
    second = model.requests[1].messages
    assert [(m.role, m.content) for m in second] == [
        ("system", "Be kind."), ("user", "I am Ada"), ("assistant", "Nice to meet you, Ada."),
        ("user", "Who am I?")]
    other = new_session(http, "chat")
    model.script.append("Hello stranger.")
    turn(http, other["id"], "Who am I?")
    assert [m.role for m in model.requests[2].messages] == ["system", "user"]


def test_a_scripted_tool_result_reaches_the_model(serve: Serve,
                                                 connect: Callable[[LiveServer], httpx.Client]) -> None:
    @tool
    def lookup(key: str) -> dict[str, str]:
        """Look a key up."""
        return {"key": key, "value": key.upper()}

    model = ScriptedModel([call("lookup", key="abc"), "The value is ABC."])
    http = connect(serve(Agent(name="lookup", model=model, tools=[lookup])))
    session = new_session(http, "lookup")
    result = turn(http, session["id"], "look up abc")
    assert result["output"] == "The value is ABC."
    tool_message = model.requests[1].messages[-1]
    assert tool_message.role == "tool" and tool_message.name == "lookup"
    assert orjson.loads(tool_message.content or "") == {"key": "abc", "value": "ABC"}


def test_a_turn_timeout_ends_the_run_timed_out(serve: Serve,
                                               connect: Callable[[LiveServer], httpx.Client]) -> None:
    http = connect(serve(Agent(name="slow", model=ScriptedModel(["late"], delay_s=30))))
    session = new_session(http, "slow")
    result = turn(http, session["id"], "hurry", timeout_s=0.2)
    assert result["status"] == "timed_out"
    assert result["error"]["type"] == "timed_out"
    assert result["output"] is None
    assert [e["type"] for e in session_events(http, session["id"])] == [
        "run.started", "message", "run.failed"]
    assert http.get(f"/v1/runs/{result['run_id']}").json()["status"] == "timed_out"


# -- cancellation -----------------------------------------------------------------------------
def test_cancel_a_run_parked_in_a_tool(serve: Serve,
                                       connect: Callable[[LiveServer], httpx.Client]) -> None:
    hold = Hold()
    server = serve(Agent(name="held", model=ScriptedModel([call("hold"), "never"]),
                         tools=[hold.tool]))
    http, other = connect(server), connect(server)
    session = new_session(http, "held")
    thread, out = in_thread(lambda: other.post(f"/v1/sessions/{session['id']}/turns",
                                               json={"input": "go"}))
    hold.entered.wait_sync()
    [run_id] = hold.run_ids
    assert http.get(f"/v1/runs/{run_id}").json()["status"] == "running"

    response = http.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["type"] == "cancelled"
    assert cancelled["error"]["reason"] == "user"
    thread.join(WAIT_S)
    assert out[0].json()["status"] == "cancelled"
    assert hold.cancelled.is_open  # the cancellation reached the tool's task
    events = session_events(http, session["id"])
    assert [e["type"] for e in events] == [
        "run.started", "message", "message", "tool.call", "run.cancelled"]
    assert http.get(f"/v1/runs/{run_id}").json()["status"] == "cancelled"
    # Cancelling a finished run is harmless and returns its record.
    again = http.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_cancel_a_run_inside_a_slow_model_call(serve: Serve,
                                               connect: Callable[[LiveServer], httpx.Client]) -> None:
    entered = Latch()
    run_ids: list[str] = []

    def answer(request: ModelRequest) -> str:
        run_ids.append(request.metadata["run_id"])
        entered.open()
        return "too late"

    server = serve(Agent(name="slow", model=ScriptedModel([answer, "next"], delay_s=30)))
    http, other = connect(server), connect(server)
    session = new_session(http, "slow")
    thread, out = in_thread(lambda: other.post(f"/v1/sessions/{session['id']}/turns",
                                               json={"input": "go"}))
    entered.wait_sync()
    assert http.post(f"/v1/runs/{run_ids[0]}/cancel").json()["status"] == "cancelled"
    thread.join(WAIT_S)
    assert out[0].json()["status"] == "cancelled"
    assert [e["type"] for e in session_events(http, session["id"])][-1] == "run.cancelled"


def test_cancelling_a_completed_run_returns_it_unchanged(http: httpx.Client) -> None:
    session = new_session(http, "weather")
    result = turn(http, session["id"], "weather in Oslo")
    response = http.post(f"/v1/runs/{result['run_id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "completed"
    assert response.json()["output"] == result["output"]
    assert len(session_events(http, session["id"])) == len(result["events"])


@pytest.mark.parametrize("policy", ["cancel", "continue"])
def test_a_json_client_that_disconnects(serve: Serve,
                                        connect: Callable[[LiveServer], httpx.Client],
                                        policy: Literal["cancel", "continue"]) -> None:
    """A synchronous caller that leaves cannot read the answer: `cancel` stops its run,
    `continue` lets it finish and persist."""
    hold = Hold()
    agent = Agent(name="held", model=ScriptedModel([call("hold"), "done"]), tools=[hold.tool],
                  policies=Policies(on_disconnect=policy))
    server = serve(agent)
    http = connect(server)
    session = new_session(http, "held")
    body = orjson.dumps({"input": "go"})
    with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as raw:
        raw.sendall(f"POST /v1/sessions/{session['id']}/turns HTTP/1.1\r\nHost: test\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    .encode() + body)
        hold.entered.wait_sync()
    [run_id] = hold.run_ids
    if policy == "continue":
        hold.release()
    terminal = follow_run(http, run_id)[-1]
    expected = "run.cancelled" if policy == "cancel" else "run.completed"
    assert terminal.event == expected
    assert http.get(f"/v1/runs/{run_id}").json()["status"] == (
        "cancelled" if policy == "cancel" else "completed")
    assert session_events(http, session["id"])[-1]["type"] == expected


# -- double texting ---------------------------------------------------------------------------
async def test_reject_policy_refuses_a_second_concurrent_turn(serve: Serve) -> None:
    hold = Hold()
    server = serve(Agent(name="strict", model=ScriptedModel([call("hold"), "one", "two"]),
                         tools=[hold.tool], policies=Policies(double_texting="reject")))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "strict")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        second = await http.post(url, json={"input": "second"})
        body = assert_problem(second, 409, "session_busy")
        assert "active run" in body["detail"]
        hold.release()
        assert (await first).json()["output"] == "one"
        log = (await http.get(f"/v1/sessions/{session['id']}/events")).json()["items"]
        assert {e["run_id"] for e in log} == {hold.run_ids[0]}
        assert not any(e["data"].get("input") == "second" for e in log)
        third = await http.post(url, json={"input": "third"})  # free again
        assert third.json()["output"] == "two"


async def test_enqueue_policy_runs_both_turns_in_order(serve: Serve) -> None:
    hold = Hold()
    model = ScriptedModel([call("hold"), "one", "two"])
    server = serve(Agent(name="queued", model=model, tools=[hold.tool],
                         policies=Policies(double_texting="enqueue")))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "queued")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        second = asyncio.create_task(http.post(url, json={"input": "second"}))
        await await_until(lambda: len(server.runtime.runs) == 2, "the second turn to queue")
        waiting = [h.run for h in server.runtime.runs.values() if h.run.input == "second"]
        assert waiting[0].status == "queued"
        hold.release()
        one, two = (await first).json(), (await second).json()
        assert (one["status"], one["output"]) == ("completed", "one")
        assert (two["status"], two["output"]) == ("completed", "two")
        log = (await http.get(f"/v1/sessions/{session['id']}/events")).json()["items"]
    owners = [e["run_id"] for e in log]
    boundary = owners.index(two["run_id"])
    assert set(owners[:boundary]) == {one["run_id"]}
    assert set(owners[boundary:]) == {two["run_id"]}
    # The second turn saw the first one's whole exchange.
    assert [m.content for m in model.requests[-1].messages if m.role == "user"] == [
        "first", "second"]


async def test_enqueue_policy_is_bounded(serve: Serve) -> None:
    hold = Hold()
    server = serve(Agent(name="queued", model=ScriptedModel([call("hold"), "a", "b"]),
                         tools=[hold.tool],
                         policies=Policies(double_texting="enqueue", max_pending_turns=1)))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "queued")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        second = asyncio.create_task(http.post(url, json={"input": "second"}))
        await await_until(lambda: len(server.runtime.runs) == 2, "the second turn to queue")
        body = assert_problem(await http.post(url, json={"input": "third"}), 409, "session_busy")
        assert "1 turns waiting" in body["detail"]
        hold.release()
        assert [(await t).json()["status"] for t in (first, second)] == ["completed"] * 2


async def test_interrupt_policy_cancels_the_active_run_for_the_new_one(serve: Serve) -> None:
    hold = Hold()
    model = ScriptedModel([call("hold"), "answer to the second"])
    server = serve(Agent(name="eager", model=model, tools=[hold.tool],
                         policies=Policies(double_texting="interrupt")))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "eager")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        second = (await http.post(url, json={"input": "second"})).json()
        one = (await first).json()
        log = (await http.get(f"/v1/sessions/{session['id']}/events")).json()["items"]
    assert (one["status"], one["error"]["reason"]) == ("cancelled", "interrupt")
    assert (second["status"], second["output"]) == ("completed", "answer to the second")
    assert hold.cancelled.is_open
    types = [(e["run_id"] == one["run_id"], e["type"]) for e in log]
    assert types.index((True, "run.cancelled")) < types.index((False, "run.started"))
    assert [m.content for m in model.requests[-1].messages if m.role == "user"] == [
        "first", "second"]


async def test_a_cancelled_runs_open_tool_call_is_closed_before_the_next_turn(
        serve: Serve) -> None:
    hold = Hold()
    model = ScriptedModel([call("hold"), "answer to the second"])
    server = serve(Agent(name="eager", model=model, tools=[hold.tool],
                         policies=Policies(double_texting="interrupt")))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "eager")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        assert (await http.post(url, json={"input": "second"})).json()["status"] == "completed"
        await first
    messages = model.requests[-1].messages
    calls = {c.id for m in messages for c in (m.tool_calls or [])}
    answered = {m.tool_call_id for m in messages if m.role == "tool"}
    assert calls, "the interrupted run's tool call is in the history"
    assert calls == answered


# -- failures inside a run --------------------------------------------------------------------
@tool
def explode(reason: str) -> str:
    """Always fails."""
    raise ValueError(f"boom: {reason}")


@tool(timeout_s=0.05)
async def sleepy() -> str:
    """Never answers in time."""
    await asyncio.sleep(30)
    return "unreachable"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.mark.parametrize(("step", "outcome", "content"), [
    pytest.param(call("explode", reason="bad luck"), "error", "Error: ValueError: boom: bad luck",
                 id="raises"),
    pytest.param(call("sleepy"), "timeout", "Error: sleepy timed out after 0.05 s",
                 id="times-out"),
    pytest.param(call("add", a="one", b=2), "invalid_arguments",
                 "Error: invalid arguments for add: a:", id="invalid-arguments"),
    pytest.param(call("missing"), "error", "Error: unknown tool 'missing'", id="unknown-tool"),
])
def test_a_failing_tool_becomes_a_result_the_model_reads(
        serve: Serve, connect: Callable[[LiveServer], httpx.Client], step: Any, outcome: str,
        content: str) -> None:
    model = ScriptedModel([step, "I could not do it."])
    http = connect(serve(Agent(name="tools", model=model, tools=[explode, sleepy, add])))
    session = new_session(http, "tools")
    result = turn(http, session["id"], "try")
    assert result["status"] == "completed"
    assert result["output"] == "I could not do it."
    [tool_result] = [e for e in result["events"] if e["type"] == "tool.result"]
    assert tool_result["data"]["is_error"] is True
    assert tool_result["data"]["outcome"] == outcome
    assert tool_result["data"]["content"].startswith(content), tool_result["data"]["content"]
    assert model.requests[1].messages[-1].content == tool_result["data"]["content"]


@pytest.mark.parametrize(("failure", "error_type", "message"), [
    pytest.param(RuntimeError("the model broke"), "internal_error",
                 "RuntimeError: the model broke", id="runtime-error"),
    pytest.param(ModelError("upstream 502", status_code=502, kind="overloaded",
                            provider="scripted"), "model_error", "upstream 502", id="model-error"),
])
def test_a_model_failure_fails_the_run_and_the_server_keeps_serving(
        serve: Serve, connect: Callable[[LiveServer], httpx.Client], failure: Exception,
        error_type: str, message: str) -> None:
    model = ScriptedModel([failure, "recovered"])
    http = connect(serve(Agent(name="flaky", model=model)))
    session = new_session(http, "flaky")
    failed = turn(http, session["id"], "first")
    assert failed["status"] == "failed"
    assert failed["output"] is None
    assert failed["error"]["type"] == error_type
    assert failed["error"]["message"] == message
    assert [e["type"] for e in failed["events"]] == ["run.started", "message", "run.failed"]
    assert http.get(f"/v1/runs/{failed['run_id']}").json()["error"]["type"] == error_type
    # Same session, next request: served normally, and the failed turn is in its history.
    assert turn(http, session["id"], "second")["output"] == "recovered"
    assert [m.content for m in model.requests[1].messages] == ["first", "second"]
    assert http.get("/readyz").status_code == 200


def test_too_many_steps_fails_the_run(serve: Serve,
                                      connect: Callable[[LiveServer], httpx.Client]) -> None:
    model = ScriptedModel([call("add", a=1, b=1)], repeat_last=True)
    http = connect(serve(Agent(name="loop", model=model, tools=[add],
                               limits=Limits(max_steps=3))))
    session = new_session(http, "loop")
    result = turn(http, session["id"], "loop forever")
    assert result["status"] == "failed"
    assert result["error"]["type"] == "max_steps_exceeded"
    assert model.calls == 3
    assert sum(e["type"] == "tool.result" for e in result["events"]) == 3


def test_a_state_patch_during_a_run_does_not_break_it(serve: Serve,
                                                      connect: Callable[[LiveServer], httpx.Client]
                                                      ) -> None:
    hold = Hold()
    server = serve(Agent(name="held", model=ScriptedModel([call("hold"), "done"]),
                         tools=[hold.tool]))
    http, other = connect(server), connect(server)
    session = new_session(http, "held")
    thread, out = in_thread(lambda: other.post(f"/v1/sessions/{session['id']}/turns",
                                               json={"input": "go"}))
    hold.entered.wait_sync()
    patched = http.patch(f"/v1/sessions/{session['id']}", json={"state": {"seen": True}})
    assert patched.status_code == 200
    hold.release()
    thread.join(WAIT_S)
    assert out[0].json()["status"] == "completed"
    final = http.get(f"/v1/sessions/{session['id']}").json()
    assert final["state"] == {"seen": True}
    assert final["last_seq"] == len(session_events(http, session["id"])) == 7
    wait_until(lambda: not server.runtime.runs, what="the run registry to empty")


async def test_cancel_a_turn_still_waiting_behind_another(serve: Serve) -> None:
    hold = Hold()
    server = serve(Agent(name="queued", model=ScriptedModel([call("hold"), "one", "three"]),
                         tools=[hold.tool], policies=Policies(double_texting="enqueue")))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "queued")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        second = asyncio.create_task(http.post(url, json={"input": "second"}))
        await await_until(lambda: len(server.runtime.runs) == 2, "the second turn to queue")
        [queued] = [h.run.id for h in server.runtime.runs.values() if h.run.input == "second"]
        cancelled = await http.post(f"/v1/runs/{queued}/cancel")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled"
        two = (await second).json()
        assert (two["status"], two["events"]) == ("cancelled", [])
        assert (await http.get(f"/v1/runs/{queued}")).json()["status"] == "cancelled"
        hold.release()
        assert (await first).json()["output"] == "one"
        log = (await http.get(f"/v1/sessions/{session['id']}/events")).json()["items"]
        assert queued not in {e["run_id"] for e in log}  # it never started
        third = (await http.post(url, json={"input": "third"})).json()
        assert third["output"] == "three"


async def test_a_cancelled_queued_run_says_why_like_a_cancelled_running_one(
        serve: Serve) -> None:
    hold = Hold()
    server = serve(Agent(name="queued", model=ScriptedModel([call("hold"), "one"]),
                         tools=[hold.tool], policies=Policies(double_texting="enqueue")))
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = await anew_session(http, "queued")
        url = f"/v1/sessions/{session['id']}/turns"
        first = asyncio.create_task(http.post(url, json={"input": "first"}))
        async with asyncio.timeout(WAIT_S):
            await hold.entered.wait()
        second = asyncio.create_task(http.post(url, json={"input": "second"}))
        await await_until(lambda: len(server.runtime.runs) == 2, "the second turn to queue")
        [queued] = [h.run.id for h in server.runtime.runs.values() if h.run.input == "second"]
        await http.post(f"/v1/runs/{queued}/cancel")
        await second
        hold.release()
        await first
        run = (await http.get(f"/v1/runs/{queued}")).json()
    assert run["error"] == {"type": "cancelled", "reason": "user"}
