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
audio and binary resources stored as artifacts of the call (`ToolContext.keep`: recorded on
the `tool.result` event under `artifacts`, readable at `GET /v1/artifacts/{id}`), the model
reading a reference `[image: image/png, 5120 bytes, artifact <sha256>]`; a text resource
over `inline_text_bytes` likewise, after a preview (`ContentLimits`; the per-server keys
`max_artifact_bytes` and `inline_text_bytes`). The engine offloads a whole result over the
agent's `max_tool_result_bytes` as it does any tool's.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import orjson

from roost.errors import ConfigError, RoostError, ToolError
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

_DECODE_IN_THREAD_BYTES = 256 * 1024


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
                 backoff: Backoff = Backoff(), max_artifact_bytes: int | None = None,
                 inline_text_bytes: int | None = None) -> None:
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
        defaults = ContentLimits()
        self.limits = ContentLimits(
            max_artifact_bytes=defaults.max_artifact_bytes if max_artifact_bytes is None
            else max_artifact_bytes,
            inline_text_bytes=defaults.inline_text_bytes if inline_text_bytes is None
            else inline_text_bytes)
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
    async def call(self, tool: str, arguments: dict[str, Any], timeout_s: float | None,
                   ctx: ToolContext | None = None) -> str:
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
        text = await result_text(result, ctx, self.limits)
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
        return await self.toolset.call(self.remote_name, parsed, remaining, ctx)


@dataclass(frozen=True, slots=True)
class ContentLimits:
    """What of an MCP result becomes an artifact rather than model context.

    Images, audio and binary resources are always artifacts (base64 in a text context costs
    tokens and tells a model nothing) up to `max_artifact_bytes`; a bigger one is named and
    dropped. A text resource over `inline_text_bytes` is an artifact too, the model reading
    its first `preview_chars` characters. Plain text blocks stay inline: the engine offloads
    a whole result over the agent's `policies.max_tool_result_bytes`."""

    max_artifact_bytes: int = 16 * 1024 * 1024
    inline_text_bytes: int = 16 * 1024
    preview_chars: int = 2000


async def result_text(result: mcp_types.CallToolResult, ctx: ToolContext | None = None,
                      limits: ContentLimits = ContentLimits()) -> str:
    """A tool result as text for the model: text blocks as they are, other content kept as
    artifacts of the call (`ctx.keep`) and referenced by id. Without a context (or an
    artifact store) they are a placeholder naming type and size."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
            parts.append(await _binary(block.type, block.data, block.mime_type, ctx, limits))
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            label = f"resource {resource.uri}"
            if isinstance(resource, mcp_types.BlobResourceContents):
                parts.append(await _binary(label, resource.blob,
                                           resource.mime_type or "application/octet-stream",
                                           ctx, limits))
            else:
                parts.append(await _text(label, resource.text,
                                         resource.mime_type or "text/plain", ctx, limits))
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource {block.uri}]")
    if not parts and result.structured_content is not None:
        return orjson.dumps(result.structured_content).decode()
    return "\n".join(parts)


async def _binary(label: str, encoded: str, media_type: str, ctx: ToolContext | None,
                  limits: ContentLimits) -> str:
    size = len(encoded) * 3 // 4 - encoded[-2:].count("=")
    if size > limits.max_artifact_bytes:
        return (f"[{label}: {media_type}, {size} bytes; not kept: over the "
                f"{limits.max_artifact_bytes}-byte limit]")
    try:
        # Decoding a few MiB takes milliseconds: off the loop above this size.
        data = (await asyncio.to_thread(base64.b64decode, encoded, validate=True)
                if size > _DECODE_IN_THREAD_BYTES else base64.b64decode(encoded, validate=True))
    except binascii.Error:
        return f"[{label}: {media_type}; not kept: the server sent invalid base64]"
    return await _keep(label, data, media_type, ctx)


async def _text(label: str, text: str, media_type: str, ctx: ToolContext | None,
                limits: ContentLimits) -> str:
    if len(text) * 4 <= limits.inline_text_bytes:  # at most 4 bytes a character: no encoding
        return text
    data = text.encode("utf-8", "replace")
    if len(data) <= limits.inline_text_bytes:
        return text
    if len(data) > limits.max_artifact_bytes:
        return (f"{text[:limits.preview_chars]}… [{label}: {media_type}, {len(data)} bytes; "
                f"not kept: over the {limits.max_artifact_bytes}-byte limit]")
    reference = await _keep(label, data, media_type, ctx)
    return f"{text[:limits.preview_chars]}… {reference}"


async def _keep(label: str, data: bytes, media_type: str, ctx: ToolContext | None) -> str:
    try:
        ref = await ctx.keep(data, media_type) if ctx is not None else None
    except RoostError as exc:  # over the artifact store's own limit, or the store is down
        log.warning("could not keep a %d-byte %s from an MCP tool: %s", len(data), media_type,
                    exc)
        return f"[{label}: {media_type}, {len(data)} bytes; it could not be kept]"
    if ref is None:
        return f"[{label}: {media_type}, {len(data)} bytes]"
    return f"[{label}: {media_type}, {ref.size} bytes, artifact {ref.id}]"


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
