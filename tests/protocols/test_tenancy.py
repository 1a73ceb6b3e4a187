"""Every protocol decides the tenant as the native routes do: another tenant's session, run
or task is not found."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import a2a_pb2 as pb
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from roost import Agent
from roost.testing.scripted import ScriptedModel
from tests.protocols.conftest import serve

pytestmark = pytest.mark.timeout(30)


async def test_tenants_do_not_see_each_other(tmp_path: Path) -> None:
    echo = Agent(name="echo", model=ScriptedModel(["hi"], repeat_last=True))
    async with serve(tmp_path, echo, server={"tenant_header": "X-Tenant"}) as live:
        acme = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0,
                                  default_headers={"X-Tenant": "acme"})
        other = openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="x", max_retries=0,
                                   default_headers={"X-Tenant": "other"})
        raw = await acme.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": "a"}])
        session_id = raw.headers["x-roost-session-id"]
        async with httpx.AsyncClient() as native:
            found = await native.get(f"{live.url}/v1/sessions/{session_id}",
                                     headers={"X-Tenant": "acme"})
            assert found.status_code == 200
        with pytest.raises(openai.NotFoundError):
            await other.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "b"}],
                extra_headers={"X-Roost-Session-Id": session_id})
        response = await acme.responses.create(model="echo", input="c")
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(response.id)
        await acme.close()
        await other.close()

        async with create_mcp_http_client(headers={"X-Tenant": "other"}) as mcp_http, \
                streamable_http_client(f"{live.url}/mcp", http_client=mcp_http) as (r, w), \
                ClientSession(r, w) as mcp_session:
            await mcp_session.initialize()
            result = await mcp_session.call_tool("echo", {"input": "d", "session_id": session_id})
            assert result.is_error

        http = httpx.AsyncClient(headers={"X-Tenant": "other"})
        client = await create_client(f"{live.url}/a2a/echo",
                                     ClientConfig(streaming=False, httpx_client=http))
        try:
            assert await _task_or_none(client, response.id) is None
        finally:
            await client.close()
            await http.aclose()


async def _task_or_none(client: object, task_id: str) -> pb.Task | None:
    try:
        return await client.get_task(pb.GetTaskRequest(id=task_id))  # type: ignore[attr-defined, no-any-return]
    except Exception as exc:
        assert "not found" in str(exc).lower() or "TaskNotFound" in type(exc).__name__, exc
        return None
