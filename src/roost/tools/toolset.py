"""Toolsets the runtime owns: started once when it starts, closed when it closes, and able to
say that their tools changed.

    class Toolset(Protocol):                 # roost.tools.base: what an agent accepts
        async def list_tools(self) -> list[Tool]: ...

A toolset may also have `start()` and `close()` (a process or a connection it keeps: an MCP
server) and `subscribe(callback)` (called after its tools changed, e.g. on MCP's
`tools/list_changed`). `resolve_tools` merges an agent's function tools with its toolsets'
tools, refusing two tools of one name (prefix a toolset to tell them apart).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from roost.errors import ConfigError
from roost.models.base import ToolSpec
from roost.tools.base import Tool, Toolset

log = logging.getLogger("roost.tools")


async def start_toolset(toolset: Toolset) -> None:
    start = getattr(toolset, "start", None)
    if start is not None:
        await start()


async def close_toolset(toolset: object) -> None:
    close = getattr(toolset, "close", None)
    if close is not None:
        await close()


def subscribe(toolset: Toolset, callback: Callable[[], Awaitable[None]]) -> None:
    """Call `callback` whenever `toolset`'s tools change (a no-op for static toolsets)."""
    hook = getattr(toolset, "subscribe", None)
    if hook is not None:
        hook(callback)


async def resolve_tools(agent: str, tools: Iterable[Tool],
                        toolsets: Iterable[Toolset]) -> tuple[dict[str, Tool], list[ToolSpec]]:
    """The agent's tool table and the specs its model sees: function tools first."""
    table: dict[str, Tool] = {t.name: t for t in tools}
    for toolset in toolsets:
        for tool in await toolset.list_tools():
            if tool.name in table:
                raise ConfigError(f"agent {agent}: two tools are named {tool.name!r}; give "
                                  "the toolset a prefix", [(f"agents.{agent}", tool.name)])
            table[tool.name] = tool
    specs = [ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
             for t in table.values()]
    return table, specs


def toolsets_of(tools: Iterable[Any]) -> list[Toolset]:
    return [t for t in tools if isinstance(t, Toolset) and not isinstance(t, Tool)]
