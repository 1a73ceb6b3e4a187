"""Roost agents over A2A, called with the `a2a-sdk` client over real HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import a2a_pb2 as pb

from roost import Agent
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel, call
from tests.protocols.conftest import serve
from tests.server.conftest import Hold

pytestmark = pytest.mark.timeout(30)


def message(text: str, context_id: str = "") -> pb.SendMessageRequest:
    return pb.SendMessageRequest(message=pb.Message(
        message_id=f"m-{text}", role=pb.ROLE_USER, context_id=context_id,
        parts=[pb.Part(text=text)]))


async def final_task(client: object, request: pb.SendMessageRequest) -> pb.Task:
    events = [e async for e in client.send_message(request)]  # type: ignore[attr-defined]
    tasks = [e.task for e in events if e.HasField("task")]
    return tasks[-1]


def test_agent_cards(server: LiveServer) -> None:
    card = httpx.get(f"{server.url}/a2a/weather/.well-known/agent-card.json").json()
    assert card["name"] == "weather" and card["capabilities"]["streaming"] is True
    assert card["supportedInterfaces"][0]["url"] == f"{server.url}/a2a/weather"
    root = httpx.get(f"{server.url}/.well-known/agent-card.json").json()
    assert sorted(s["id"] for s in root["skills"]) == ["echo", "failing", "weather"]
    assert httpx.get(f"{server.url}/a2a/nope/.well-known/agent-card.json").status_code == 404


async def test_send_continue_and_get(server: LiveServer) -> None:
    client = await create_client(f"{server.url}/a2a/echo", ClientConfig(streaming=False))
    try:
        task = await final_task(client, message("hello"))
        assert task.status.state == pb.TASK_STATE_COMPLETED
        assert task.artifacts[0].parts[0].text == "you said: hello (1 messages)"
        assert task.id.startswith("run_") and task.context_id.startswith("ses_")
        # The context is the Roost session: a second message continues it.
        again = await final_task(client, message("again", task.context_id))
        assert again.artifacts[0].parts[0].text == "you said: again (3 messages)"
        fetched = await client.get_task(pb.GetTaskRequest(id=again.id))
        assert fetched.status.state == pb.TASK_STATE_COMPLETED
        assert fetched.status.message.parts[0].text == "you said: again (3 messages)"
    finally:
        await client.close()
    failing = await create_client(f"{server.url}/a2a/failing", ClientConfig(streaming=False))
    try:
        failed = await final_task(failing, message("x"))
        assert failed.status.state == pb.TASK_STATE_FAILED
    finally:
        await failing.close()


async def test_stream(server: LiveServer) -> None:
    client = await create_client(f"{server.url}/a2a/weather")
    try:
        events = [e async for e in client.send_message(message("Weather in Rome?"))]
    finally:
        await client.close()
    assert events[0].HasField("task")
    chunks = [e.artifact_update for e in events if e.HasField("artifact_update")]
    assert "Rome" in "".join(c.artifact.parts[0].text for c in chunks)
    assert chunks[-1].last_chunk
    assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED


async def test_cancel_and_resubscribe(tmp_path: Path) -> None:
    hold = Hold()
    slow = Agent(name="slow", model=ScriptedModel([call("hold"), "done"]), tools=[hold.tool])
    async with serve(tmp_path, slow) as live:
        client = await create_client(f"{live.url}/a2a/slow")
        try:
            stream = client.send_message(message("go"))
            first = await anext(stream)  # type: ignore[arg-type]
            task_id = first.task.id
            await hold.entered.wait()
            resubscribed = client.subscribe(pb.SubscribeToTaskRequest(id=task_id))
            assert (await anext(resubscribed)).task.id == task_id  # type: ignore[arg-type]
            cancelled = await client.cancel_task(pb.CancelTaskRequest(id=task_id))
            assert cancelled.status.state == pb.TASK_STATE_CANCELED
            rest = [e async for e in stream]
            assert rest[-1].status_update.status.state == pb.TASK_STATE_CANCELED
            await resubscribed.aclose()  # type: ignore[attr-defined]
            await stream.aclose()  # type: ignore[attr-defined]
        finally:
            await client.close()
        assert hold.cancelled.is_open


async def test_unknown_context_is_an_error(server: LiveServer) -> None:
    client = await create_client(f"{server.url}/a2a/echo", ClientConfig(streaming=False))
    try:
        with pytest.raises(Exception, match="session_not_found"):
            await final_task(client, message("x", "ses_missing"))
    finally:
        await client.close()


def test_v0_3_method_names(server: LiveServer) -> None:
    """Clients of A2A 0.3 (`message/send`, `message/stream`, `tasks/get`) are answered too."""
    send = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {
        "kind": "message", "messageId": "m1", "role": "user",
        "parts": [{"kind": "text", "text": "hello"}]}}}
    task = httpx.post(f"{server.url}/a2a/echo", json=send).json()["result"]
    assert task["kind"] == "task" and task["status"]["state"] == "completed"
    assert task["artifacts"][0]["parts"][0]["text"] == "you said: hello (1 messages)"
    got = httpx.post(f"{server.url}/a2a/echo", json={
        "jsonrpc": "2.0", "id": 2, "method": "tasks/get", "params": {"id": task["id"]}}).json()
    assert got["result"]["id"] == task["id"]
    with httpx.stream("POST", f"{server.url}/a2a/echo",
                      json={**send, "method": "message/stream"}) as stream:
        frames = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert '"state":"completed"' in frames[-1]
