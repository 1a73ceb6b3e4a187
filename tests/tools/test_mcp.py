"""`MCPToolset` against real MCP servers: `mcp-server-time` from the package index over stdio,
a streamable-HTTP server built here with the SDK, and a stdio server that crashes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import mcp_types
import orjson
import pytest
import uvicorn
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from roost import Agent, Runtime, Settings
from roost.testing.live import free_port
from roost.testing.scripted import ScriptedModel, call
from roost.tools.base import ToolContext
from roost.tools.mcp import Backoff, MCPToolset

pytestmark = pytest.mark.timeout(60)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
REPORT = "# Report\n" + "All quiet on every front. " * 2000

TIME_SERVER = shutil.which("mcp-server-time") or str(Path(sys.executable).parent / "mcp-server-time")
STDIO_SERVER = Path(__file__).parent / "mcp_stdio_server.py"


def tool_results(events: list[object]) -> list[dict[str, object]]:
    return [e.data for e in events if e.type == "tool.result"]  # type: ignore[attr-defined]


async def run_turn(runtime: Runtime, agent: str, text: str = "go") -> list[object]:
    session = await runtime.create_session("default", agent)
    handle = await runtime.submit_turn("default", session.id, text)
    run = await handle.wait()
    assert run.status == "completed", run.error
    return list(handle.events)


async def test_stdio_time_server_from_the_package_index() -> None:
    model = ScriptedModel([call("time_get_current_time", timezone="Europe/Paris"), "done"])
    toolset = MCPToolset.stdio(TIME_SERVER, "--local-timezone", "UTC", prefix="time")
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="clock", model=model, tools=[toolset])])
    await runtime.start()
    try:
        hosted = runtime.hosted("clock")
        assert sorted(hosted.tools) == ["time_convert_time", "time_get_current_time"]
        assert {s.name for s in model.requests[0].tools} if model.requests else True
        events = await run_turn(runtime, "clock")
        result = tool_results(events)[0]
        assert orjson.loads(str(result["content"]))["timezone"] == "Europe/Paris"
        # The model saw the MCP tools with their schemas.
        specs = {s.name: s for s in model.requests[0].tools}
        assert "timezone" in specs["time_get_current_time"].parameters["properties"]
    finally:
        await runtime.close()
    assert not toolset.connected.is_set()  # the server process is stopped with the runtime


async def test_mcp_servers_from_config_are_shared_by_agents() -> None:
    settings = Settings(
        store={"url": "memory://"},
        mcp_servers={"time": {"command": TIME_SERVER, "args": ["--local-timezone", "UTC"],
                              "prefix": "t"}},
        agents={"a": {"mcp_servers": ["time"]}, "b": {"mcp_servers": ["time"]}})
    runtime = Runtime(settings, [Agent(name="a", model=ScriptedModel(["x"])),
                                 Agent(name="b", model=ScriptedModel(["y"]))])
    await runtime.start()
    try:
        tools_a, tools_b = runtime.hosted("a").tools, runtime.hosted("b").tools
        assert "t_get_current_time" in tools_a and "t_get_current_time" in tools_b
        assert tools_a["t_get_current_time"].toolset is tools_b["t_get_current_time"].toolset  # type: ignore[attr-defined]
    finally:
        await runtime.close()


# -- streamable HTTP ------------------------------------------------------------------------------
class HTTPServer:
    """An MCP server over streamable HTTP on a free port, in a thread with its own loop."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.started = threading.Event()
        server = MCPServer("test-http")

        @server.tool()
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @server.tool()
        async def wait_forever() -> str:
            """Never answers (until cancelled)."""
            self.started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return "unreachable"

        @server.tool()
        def chart() -> list[mcp_types.TextContent | mcp_types.ImageContent]:
            """A chart (an image) and its caption."""
            return [mcp_types.TextContent(text="Sales by month:"),
                    Image(data=PNG, format="png").to_image_content()]

        @server.tool()
        def poster() -> Image:
            """An image over the toolset's artifact limit."""
            return Image(data=PNG * 40, format="png")

        @server.tool()
        def report() -> list[mcp_types.EmbeddedResource]:
            """A long text resource and a binary one."""
            return [mcp_types.EmbeddedResource(resource=mcp_types.TextResourceContents(
                        uri="file:///report.md", mime_type="text/markdown", text=REPORT)),
                    mcp_types.EmbeddedResource(resource=mcp_types.BlobResourceContents(
                        uri="file:///data.bin", blob=base64.b64encode(b"\x00\x01" * 64)
                        .decode()))]

        @server.tool()
        def fail() -> str:
            """Always fails."""
            raise ToolError("this tool fails")

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        config = uvicorn.Config(server.streamable_http_app(), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> HTTPServer:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            threading.Event().wait(0.01)
        raise RuntimeError("the MCP server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def http_server() -> Iterator[HTTPServer]:
    with HTTPServer() as server:
        yield server


@pytest.fixture
async def http_toolset(http_server: HTTPServer) -> AsyncIterator[MCPToolset]:
    toolset = MCPToolset.http(http_server.url, headers={"X-Test": "1"}, name="calc",
                              timeout_s=1.0)
    await toolset.start()
    yield toolset
    await toolset.close()


async def test_http_results_errors_and_timeout(http_toolset: MCPToolset) -> None:
    model = ScriptedModel([[call("add", a=2, b=3), call("fail"), call("wait_forever")], "done"])
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="calc", model=model, tools=[http_toolset])])
    await runtime.start()
    try:
        results = {r["name"]: str(r["content"]) for r in tool_results(await run_turn(runtime,
                                                                                     "calc"))}
    finally:
        await runtime.close()
    assert results["add"] == "5"
    assert "this tool fails" in results["fail"]
    assert "timed out" in results["wait_forever"]


