"""Roost agents as an MCP server: `/mcp` (streamable HTTP), each agent one tool.

    async with streamable_http_client("http://127.0.0.1:8000/mcp") as (read, write), \\
            ClientSession(read, write) as session:
        await session.initialize()
        result = await session.call_tool("weather", {"input": "Weather in Oslo?"})

A tool call is one turn through the runtime (`create_session`, `submit_turn`, `wait`): the
same admission, deadlines and persistence as the native route. Arguments: `input` (the user
message) and an optional `session_id` continuing a Roost session; without it a new session
starts. The result's text is the agent's answer; its structured content also names the
`session_id` (pass it back to continue) and the `run_id`. A run that fails, or a turn the
runtime refuses (overload, busy session), is a tool error (`isError`) saying why.

Stateless transport (no MCP session kept between requests): any instance of a fleet can
answer any request. Needs the `roost[mcp]` extra; `mount` returns None without it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from roost.errors import RoostError
from roost.protocols.wire import tenant_of
from roost.runtime.runtime import Runtime
from roost.sessions.records import DEFAULT_TENANT

try:
    import mcp.types as mcp_types
    from mcp.server.lowlevel.server import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
except ImportError:  # pragma: no cover - depends on the installed extras
    mcp_types = None  # type: ignore[assignment]

log = logging.getLogger("roost.protocols.mcp")

PATH = "/mcp"

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "input": {"type": "string", "description": "The message to the agent."},
        "session_id": {"type": "string",
                       "description": "Continue this Roost session (from an earlier result)."},
    },
    "required": ["input"],
}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {"output": {"type": "string"}, "session_id": {"type": "string"},
                   "run_id": {"type": "string"}, "status": {"type": "string"}},
    "required": ["output", "session_id", "run_id", "status"],
}


class AgentsMCPServer:
    """The MCP server of one runtime: `asgi` serves `/mcp`; `lifespan()` runs its sessions."""

    def __init__(self, runtime: Runtime, tenant_header: str | None) -> None:
        self.runtime = runtime
        self.tenant_header = tenant_header.lower() if tenant_header else None
        self.server: Server[Any] = Server("roost", on_list_tools=self._list_tools,
                                          on_call_tool=self._call_tool)
        # Loopback DNS-rebinding protection stays the SDK's default; the access rules of
        # the rest of the app apply in front of this (auth, tenancy).
        self.manager = StreamableHTTPSessionManager(app=self.server, stateless=True,
                                                    json_response=True)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.manager.handle_request(scope, receive, send)

    def _tenant(self, ctx: Any) -> str:
        request = getattr(ctx, "request", None)
        if request is None:
            return DEFAULT_TENANT
        header = self.tenant_header.encode("latin-1") if self.tenant_header else None
        return tenant_of(request.scope, dict(request.scope["headers"]), header)

    async def _list_tools(self, ctx: Any, params: Any) -> mcp_types.ListToolsResult:
        tools = []
        for name, hosted in self.runtime.agents.items():
            agent = hosted.agent
            tools.append(mcp_types.Tool(
                name=name, description=agent.description or f"The Roost agent {name}.",
                input_schema=INPUT_SCHEMA, output_schema=OUTPUT_SCHEMA))
        return mcp_types.ListToolsResult(tools=tools)

    async def _call_tool(self, ctx: Any,
                         params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        runtime = self.runtime
        arguments = params.arguments or {}
        text = arguments.get("input")
        session_id = arguments.get("session_id")
        if not isinstance(text, str) or (session_id is not None
                                         and not isinstance(session_id, str)):
            return _error("arguments: `input` must be a string, `session_id` a string")
        tenant = self._tenant(ctx)
        try:
            if session_id is None:
                session_id = (await runtime.create_session(
                    tenant, params.name, metadata={"protocol": "mcp"})).id
            handle = await runtime.submit_turn(tenant, session_id, text)
        except RoostError as exc:
            return _error(f"{exc.type}: {exc.message}")
        try:
            run = await handle.wait()
        except BaseException:
            # The MCP client cancelled the call (notifications/cancelled): so does the run.
            handle.cancel("disconnect")
            raise
        structured = {"output": run.output or "", "session_id": run.session_id,
                      "run_id": run.id, "status": run.status}
        if run.status != "completed":
            message = str((run.error or {}).get("message") or run.status)
            return mcp_types.CallToolResult(
                content=[mcp_types.TextContent(text=f"run {run.id} {run.status}: {message}")],
                structured_content=structured, is_error=True)
        return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=run.output or "")],
                                        structured_content=structured)


def _error(message: str) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(text=message)],
                                    is_error=True)


class MCPRoute:
    """ASGI middleware: `/mcp` to the MCP server, everything else to `app`."""

    def __init__(self, app: ASGIApp, server: AgentsMCPServer) -> None:
        self.app = app
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/") == PATH:
            scope["route"] = _ROUTE
            await self.server.asgi(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Route:
    path = PATH


_ROUTE = _Route()


def available() -> bool:
    return mcp_types is not None
