"""`MCPToolset`: the tools of an MCP server (stdio or streamable HTTP) as an agent's tools,
on the official `mcp` SDK (`pip install 'roost[mcp]'`).

    time = MCPToolset.stdio("mcp-server-time", "--local-timezone", "UTC", prefix="time")
    docs = MCPToolset.http("https://example.com/mcp", headers={"Authorization": "Bearer …"})
    agent = Agent(name="helper", tools=[time, docs])

Or in roost.toml, shared by the agents that name it:

    [mcp_servers.time]
    command = "mcp-server-time"
    args = ["--local-timezone", "UTC"]
    prefix = "time"                       # tools become time_get_current_time, …
    [agents.helper]
    mcp_servers = ["time"]

The runtime owns the connection: `start()` when it starts (tools listed once, listed again on
`notifications/tools/list_changed`), `close()` when it closes. One task holds the SDK's
session (its transport and task group must live in one task) and keeps it up: when the
server process exits or the connection breaks it connects again after a backoff (0.5 s
doubling to 30 s). Meanwhile a call returns an error the model can read; nothing of it
reaches the runtime. A call has the engine's per-call timeout and the run's cancellation:
cancelling it sends MCP's `notifications/cancelled`.

Results: text blocks joined; structured content as JSON when there is no text; images,
audio and binary resources as a short placeholder naming their type and size (the engine
offloads large results as artifacts by size).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from roost.errors import ConfigError, ToolError
from roost.tools.base import Tool, ToolArgumentsError, ToolContext

try:
    import mcp
    import mcp.types as mcp_types
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp_types.jsonrpc import CONNECTION_CLOSED
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("MCPToolset needs the MCP SDK: pip install 'roost[mcp]'") from exc

log = logging.getLogger("roost.tools.mcp")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between reconnections: `first_s`, doubling up to `max_s`."""

    first_s: float = 0.5
    max_s: float = 30.0


