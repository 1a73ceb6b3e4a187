"""`auth.user_scoped` beyond the native session routes: artifacts, and the session and run
ids the protocol adapters take in their bodies (OpenAI `X-Roost-Session-Id`, Responses
`previous_response_id` and retrieval, A2A context and task ids, MCP `session_id`). Another
user of the same tenant gets "not found", as for an unknown id; the owner is served. Over
real HTTP (uvicorn on loopback, the protocols' own clients), on SQLite, PostgreSQL, Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import a2a_pb2 as pb
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from roost import Agent, Policies, Runtime, Settings, tool
from roost.auth.chain import Auth
from roost.auth.keys import new_key, open_key_store
from roost.server.app import create_app
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel, call
from tests.auth.conftest import drop, store_settings
from tests.server.conftest import assert_problem

pytestmark = pytest.mark.timeout(60)

BIG = "x" * 500


@tool
def report(topic: str) -> str:
    """A long report."""
    return f"{topic}: {BIG}"


def agents() -> list[Agent]:
    return [Agent(name="echo", model=ScriptedModel(["hi"], repeat_last=True)),
            Agent(name="reporter", model=ScriptedModel([call("report", topic="q"), "done"]),
                  tools=[report], policies=Policies(max_tool_result_bytes=100))]


@asynccontextmanager
async def scoped(backend: str, tmp_path: Path) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A live server with auth and user_scoped on; tokens of users ann and bob (tenant acme)."""
    store = store_settings(backend, tmp_path)
    settings = Settings.model_validate({
        "store": store, "server": {"shutdown_grace_s": 0},
        "auth": {"enabled": True, "user_scoped": True}})
    keys = open_key_store(store["url"], **store.get("options", {}))
    tokens = {}
    await keys.open()
    try:
        for user in ("ann", "bob"):
            key, tokens[user] = new_key("acme", "user", user, user_id=user)
            await keys.add(key)
    finally:
        await keys.close()
    runtime = Runtime(settings, agents())
    live = LiveServer(runtime, app=create_app(runtime, auth=Auth.from_settings(settings)))
    try:
        async with live:
            yield live.url, tokens
    finally:
        await drop(backend, store)


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
async def test_artifacts_are_scoped_to_their_session_owner(backend: str, tmp_path: Path) -> None:
    async with scoped(backend, tmp_path) as (url, tokens), \
            httpx.AsyncClient(base_url=url, timeout=10) as http:
        ann = {"Authorization": f"Bearer {tokens['ann']}"}
        bob = {"Authorization": f"Bearer {tokens['bob']}"}
        sid = (await http.post("/v1/agents/reporter/sessions", json={}, headers=ann)).json()["id"]
        bob_sid = (await http.post("/v1/agents/echo/sessions", json={}, headers=bob)).json()["id"]
        turn = await http.post(f"/v1/sessions/{sid}/turns", json={"input": "go"}, headers=ann)
        assert turn.json()["status"] == "completed", turn.text
        events = (await http.get(f"/v1/sessions/{sid}/events", headers=ann)).json()["items"]
        artifact = next(e["data"]["artifact"]["id"] for e in events
                        if e["type"] == "tool.result")
        mine = await http.get(f"/v1/sessions/{sid}/artifacts/{artifact}", headers=ann)
        assert mine.status_code == 200 and BIG in mine.text
        # The tenant-wide route is closed to user-scoped users; the session route to others.
        assert_problem(await http.get(f"/v1/artifacts/{artifact}", headers=ann), 404,
                       "artifact_not_found")
        assert_problem(await http.get(f"/v1/sessions/{sid}/artifacts/{artifact}",
                                      headers=bob), 404, "session_not_found")
        assert_problem(await http.get(f"/v1/sessions/{bob_sid}/artifacts/{artifact}",
                                      headers=bob), 404, "artifact_not_found")


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_protocol_ids_are_scoped_to_their_user(backend: str, tmp_path: Path) -> None:
    async with scoped(backend, tmp_path) as (url, tokens):
        ann = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=tokens["ann"], max_retries=0)
        bob = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=tokens["bob"], max_retries=0)
        try:
            raw = await ann.chat.completions.with_raw_response.create(
                model="echo", messages=[{"role": "user", "content": "a"}])
            session_id = raw.headers["x-roost-session-id"]
            # The session the adapter made is ann's: she continues it, bob cannot.
            again = await ann.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "b"}],
                extra_headers={"X-Roost-Session-Id": session_id})
            assert again.choices[0].message.content == "hi"
            with pytest.raises(openai.NotFoundError):
                await bob.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "c"}],
                    extra_headers={"X-Roost-Session-Id": session_id})
            async with httpx.AsyncClient(base_url=url) as http:
                owned = await http.get(f"/v1/sessions/{session_id}",
                                       headers={"Authorization": f"Bearer {tokens['ann']}"})
                assert owned.status_code == 200 and owned.json()["user_id"] == "ann"
            response = await ann.responses.create(model="echo", input="d")
            assert (await ann.responses.retrieve(response.id)).id == response.id
            with pytest.raises(openai.NotFoundError):
                await bob.responses.retrieve(response.id)
            with pytest.raises(openai.NotFoundError):
                await bob.responses.create(model="echo", input="e",
                                           previous_response_id=response.id)
        finally:
            await ann.close()
            await bob.close()

        async with create_mcp_http_client(
                headers={"Authorization": f"Bearer {tokens['bob']}"}) as mcp_http, \
                streamable_http_client(f"{url}/mcp", http_client=mcp_http) as (r, w), \
                ClientSession(r, w) as mcp_session:
            await mcp_session.initialize()
            result = await mcp_session.call_tool("echo", {"input": "f", "session_id": session_id})
            assert result.is_error
            assert "session_not_found" in str(result.content)

        async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {tokens['bob']}"}) as http:
            client = await create_client(f"{url}/a2a/echo",
                                         ClientConfig(streaming=False, httpx_client=http))
            try:
                with pytest.raises(Exception, match="(?i)not.found"):
                    await client.get_task(pb.GetTaskRequest(id=response.id))
                request = pb.SendMessageRequest(message=pb.Message(
                    message_id="m-x", role=pb.ROLE_USER, context_id=session_id,
                    parts=[pb.Part(text="g")]))
                with pytest.raises(Exception, match="(?i)not.found"):
                    async for _ in client.send_message(request):
                        pass
            finally:
                await client.close()


def test_unscoped_runtime_calls_see_everything() -> None:
    from roost.runtime.scope import ACTING_USER, UNSCOPED, hidden
    from roost.sessions.records import Session

    session = Session(id="ses_1", agent="echo", user_id="ann")
    assert ACTING_USER.get() is UNSCOPED and not hidden(session)

    async def as_bob() -> bool:
        token = ACTING_USER.set("bob")
        try:
            return hidden(session)
        finally:
            ACTING_USER.reset(token)

    assert asyncio.run(as_bob()) is True
    assert not hidden(session)
