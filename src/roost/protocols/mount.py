"""The protocols an app serves, in front of the native routes (`server/app.py` mounts them):

    protocols = Protocols(runtime)
    entry = protocols.wrap(entry)            # /v1/chat/completions, /v1/responses, /mcp, A2A
    async with protocols.lifespan(): ...     # inside the app's lifespan, after runtime.start()

The OpenAI-compatible API is always on; MCP and A2A are mounted when their extras
(`roost[mcp]`, `roost[a2a]`) are installed, and are skipped with a log line otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.types import ASGIApp

from roost.protocols.openai_api import OpenAIRoutes
from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.protocols")


class Protocols:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tenant_header = runtime.settings.server.tenant_header
        self._servers: list[Any] = []  # protocol servers with a lifespan of their own

    def wrap(self, entry: ASGIApp) -> ASGIApp:
        entry = OpenAIRoutes(entry, runtime=self.runtime, tenant_header=self.tenant_header)
        if importlib.util.find_spec("mcp") is not None:
            from roost.protocols.mcp_server import AgentsMCPServer, MCPRoute

            server = AgentsMCPServer(self.runtime, self.tenant_header)
            self._servers.append(server)
            entry = MCPRoute(entry, server)
        else:
            log.info("/mcp is off: pip install 'roost[mcp]' to serve agents over MCP")
        if importlib.util.find_spec("a2a") is not None:
            from roost.protocols.a2a import A2ARoutes

            entry = A2ARoutes(entry, self.runtime, self.tenant_header)
        else:
            log.info("A2A is off: pip install 'roost[a2a]' to serve agents over A2A")
        return entry

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for server in self._servers:
                await stack.enter_async_context(server.lifespan())
            yield
