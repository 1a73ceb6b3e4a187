"""Two agents: `hanger`'s sync tool blocks until its release file appears (a hung tool);
`quick`'s sync tool returns at once. Lets e2e tests prove one agent's hung tools don't delay
another agent's."""

from __future__ import annotations

import os
import time
from pathlib import Path

from roost import Agent, tool
from roost.agent import Limits


@tool
def hang(topic: str) -> str:
    """Look a topic up, forever.

    Args:
        topic: What to look up.
    """
    release = Path(os.environ["HUNG_TOOL_RELEASE"])
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # a blocking sync tool: no way for asyncio to interrupt it
    return "late"


@tool
def quick(topic: str) -> str:
    """Look a topic up at once.

    Args:
        topic: What to look up.
    """
    return f"quick facts about {topic}"


hanger = Agent(name="hanger", model="demo", tools=[hang],
               limits=Limits(tool_timeout_s=0.3, tool_threads=2))
quickie = Agent(name="quick", model="demo", tools=[quick],
                limits=Limits(tool_timeout_s=2.0, tool_threads=2))