class MCPToolset:
    """An MCP server's tools. Build with `MCPToolset.stdio(...)` or `MCPToolset.http(...)`."""

    def __init__(self, *, name: str, command: str | None = None, args: list[str] | None = None,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 url: str | None = None, headers: dict[str, str] | None = None,
                 prefix: str | None = None, timeout_s: float | None = None,
                 connect_timeout_s: float = 10.0, health_interval_s: float = 10.0,
                 backoff: Backoff = Backoff()) -> None:
        if (command is None) == (url is None):
            raise ConfigError(f"mcp server {name}: give either a command or a url",
                              [(f"mcp_servers.{name}", "command or url")])
        self.name = name
        self.command = command
        self.args = list(args or [])
        self.env = env
        self.cwd = cwd
        self.url = url
        self.headers = dict(headers or {})
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.health_interval_s = health_interval_s
        self.backoff = backoff
        self.tools: list[MCPTool] = []
        self.connections = 0  # successful connections so far (restarts = connections - 1)
        self.connected = asyncio.Event()
        self._session: mcp.ClientSession | None = None
        self._stale = asyncio.Event()  # tools/list_changed arrived
        self._broken = asyncio.Event()  # a call found the connection dead
        self._task: asyncio.Task[None] | None = None
        self._subscribers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def stdio(cls, command: str, *args: str, name: str | None = None,
              **options: Any) -> MCPToolset:
        return cls(name=name or os.path.basename(command), command=command, args=list(args),
                   **options)

    @classmethod
    def http(cls, url: str, *, headers: dict[str, str] | None = None, name: str | None = None,
             **options: Any) -> MCPToolset:
        return cls(name=name or url, url=url, headers=headers, **options)

    @classmethod
    def from_config(cls, name: str, table: dict[str, Any]) -> MCPToolset:
        """From a `[mcp_servers.NAME]` table: command/args/env/cwd or url/headers, and
        prefix, timeout_s."""
        try:
            return cls(name=name, **table)
        except TypeError as exc:
            raise ConfigError(f"mcp_servers.{name}: {exc}",
                              [(f"mcp_servers.{name}", str(exc))]) from None

    # -- the Toolset protocol, and the runtime's lifecycle ------------------------------------
    async def list_tools(self) -> list[Tool]:
        return list(self.tools)

    def subscribe(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._subscribers.append(callback)

    async def start(self) -> None:
        """Connect and list the tools; waits up to `connect_timeout_s` for the first
        connection (a server that is not up yet is connected to in the background)."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._keep_connected(),
                                                            name=f"mcp-{self.name}")
        try:
            await asyncio.wait_for(asyncio.shield(self.connected.wait()), self.connect_timeout_s)
        except TimeoutError:
            log.warning("mcp server %s: not connected after %.1f s; retrying in the background",
                        self.name, self.connect_timeout_s)

    async def close(self) -> None:
        """Disconnect (a stdio server process is stopped)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._session = None
        self.connected.clear()

    # -- calls ---------------------------------------------------------------------------------
    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float | None) -> str:
        session = self._session
        if session is None:
            raise ToolError(f"MCP server {self.name} is unavailable (reconnecting); try later")
        try:
            result = await session.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
        except asyncio.CancelledError:
            raise
        except mcp.MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                self._broken.set()  # the server process exited: reconnect now
            raise ToolError(f"MCP server {self.name}: {exc.error.message}") from None
        except Exception as exc:
            # The transport is gone (process exited, connection reset): reconnect.
            self._broken.set()
            raise ToolError(f"MCP server {self.name} failed: {type(exc).__name__}: {exc}") from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(text or f"MCP tool {tool} failed")
        return text

    # -- the connection's owner -----------------------------------------------------------------
    def _transport(self) -> AbstractAsyncContextManager[Any]:
        if self.command is not None:
            params = StdioServerParameters(command=self.command, args=self.args, env=self.env,
                                           cwd=self.cwd)
            return stdio_client(params, errlog=_stderr_sink())
        assert self.url is not None
        return _http_transport(self.url, self.headers)

    async def _keep_connected(self) -> None:
        delay = self.backoff.first_s
        while True:
            try:
                await self._connect_once()
                delay = self.backoff.first_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("mcp server %s: %s: %s; reconnecting in %.1f s", self.name,
                            type(exc).__name__, exc, delay)
            self._session = None
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff.max_s)

    async def _connect_once(self) -> None:
        async with self._transport() as streams, mcp.ClientSession(
                streams[0], streams[1], message_handler=self._on_message) as session:
            # asyncio.timeout, not wait_for: the SDK's anyio scopes must stay in this task.
            async with asyncio.timeout(self.connect_timeout_s):
                await session.initialize()
            self._broken.clear()
            self._session = session
            self.connections += 1
            await self._refresh(session)
            self.connected.set()
            log.info("mcp server %s: connected, %d tools", self.name, len(self.tools))
            while not self._broken.is_set():
                stale = asyncio.ensure_future(self._stale.wait())
                broken = asyncio.ensure_future(self._broken.wait())
                try:
                    await asyncio.wait((stale, broken), timeout=self.health_interval_s,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stale.cancel()
                    broken.cancel()
                if self._broken.is_set():
                    break
                if self._stale.is_set():
                    self._stale.clear()
                    await self._refresh(session)
                else:
                    # Idle: a ping notices a dead server before a model call does.
                    async with asyncio.timeout(self.connect_timeout_s):
                        await session.send_ping()
            raise ConnectionError("the connection broke")

    async def _refresh(self, session: mcp.ClientSession) -> None:
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        while True:
            params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
            async with asyncio.timeout(self.connect_timeout_s):
                page = await session.list_tools(params=params)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.tools = [MCPTool(self, t) for t in listed]
        for callback in self._subscribers:
            await callback()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._stale.set()


class MCPTool:
    """One MCP tool as a Roost `Tool`; its name carries the toolset's prefix."""

    def __init__(self, toolset: MCPToolset, spec: mcp_types.Tool) -> None:
        self.toolset = toolset
        self.remote_name = spec.name
        self.name = f"{toolset.prefix}_{spec.name}" if toolset.prefix else spec.name
        self.description = spec.description or ""
        self.parameters: dict[str, Any] = dict(spec.input_schema)
        self.timeout_s = toolset.timeout_s
        self.untrusted = True  # another process's text: the prompt-injection check reads it

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        try:
            parsed = orjson.loads(arguments or "{}")
        except orjson.JSONDecodeError as exc:
            raise ToolArgumentsError(f"arguments are not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ToolArgumentsError("arguments must be a JSON object")
        remaining = None
        if ctx.deadline is not None:
            remaining = max(0.001, ctx.deadline - asyncio.get_running_loop().time())
        return await self.toolset.call(self.remote_name, parsed, remaining)


def result_text(result: mcp_types.CallToolResult) -> str:
    """A tool result as text for the model."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(f"[{block.type}: {block.mime_type}, {len(block.data) * 3 // 4} bytes]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            text = getattr(resource, "text", None)
            parts.append(text if text is not None else
                         f"[resource {resource.uri}: {resource.mime_type or 'binary'}]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
    if not parts and result.structured_content is not None:
        return orjson.dumps(result.structured_content).decode()
    return "\n".join(parts)


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> AsyncIterator[Any]:
    async with create_mcp_http_client(headers=headers) as client, \
            streamable_http_client(url, http_client=client) as streams:
        yield streams


def _stderr_sink() -> Any:
    """Where a stdio server's stderr goes: ours (it is the server's log), or the process's
    own when ours is not a file (captured)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__
    return sys.stderr
