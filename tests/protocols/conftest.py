"""Protocol tests talk to a real uvicorn (`LiveServer`) with the protocols' official clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from roost import Agent, Runtime, Settings
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel, call
from roost.tools import tool


@tool
async def get_weather(city: str) -> dict[str, object]:
    """Current weather for a city.

    Args:
        city: City name.
    """
    return {"city": city, "temperature": 21, "conditions": "sunny"}


def weather_agent(name: str = "weather") -> Agent:
    return Agent(name=name, model="demo", description="Answers weather questions.",
                 instructions="Be brief.", tools=[get_weather])


def serve(tmp_path: Path, *agents: Agent, **settings: object) -> LiveServer:
    store = {"url": f"sqlite:///{tmp_path / 'roost.db'}"}
    runtime = Runtime(Settings(store=store, **settings), list(agents))  # type: ignore[arg-type]
    return LiveServer(runtime)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """`weather` (demo model, one tool) and `echo` (a scripted model that repeats)."""
    echo = Agent(name="echo", model=ScriptedModel(
        [lambda request: f"you said: {request.messages[-1].content} "
                         f"({len(request.messages)} messages)"], repeat_last=True))
    failing = Agent(name="failing", model=ScriptedModel([RuntimeError("boom")], repeat_last=True))
    with serve(tmp_path, weather_agent(), echo, failing) as live:
        yield live


__all__ = ["ScriptedModel", "call", "serve", "weather_agent"]
