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
        await asyncio.to_thread(_append_line, Path(marker), topic)
    await asyncio.sleep(float(os.environ.get("SLOW_TOOL_S", "0")))
    return f"findings about {topic}"


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(f"{line}\n")


researcher = Agent(name="researcher", model="demo", tools=[slow_task],
                   description="Researches slowly.")
