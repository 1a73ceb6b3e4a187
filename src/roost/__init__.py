"""Roost: a production runtime for AI agents.

    from roost import Agent, tool

    @tool
    def get_weather(city: str) -> str:
        '''Current weather for a city.'''
        return f"Sunny in {city}"

    agent = Agent(name="weather", tools=[get_weather])   # `roost serve this_file.py`
"""

from roost.agent import Agent, Limits, Policies
from roost.config import Settings, load_settings
from roost.errors import RoostError
from roost.models.base import Message, Model, ModelRequest, ModelResponse, TextDelta, ToolCall
from roost.runtime.runtime import RunHandle, Runtime
from roost.sessions.records import Event, RunRecord, Session, Usage
from roost.tools import FunctionTool, Tool, ToolContext, tool

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "Event",
    "FunctionTool",
    "Limits",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "Policies",
    "RoostError",
    "RunHandle",
    "RunRecord",
    "Runtime",
    "Session",
    "Settings",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolContext",
    "Usage",
    "__version__",
    "load_settings",
    "tool",
]
