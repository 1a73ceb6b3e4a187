"""The protocols an app serves, in front of the native routes (`server/app.py` mounts them):

    protocols = Protocols(runtime)
    entry = protocols.wrap(entry)            # /v1/chat/completions, /v1/responses, /mcp, A2A
    async with protocols.lifespan(): ...     # inside the app's lifespan, after runtime.start()

The OpenAI-compatible API is always on. MCP (`/mcp`) and A2A (`/a2a/…`, the agent cards) are
served when their extras (`roost[mcp]`, `roost[a2a]`) are installed, and their SDKs are
imported on the first request that needs them: together they would add about 30 MiB and a
second of start-up to every server, most of which never speaks them. The MCP server's
session manager then runs in a task this object owns, stopped by `lifespan()` on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from roost.protocols.openai_api import OpenAIRoutes
from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.protocols")

A2A_CARD = "/.well-known/agent-card.json"


class Protocols:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tenant_header = runtime.settings.server.tenant_header
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []  # servers with a lifespan of their own
        #: whether `/mcp` and A2A are served (their extras are installed)
        self.mcp = importlib.util.find_spec("mcp") is not None
        self.a2a = importlib.util.find_spec("a2a") is not None

    def wrap(self, entry: ASGIApp) -> ASGIApp:
        entry = OpenAIRoutes(entry, runtime=self.runtime, tenant_header=self.tenant_header)
        if self.mcp:
            mcp_entry = entry
            entry = OnFirstUse(entry, _is_mcp, lambda: self._mcp_app(mcp_entry))
        else:
            log.info("/mcp is off: pip install 'roost[mcp]' to serve agents over MCP")
        if self.a2a:
            a2a_entry = entry

            async def a2a_app() -> ASGIApp:
                from roost.protocols.a2a import A2ARoutes

                return A2ARoutes(a2a_entry, self.runtime, self.tenant_header)

            entry = OnFirstUse(entry, _is_a2a, a2a_app)
        else:
            log.info("A2A is off: pip install 'roost[a2a]' to serve agents over A2A")
        return entry

    async def _mcp_app(self, entry: ASGIApp) -> ASGIApp:
        from roost.protocols.mcp_server import AgentsMCPServer, MCPRoute

        server = AgentsMCPServer(self.runtime, self.tenant_header)
        ready = asyncio.Event()

        async def serve() -> None:
            async with server.lifespan():
                ready.set()
                await self._stopping.wait()

        # A context of its own: not the first request's (its request id, its trace span).
        task = asyncio.get_running_loop().create_task(serve(), name="roost-mcp-server",
                                                      context=contextvars.Context())
        self._tasks.append(task)
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait((waiter, task), return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            waiter.cancel()
            task.result()  # raises what stopped it
            raise RuntimeError("the MCP server stopped before it started")
        return MCPRoute(entry, server)

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        try:
            yield
        finally:
            self._stopping.set()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)


class OnFirstUse:
    """ASGI middleware: requests `matches` accepts go to the app `build` makes on the first
    of them (once, however many arrive together); the others to `app`."""

    def __init__(self, app: ASGIApp, matches: Callable[[str], bool],
                 build: Callable[[], Awaitable[ASGIApp]]) -> None:
        self.app = app
        self.matches = matches
        self.build = build
        self._built: asyncio.Future[ASGIApp] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.matches(scope["path"]):
            await self.app(scope, receive, send)
            return
        if self._built is None:
            self._built = asyncio.ensure_future(self.build())
        try:
            app = await asyncio.shield(self._built)
        except Exception:
            self._built = None  # the next request tries again
            raise
        await app(scope, receive, send)


def _is_mcp(path: str) -> bool:
    return path.rstrip("/") == "/mcp"


def _is_a2a(path: str) -> bool:
    return path.startswith("/a2a/") or path == A2A_CARD

