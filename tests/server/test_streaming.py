"""Server-sent events: frame order and ids, deltas, heartbeats, client disconnects under
each policy, and following a run from another connection (`Last-Event-ID`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest

from roost import Agent, Policies, tool
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel, call
from tests.server.conftest import (
    TERMINAL,
    WAIT_S,
    Frame,
    Hold,
    Serve,
    aframes,
    assert_problem,
    follow_run,
    frames,
    new_session,
    session_events,
)

ANSWER = "It is sunny in Paris today."


@tool
def lookup(city: str) -> str:
    """Current weather for a city."""
    return f"sunny in {city}"


def scripted(hold: Hold | None = None, **policies: Any) -> Agent:
    tools: list[Any] = [lookup] + ([hold.tool] if hold else [])
    first = call("hold") if hold else call("lookup", city="Paris")
    return Agent(name="streamer", model=ScriptedModel([first, ANSWER]), tools=tools,
                 policies=Policies(**policies))


@pytest.fixture
def http(serve: Serve) -> Iterator[httpx.Client]:
    server = serve(scripted())
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as client:
        yield client


def stream_turn(http: httpx.Client, session_id: str, text: str, *, via: str = "body"
                ) -> tuple[httpx.Response, list[Frame]]:
    """POST a streaming turn and read every frame until the server ends the stream."""
    body: dict[str, Any] = {"input": text}
    headers = {}
    if via == "body":
        body["stream"] = True
    else:
        headers["Accept"] = "text/event-stream"
    with http.stream("POST", f"/v1/sessions/{session_id}/turns", json=body,
                     headers=headers) as response:
        return response, list(frames(response.iter_lines()))


@pytest.mark.parametrize("via", ["body", "accept"])
def test_frames_arrive_in_run_order_with_increasing_ids(http: httpx.Client, via: str) -> None:
    session = new_session(http, "streamer")
    response, received = stream_turn(http, session["id"], "weather in Paris?", via=via)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    run_id = response.headers["X-Run-Id"]

    events = [f for f in received if f.comment is None]
    kinds = [f.event for f in events]
    deltas = [f for f in events if f.event == "message.delta"]
    assert len(deltas) == len(ANSWER.split(" "))
    assert kinds == (["run.started", "message", "message", "tool.call", "tool.result"]
                     + ["message.delta"] * len(deltas) + ["message", "run.completed"])
    for f in events:
        assert f.data is not None and f.data["type"] == f.event and f.data["run_id"] == run_id
    user, assistant, final = (f.data for f in events if f.event == "message")
    assert user is not None and assistant is not None and final is not None
    assert user["data"] == {"role": "user", "content": "weather in Paris?"}
    assert [c["name"] for c in assistant["data"]["tool_calls"]] == ["lookup"]
    assert final["data"]["content"] == ANSWER
    assert "".join(d.data["data"]["text"] for d in deltas if d.data).strip() == ANSWER

    persisted = [f for f in events if f.event != "message.delta"]
    ids = [f.id for f in persisted]
    assert ids == list(range(1, len(persisted) + 1))  # the session's seqs, in order
    assert all(f.id is None and f.data and f.data["seq"] == 0 for f in deltas)
    # Deltas are live only; everything else is exactly what the log holds.
    assert session_events(http, session["id"]) == [f.data for f in persisted]


def test_a_second_streamed_turn_continues_the_sessions_seqs(serve: Serve) -> None:
    server = serve()  # the examples, on the demo model
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        session = new_session(http, "weather")
        _, first = stream_turn(http, session["id"], "weather in Paris")
        _, second = stream_turn(http, session["id"], "weather in Berlin")
        last_of_first = max(f.id for f in first if f.id is not None)
        ids = [f.id for f in second if f.id is not None]
        assert ids == list(range(last_of_first + 1, last_of_first + 1 + len(ids)))
        assert second[-1].event == "run.completed"
        assert second[-1].data is not None and "Berlin" in second[-1].data["data"]["output"]


def test_heartbeats_keep_a_quiet_stream_alive(serve: Serve) -> None:
    hold = Hold()
    server = serve(scripted(hold), server={"heartbeat_s": 0.1})
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        session = new_session(http, "streamer")
        seen: list[Frame] = []
        with http.stream("POST", f"/v1/sessions/{session['id']}/turns",
                         json={"input": "go", "stream": True}) as response:
            for frame in frames(response.iter_lines()):
                seen.append(frame)
                if frame.comment == "heartbeat":
                    hold.release()  # the run was quiet long enough: let it finish
        comments = [i for i, f in enumerate(seen) if f.comment is not None]
        assert comments, "no heartbeat arrived"
        assert all(seen[i].comment == "heartbeat" for i in comments)
        kinds = [f.event for f in seen]
        assert kinds.index("tool.call") < comments[0] < kinds.index("tool.result")
        assert kinds[-1] == "run.completed"


@pytest.mark.parametrize("policy", ["cancel", "continue"])
def test_a_client_that_disconnects_mid_stream(serve: Serve,
                                              policy: Literal["cancel", "continue"]) -> None:
    hold = Hold()
    server = serve(scripted(hold, on_disconnect=policy))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        session = new_session(http, "streamer")
        with http.stream("POST", f"/v1/sessions/{session['id']}/turns",
                         json={"input": "go", "stream": True}) as response:
            run_id = response.headers["X-Run-Id"]
            for frame in frames(response.iter_lines()):
                if frame.event == "tool.call":
                    break  # leave mid-run: the response closes with the connection
        hold.entered.wait_sync()
        if policy == "continue":
            hold.release()
        tail = follow_run(http, run_id)
        run = http.get(f"/v1/runs/{run_id}").json()
        log = session_events(http, session["id"])
    if policy == "cancel":
        assert tail[-1].event == "run.cancelled"
        assert run["status"] == "cancelled"
        assert run["error"]["reason"] == "disconnect"
        assert hold.cancelled.is_open
        assert log[-1]["type"] == "run.cancelled"
    else:
        assert tail[-1].event == "run.completed"
        assert run["status"] == "completed" and run["output"] == ANSWER
        assert [e["type"] for e in log][-3:] == ["tool.result", "message", "run.completed"]


def test_following_a_running_run_from_another_connection(serve: Serve) -> None:
    hold = Hold()
    server = serve(scripted(hold))
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http, \
            httpx.Client(base_url=server.url, timeout=WAIT_S) as watcher:
        session = new_session(http, "streamer")
        with http.stream("POST", f"/v1/sessions/{session['id']}/turns",
                         json={"input": "go", "stream": True}) as response:
            run_id = response.headers["X-Run-Id"]
            lines = response.iter_lines()
            mine: list[Frame] = []
            for frame in frames(lines):
                mine.append(frame)
                if frame.event == "tool.call":
                    break
            hold.entered.wait_sync()
            # A second reader resumes after the user message it already has.
            with watcher.stream("GET", f"/v1/runs/{run_id}/events",
                                headers={"Last-Event-ID": "2"}) as watched:
                assert watched.headers["content-type"].startswith("text/event-stream")
                theirs: list[Frame] = []
                for frame in frames(watched.iter_lines()):
                    theirs.append(frame)
                    if frame.event == "tool.call":
                        hold.release()
                    if frame.event in TERMINAL:
                        break
            mine.extend(frames(lines))
    persisted_mine = [f.id for f in mine if f.id is not None]
    persisted_theirs = [f.id for f in theirs if f.id is not None]
    assert persisted_theirs == persisted_mine[2:]
    assert theirs[-1].event == mine[-1].event == "run.completed"


def test_replaying_a_finished_run_after_a_last_event_id(http: httpx.Client) -> None:
    session = new_session(http, "streamer")
    _, received = stream_turn(http, session["id"], "weather in Paris?")
    run_id = received[0].data["run_id"] if received[0].data else ""
    everything = follow_run(http, run_id)
    assert [f.id for f in everything] == [f.id for f in received if f.id is not None]
    tail = follow_run(http, run_id, after=4)
    assert [f.id for f in tail] == [f.id for f in everything if f.id and f.id > 4]
    assert tail[-1].event == "run.completed"


def test_a_failing_run_streams_run_failed_and_ends(serve: Serve) -> None:
    agent = Agent(name="broken", model=ScriptedModel([RuntimeError("no model today")]))
    server = serve(agent)
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        session = new_session(http, "broken")
        _, received = stream_turn(http, session["id"], "hello")
        assert [f.event for f in received] == ["run.started", "message", "run.failed"]
        failed = received[-1].data
        assert failed is not None
        assert failed["data"]["error"]["type"] == "internal_error"
        # The server keeps serving.
        assert http.get("/readyz").status_code == 200


def test_a_refused_streaming_turn_is_a_problem_not_a_stream(http: httpx.Client) -> None:
    response = http.post("/v1/sessions/ses_nope/turns", json={"input": "hi", "stream": True})
    assert_problem(response, 404, "session_not_found")
    response = http.post("/v1/sessions/ses_nope/turns", json={"input": ""},
                         headers={"Accept": "text/event-stream"})
    assert_problem(response, 422, "invalid_input", field="input")


def test_the_bundled_weather_example_streams_its_answer(demo: LiveServer) -> None:
    with httpx.Client(base_url=demo.url, timeout=WAIT_S) as http:
        session = new_session(http, "weather")
        _, received = stream_turn(http, session["id"], "weather in Paris")
    deltas = "".join(f.data["data"]["text"] for f in received
                     if f.event == "message.delta" and f.data)
    final = [f for f in received if f.event == "message"][-1].data
    assert final is not None and deltas == final["data"]["content"]
    assert received[-1].event == "run.completed"


def test_a_reader_behind_the_live_buffer_still_gets_every_persisted_event(serve: Serve) -> None:
    """The scripted answer publishes 100 deltas without yielding: far more than the 16-event
    channel buffer, so the SSE writer lags and continues from the log."""
    answer = " ".join(f"word{i}" for i in range(100))
    server = serve(Agent(name="chatty", model=ScriptedModel([answer, answer])),
                   runtime={"run_channel_buffer": 16})
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        session = new_session(http, "chatty")
        for turn in range(2):
            _, received = stream_turn(http, session["id"], f"turn {turn}")
            persisted = [f for f in received if f.event != "message.delta"]
            assert [f.event for f in persisted] == ["run.started", "message", "message",
                                                    "run.completed"]
            assert [f.id for f in persisted] == list(range(4 * turn + 1, 4 * turn + 5))
            assert persisted[2].data is not None
            assert persisted[2].data["data"]["content"] == answer
        assert [e["seq"] for e in session_events(http, session["id"])] == list(range(1, 9))


async def test_an_interrupted_stream_ends_with_run_cancelled(serve: Serve) -> None:
    hold = Hold()
    agent = Agent(name="eager", model=ScriptedModel([call("hold"), "second answer"]),
                  tools=[hold.tool], policies=Policies(double_texting="interrupt"))
    server = serve(agent)
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        session = (await http.post("/v1/agents/eager/sessions", json={})).json()
        url = f"/v1/sessions/{session['id']}/turns"
        first: list[str | None] = []
        second: list[str | None] = []
        async with http.stream("POST", url, json={"input": "one", "stream": True}) as stream:
            async for frame in aframes(stream):
                first.append(frame.event)
                if frame.event == "tool.call":
                    async with http.stream("POST", url,
                                           json={"input": "two", "stream": True}) as other:
                        second = [f.event async for f in aframes(other)]
    assert first == ["run.started", "message", "message", "tool.call", "run.cancelled"]
    assert second[0] == "run.started" and second[-1] == "run.completed"
    assert hold.cancelled.is_open
