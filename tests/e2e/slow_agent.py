"""An agent whose tool takes $SLOW_TOOL_S seconds: lets e2e tests catch a run mid-tool."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from roost import Agent, tool


@tool
async def slow_task(topic: str) -> str:
    """Research a topic slowly.

    Args:
        topic: What to research.
    """
    marker = os.environ.get("SLOW_TOOL_MARKER")
    if marker:
        with Path(marker).open("a") as file:
            file.write(f"{topic}\n")
    await asyncio.sleep(float(os.environ.get("SLOW_TOOL_S", "0")))
    return f"findings about {topic}"


researcher = Agent(name="researcher", model="demo", tools=[slow_task],
                   description="Researches slowly.")
