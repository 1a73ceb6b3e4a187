"""Tools: the protocol, function tools, and the context a call sees."""

from roost.tools.base import Tool, ToolArgumentsError, ToolContext, Toolset
from roost.tools.function import FunctionTool, tool

__all__ = ["FunctionTool", "Tool", "ToolArgumentsError", "ToolContext", "Toolset", "tool"]
