"""`/v1/models` and `/v1/chat/completions` with the official `openai` client over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from roost import Agent
from roost.agent import Policies
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel, call
from tests.protocols.conftest import serve
from tests.server.conftest import Hold

pytestmark = pytest.mark.timeout(30)


def client_for(server: LiveServer, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0,
                         **options)  # type: ignore[arg-type]


def test_models_are_the_agents(server: LiveServer) -> None:
    client = client_for(server)
    assert sorted(m.id for m in client.models.list()) == ["echo", "failing", "weather"]
    assert client.models.retrieve("weather").owned_by == "roost"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_completion_runs_the_agents_tools_server_side(server: LiveServer) -> None:
    client = client_for(server)
    raw = client.chat.completions.with_raw_response.create(
        model="weather", messages=[{"role": "user", "content": "Weather in Paris?"}])
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.role == "assistant"
    assert "Paris" in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.total_tokens > 0
    # Persisted like a native turn: the run and its tool call are in the session's log.
    session_id = raw.headers["x-roost-session-id"]
    run = httpx.get(f"{server.url}/v1/runs/{raw.headers['x-run-id']}").json()
    assert run["status"] == "completed" and run["session_id"] == session_id
    events = httpx.get(f"{server.url}/v1/sessions/{session_id}/events").json()
    types = [e["type"] for e in (events["items"] if isinstance(events, dict) else events)]
    assert "tool.call" in types and "tool.result" in types


def test_stateless_history_and_continued_sessions(server: LiveServer) -> None:
    client = client_for(server)
    history = [{"role": "system", "content": "Be terse."},
               {"role": "user", "content": "hello"},
               {"role": "assistant", "content": "hi"},
               {"role": "user", "content": [{"type": "text", "text": "again"}]}]
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=history)
    # The client's messages are the fresh session's history: 4 reach the model.
    assert raw.parse().choices[0].message.content == "you said: again (4 messages)"
    session_id = raw.headers["x-roost-session-id"]
    second = client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "more"}],
        extra_headers={"X-Roost-Session-Id": session_id})
    assert second.headers["x-roost-session-id"] == session_id
    # Continued: the session's log (4 + the answer) and the new message.
    assert second.parse().choices[0].message.content == "you said: more (6 messages)"
    stateless = client.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": "more"}])
    assert stateless.headers["x-roost-session-id"] != session_id
    assert stateless.parse().choices[0].message.content == "you said: more (1 messages)"


def test_stream_chunks_as_openai_sends_them(server: LiveServer) -> None:
    client = client_for(server)
    chunks = list(client.chat.completions.create(
        model="weather", messages=[{"role": "user", "content": "Weather in Oslo?"}],
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Oslo" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_stream_raw_frames_end_with_done(server: LiveServer) -> None:
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json={
            "model": "echo", "stream": True,
            "messages": [{"role": "user", "content": "x"}]}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert '"usage"' not in "".join(lines)  # only with stream_options.include_usage


async def test_async_client_and_stream(server: LiveServer) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    completion = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "async"}])
    assert completion.choices[0].message.content == "you said: async (1 messages)"
    stream = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "streamed"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.strip() == "you said: streamed (1 messages)"
    await client.close()


def test_errors_in_openai_shape(server: LiveServer) -> None:
    client = client_for(server)
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=user)  # type: ignore[arg-type]
    assert missing.value.code == "agent_not_found"
    with pytest.raises(openai.BadRequestError) as tools:
        client.chat.completions.create(model="echo", messages=user,  # type: ignore[arg-type]
                                       tools=[{"type": "function",
                                               "function": {"name": "f", "parameters": {}}}])
    assert tools.value.code == "tools_not_supported" and tools.value.param == "tools"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="echo",  # type: ignore[arg-type]
                                       messages=[{"role": "user", "content": "  "}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="echo", messages=user,  # type: ignore[arg-type]
                                       extra_headers={"X-Roost-Session-Id": "ses_missing"})
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(model="failing", messages=user)  # type: ignore[arg-type]
    assert failed.value.response.headers["x-run-id"].startswith("run_")
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="failing", messages=user,  # type: ignore[arg-type]
                                            stream=True))
    bad = httpx.post(f"{server.url}/v1/chat/completions", content=b"{nope",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_busy_session_is_409_and_tenant_quota_429(tmp_path: Path) -> None:
    hold = Hold()
    busy = Agent(name="busy", model=ScriptedModel([call("hold"), "done"]),
                 tools=[hold.tool], policies=Policies(double_texting="reject"))
    quota = {"default_quota": {"max_running": 100, "rate": 0.001, "burst": 2}}
    with serve(tmp_path, busy, admission=quota) as live, httpx.stream(
            "POST", f"{live.url}/v1/chat/completions",
            json={"model": "busy", "stream": True,
                  "messages": [{"role": "user", "content": "a"}]}) as first:
        session_id = first.headers["x-roost-session-id"]
        hold.entered.wait_sync()
        client = client_for(live)
        with pytest.raises(openai.ConflictError) as busy_error:
            client.chat.completions.create(model="busy",
                                           messages=[{"role": "user", "content": "b"}],
                                           extra_headers={"X-Roost-Session-Id": session_id})
        assert busy_error.value.code == "session_busy"
        with pytest.raises(openai.RateLimitError) as limited:
            client.chat.completions.create(model="busy",
                                           messages=[{"role": "user", "content": "c"}])
        assert int(limited.value.response.headers["retry-after"]) >= 1
        hold.release()
        assert [line for line in first.iter_lines() if line][-1] == "data: [DONE]"


def test_overload_is_503_with_retry_after(tmp_path: Path) -> None:
    hold = Hold()
    busy = Agent(name="busy", model=ScriptedModel([call("hold"), "done"]), tools=[hold.tool])
    limits = {"max_running": 1, "max_queued": 0}
    with serve(tmp_path, busy, admission=limits) as live, httpx.stream(
            "POST", f"{live.url}/v1/chat/completions",
            json={"model": "busy", "stream": True,
                  "messages": [{"role": "user", "content": "a"}]}) as first:
        hold.entered.wait_sync()
        with pytest.raises(openai.InternalServerError) as overloaded:
            client_for(live).chat.completions.create(
                model="busy", messages=[{"role": "user", "content": "b"}])
        assert overloaded.value.status_code == 503
        assert overloaded.value.code == "server_overloaded"
        assert int(overloaded.value.response.headers["retry-after"]) >= 1
        hold.release()
        assert [line for line in first.iter_lines() if line][-1] == "data: [DONE]"


def test_a_streaming_client_that_leaves_cancels_its_run(tmp_path: Path) -> None:
    hold = Hold()
    busy = Agent(name="busy", model=ScriptedModel([call("hold"), "done"]), tools=[hold.tool])
    with serve(tmp_path, busy) as live:
        with httpx.stream("POST", f"{live.url}/v1/chat/completions",
                          json={"model": "busy", "stream": True,
                                "messages": [{"role": "user", "content": "a"}]}) as first:
            run_id = first.headers["x-run-id"]
            hold.entered.wait_sync()
        hold.cancelled.wait_sync()  # the agent's on_disconnect = "cancel" reached the tool
        # The run's own stream ends with its terminal event.
        with httpx.stream("GET", f"{live.url}/v1/runs/{run_id}/events") as events:
            kinds = [line for line in events.iter_lines() if line.startswith("event: ")]
        assert kinds[-1] == "event: run.cancelled"