async def test_images_and_large_content_become_artifacts(http_server: HTTPServer) -> None:
    """An image from a real MCP server (the SDK's `Image`) is stored as an artifact of the
    call: the model reads a reference, the tool.result event lists it, and its bytes read
    back whole; an image over `max_artifact_bytes` is named, not kept; a long text resource
    is a preview and an artifact; a binary resource an artifact."""
    toolset = MCPToolset.http(http_server.url, name="charts", max_artifact_bytes=64 * 1024,
                              inline_text_bytes=4096)
    model = ScriptedModel([[call("chart"), call("poster"), call("report")], "done"])
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="charts", model=model, tools=[toolset])])
    await runtime.start()
    try:
        results = {r["name"]: r for r in tool_results(await run_turn(runtime, "charts"))}
        chart, poster, report = results["chart"], results["poster"], results["report"]
        digest = hashlib.sha256(PNG).hexdigest()
        assert chart["content"] == (f"Sales by month:\n[image: image/png, {len(PNG)} bytes, "
                                    f"artifact {digest}]")
        assert chart["artifacts"] == [{"id": digest, "size": len(PNG), "sha256": digest,
                                       "media_type": "image/png"}]
        assert await runtime.artifacts.get("default", digest) == PNG
        # What the model read in its next step is the reference, never base64.
        tool_messages = [m.content for m in model.requests[1].messages if m.role == "tool"]
        assert any(f"artifact {digest}" in (c or "") for c in tool_messages)
        assert not any(base64.b64encode(PNG[:64]).decode()[:40] in (c or "")
                       for c in tool_messages)
        assert "not kept: over the" in str(poster["content"]) and "artifacts" not in poster
        # The long text resource: a preview, then the reference; the blob: a reference.
        text_ref, blob_ref = report["artifacts"]  # type: ignore[misc]
        assert text_ref["media_type"] == "text/markdown"
        assert await runtime.artifacts.get("default", text_ref["id"]) == REPORT.encode()
        assert str(report["content"]).startswith("# Report\nAll quiet")
        assert f"[resource file:///report.md: text/markdown, {len(REPORT)} bytes, artifact " \
            f"{text_ref['id']}]" in str(report["content"])
        assert await runtime.artifacts.get("default", blob_ref["id"]) == b"\x00\x01" * 64
        assert len(str(report["content"])) < 2600
    finally:
        await runtime.close()
        await toolset.close()


async def test_cancelling_a_run_cancels_the_mcp_call(http_server: HTTPServer,
                                                     http_toolset: MCPToolset) -> None:
    model = ScriptedModel([call("wait_forever"), "done"])
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="calc", model=model, tools=[http_toolset])])
    await runtime.start()
    try:
        session = await runtime.create_session("default", "calc")
        handle = await runtime.submit_turn("default", session.id, "go")
        assert await asyncio.to_thread(http_server.started.wait, 10)
        handle.cancel("user")
        assert (await handle.wait()).status == "cancelled"
        # MCP's notifications/cancelled reached the server: its handler was cancelled.
        assert await asyncio.to_thread(http_server.cancelled.wait, 10)
    finally:
        await runtime.close()


# -- a server that crashes ----------------------------------------------------------------------
async def test_a_crashed_stdio_server_is_restarted_and_never_fails_the_runtime() -> None:
    toolset = MCPToolset.stdio(sys.executable, str(STDIO_SERVER), name="crashy",
                               backoff=Backoff(first_s=0.05, max_s=0.2))
    model = ScriptedModel([call("crash"), "first", call("echo", text="hi"), "second"])
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="crashy", model=model, tools=[toolset])])
    reconnected = asyncio.Event()

    async def listed() -> None:  # called after every (re)connection's tools/list
        if toolset.connections >= 2:
            reconnected.set()

    await runtime.start()
    try:
        toolset.subscribe(listed)
        first = tool_results(await run_turn(runtime, "crashy"))[0]
        assert str(first["content"]).startswith("Error")  # the model reads the failure
        async with asyncio.timeout(20):
            await reconnected.wait()
        assert toolset.connections == 2
        second = tool_results(await run_turn(runtime, "crashy"))[0]
        assert str(second["content"]).startswith("echo: hi")
    finally:
        await runtime.close()


async def test_tools_are_listed_again_on_list_changed() -> None:
    toolset = MCPToolset.stdio(sys.executable, str(STDIO_SERVER), name="stdio", prefix="s")
    runtime = Runtime(Settings(store={"url": "memory://"}),
                      [Agent(name="growing", model=ScriptedModel(["x"]), tools=[toolset])])
    await runtime.start()
    try:
        assert "s_extra" not in runtime.hosted("growing").tools
        listed = asyncio.Event()

        async def on_change() -> None:
            listed.set()

        toolset.subscribe(on_change)
        grow = runtime.hosted("growing").tools["s_grow"]
        ctx = ToolContext(run_id="r", session_id="s", tenant="default", agent="growing",
                          call_id="c")
        assert await grow.call("{}", ctx) == "grown"
        async with asyncio.timeout(10):
            await listed.wait()
        assert "s_extra" in runtime.hosted("growing").tools
        assert "s_extra" in {s.name for s in runtime.hosted("growing").tool_specs}
    finally:
        await runtime.close()
