"""Roost agents as MCP tools at `/mcp`, called with the `mcp` SDK's client over real HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from roost.testing.live import LiveServer

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def connect(server: LiveServer) -> AsyncIterator[ClientSession]:
    async with streamable_http_client(f"{server.url}/mcp") as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def test_each_agent_is_a_tool(server: LiveServer) -> None:
    async with connect(server) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    assert sorted(tools) == ["echo", "failing", "weather"]
    assert tools["weather"].description == "Answers weather questions."
    assert tools["weather"].input_schema["required"] == ["input"]


async def test_call_and_continue_a_session(server: LiveServer) -> None:
    async with connect(server) as session:
        first = await session.call_tool("echo", {"input": "hello"})
        assert not first.is_error
        assert first.content[0].text == "you said: hello (1 messages)"  # type: ignore[union-attr]
        session_id = first.structured_content["session_id"]
        again = await session.call_tool("echo", {"input": "again", "session_id": session_id})
        assert again.content[0].text == "you said: again (3 messages)"  # type: ignore[union-attr]
        assert again.structured_content["session_id"] == session_id
        weather = await session.call_tool("weather", {"input": "Weather in Paris?"})
        assert "Paris" in weather.content[0].text  # type: ignore[union-attr]


async def test_failures_are_tool_errors(server: LiveServer) -> None:
    async with connect(server) as session:
        failed = await session.call_tool("failing", {"input": "x"})
        assert failed.is_error and failed.structured_content["status"] == "failed"
        missing = await session.call_tool("echo", {"input": "x", "session_id": "ses_nope"})
        assert missing.is_error
        assert "session_not_found" in missing.content[0].text  # type: ignore[union-attr]
        empty = await session.call_tool("echo", {"input": " "})
        assert empty.is_error
