"""An agent whose tool records each execution by its idempotency key: chaos tests count how
often a side effect ran, and whether the log recorded it once."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from roost import Agent, ToolContext, tool


@tool
async def effect(topic: str, ctx: ToolContext) -> str:
    """Do something with a side effect, slowly.

    Args:
        topic: What to act on.
    """
    marker = os.environ.get("EFFECT_MARKER")
    if marker:
        await asyncio.to_thread(_append_line, Path(marker), ctx.idempotency_key)
    await asyncio.sleep(float(os.environ.get("EFFECT_S", "0")))
    return f"done: {topic}"


def _append_line(path: Path, line: str) -> None:
    with path.open("a") as file:
        file.write(f"{line}\n")


worker = Agent(name="worker", model="demo", tools=[effect], description="Acts slowly.")
