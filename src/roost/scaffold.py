'''`roost init`: a project that `roost serve` and `pytest` run at once.

    agent.py       one agent with one tool, on the offline `demo` model
    roost.toml     loads agent.py; the settings a project changes first, commented
    test_agent.py  a test of the agent with a scripted model (no network, no API key)
'''

from __future__ import annotations

from pathlib import Path

AGENT = '''"""The project's agent: `roost serve` serves it, `roost chat assistant` talks to it."""

from roost import Agent, tool


@tool
def greet(name: str) -> str:
    """Greet someone by name.

    Args:
        name: Who to greet.
    """
    return f"Hello, {name}!"


assistant = Agent(
    name="assistant",
    description="Greets people.",
    model="demo",  # offline; e.g. "openai:gpt-4o-mini" with OPENAI_API_KEY set
    instructions="You are friendly and brief. Use greet when asked to greet someone.",
    tools=[greet],
)
'''

CONFIG = '''# roost.toml: `roost config check` validates it; every key is in Roost's roost.example.toml.
load = ["agent.py"]          # relative to this file

[server]
port = 8000

[store]
url = "sqlite:///.roost/roost.db"

# [models.smart]
# provider = "openai"        # reads OPENAI_API_KEY
# model = "gpt-4o-mini"

[agents.assistant]
limits = { max_steps = 6, run_timeout_s = 60 }
'''

TEST = '''"""agent.py's tools and wiring, with a scripted model standing in for a real one."""

import asyncio

from roost import Agent, Runtime, Settings
from roost.testing import ScriptedModel, call

from agent import assistant


def test_the_assistant_greets_with_its_tool() -> None:
    model = ScriptedModel([call("greet", name="Ada"), "Done."])
    agent = Agent(name=assistant.name, model=model, tools=assistant.tools,
                  instructions=assistant.instructions)

    async def turn() -> str:
        runtime = Runtime(Settings(store={"url": "memory://"}), [agent])
        await runtime.start()
        try:
            session = await runtime.create_session("default", agent.name)
            handle = await runtime.submit_turn("default", session.id, "greet Ada")
            return (await handle.wait()).status
        finally:
            await runtime.close()

    assert asyncio.run(turn()) == "completed"
    tool_results = [m for m in model.requests[-1].messages if m.role == "tool"]
    assert tool_results[-1].content == "Hello, Ada!"
'''

FILES = {"agent.py": AGENT, "roost.toml": CONFIG, "test_agent.py": TEST}


def scaffold(directory: Path) -> list[Path]:
    """Write the project files into `directory`; refuse (FileExistsError) to overwrite any."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = [directory / name for name in FILES if (directory / name).exists()]
    if existing:
        raise FileExistsError(", ".join(str(p) for p in existing))
    written = []
    for name, text in FILES.items():
        (directory / name).write_text(text, encoding="utf-8")
        written.append(directory / name)
    return written
