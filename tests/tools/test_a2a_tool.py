"""`A2AAgentTool` against a Roost server speaking A2A (the cross-process e2e is in
tests/e2e/test_protocols.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roost import Agent, Runtime, Settings
from roost.testing.scripted import ScriptedModel, call
from roost.tools.a2a import A2AAgentTool
from tests.protocols.conftest import serve
from tests.server.conftest import Hold

pytestmark = pytest.mark.timeout(30)


async def test_answers_continue_the_remote_context_and_cancel_the_remote_task(
        tmp_path: Path) -> None:
    hold = Hold()
    echo = Agent(name="echo", model=ScriptedModel(
        [lambda r: f"remote heard {r.messages[-1].content} ({len(r.messages)} messages)"],
        repeat_last=True))
    slow = Agent(name="slow", model=ScriptedModel([call("hold"), "done"]), tools=[hold.tool])
    async with serve(tmp_path, echo, slow) as remote:
        ask = A2AAgentTool(f"{remote.url}/a2a/echo", name="ask")
        wait = A2AAgentTool(f"{remote.url}/a2a/slow", name="wait")
        model = ScriptedModel([call("ask", input="one"), "ok", call("ask", input="two"), "ok",
                               call("wait", input="go"), "never"])
        runtime = Runtime(Settings(store={"url": "memory://"}),
                          [Agent(name="local", model=model, tools=[ask, wait])])
        await runtime.start()
        try:
            session = await runtime.create_session("default", "local")
            results = []
            for _ in range(2):
                handle = await runtime.submit_turn("default", session.id, "go")
                assert (await handle.wait()).status == "completed"
                results += [e.data["content"].strip() for e in handle.events if e.type == "tool.result"]
            # One local session talks to one remote context.
            assert results == ["remote heard one (1 messages)", "remote heard two (3 messages)"]
            handle = await runtime.submit_turn("default", session.id, "go")
            await hold.entered.wait()
            handle.cancel("user")
            assert (await handle.wait()).status == "cancelled"
            async with asyncio.timeout(10):
                await hold.cancelled.wait()  # the remote task was cancelled too
        finally:
            await runtime.close()
