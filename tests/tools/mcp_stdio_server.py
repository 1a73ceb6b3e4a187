"""A stdio MCP server for tests: `echo` answers, `crash` kills the process (no answer),
`grow` adds a tool `extra` and announces it (`notifications/tools/list_changed`)."""

from __future__ import annotations

import os

from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("test-stdio")


@server.tool()
def echo(text: str) -> str:
    """Echo the text back."""
    return f"echo: {text} (pid {os.getpid()})"


@server.tool()
def crash() -> str:
    """Exit the server process at once."""
    os._exit(3)


def extra() -> str:
    """A tool that exists after `grow`."""
    return "extra"


@server.tool()
async def grow(ctx: Context) -> str:
    """Add the `extra` tool."""
    server.add_tool(extra)
    await ctx.session.send_tool_list_changed()
    return "grown"


if __name__ == "__main__":
    server.run("stdio")
