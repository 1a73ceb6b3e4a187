"""Two agents for the agent-as-tool e2e tests: `boss` calls `digger` (roost.toml adds it:
`[agents.boss] agent_tools = ["digger"]`); digger's tool takes $SLOW_TOOL_S seconds and
appends to $SLOW_TOOL_MARKER when it starts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from roost import Agent, tool


@tool
async def dig(topic: str) -> str:
    """Dig into a topic.

    Args:
        topic: What to dig into.
    """
    marker = os.environ.get("SLOW_TOOL_MARKER")
    if marker:
        await asyncio.to_thread(Path(marker).write_text, topic)
    await asyncio.sleep(float(os.environ.get("SLOW_TOOL_S", "0")))
    return f"notes on {topic}"


digger = Agent(name="digger", model="demo", tools=[dig], description="Digs into topics.")
boss = Agent(name="boss", model="demo", description="Delegates.")
