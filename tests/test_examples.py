"""The bundled examples load and answer end to end through the offline `demo` model."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pytest

from roost import Agent, Runtime, Settings
from roost.loader import bundled_examples, load_agents
from roost.sessions.records import Event, RunRecord
from roost.tools import ToolContext

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

Ask = Callable[[str, str], Coroutine[Any, Any, tuple[RunRecord, list[Event]]]]


def load(name: str) -> Agent:
    [agent] = load_agents([str(EXAMPLES / f"{name}.py")])
    assert isinstance(agent, Agent)
    return agent


def test_the_bundled_examples_are_found() -> None:
    assert [p.name for p in bundled_examples()] == ["calculator.py", "weather.py"]


def test_each_example_defines_one_demo_agent() -> None:
    weather, calculator = load("weather"), load("calculator")
    assert (weather.name, weather.model) == ("weather", "demo")
    assert [t.name for t in weather.tools] == ["get_weather"]
    assert (calculator.name, calculator.model) == ("calculator", "demo")
    assert [t.name for t in calculator.tools] == ["add", "multiply", "square_root",
                                                   "convert_length"]
    assert weather.instructions and calculator.instructions


@pytest.fixture
async def ask() -> AsyncIterator[Ask]:
    """Ask an example agent one question in a fresh session of an in-process runtime."""
    runtime = Runtime(Settings(store={"url": "memory://"}), [load("weather"), load("calculator")])
    await runtime.start()

    async def one(agent: str, text: str) -> tuple[RunRecord, list[Event]]:
        session = await runtime.create_session("default", agent)
        handle = await runtime.submit_turn("default", session.id, text)
        run = await handle.wait()
        return run, await runtime.store.read_events("default", session.id, limit=100)

    yield one
    await runtime.close()


def calls(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.data["name"], orjson.loads(e.data["arguments"])) for e in events
            if e.type == "tool.call"]


def result(events: list[Event]) -> str:
    [tool_result] = [e for e in events if e.type == "tool.result"]
    content: str = tool_result.data["content"]
    return content


async def test_weather_answers_from_its_tool(ask: Ask) -> None:
    run, events = await ask("weather", "What is the weather in Paris?")
    assert run.status == "completed"
    assert calls(events) == [("get_weather", {"city": "Paris"})]
    report = orjson.loads(result(events))
    assert report["city"] == "Paris" and report["unit"] == "C"
    assert -5 <= report["temperature"] < 30
    assert run.output == f"Here is what I found. get_weather: {result(events)}"


async def test_weather_is_deterministic_per_city() -> None:
    weather = load("weather")
    [get_weather] = weather.tools
    context = ToolContext(run_id="r", session_id="s", tenant="default", agent="weather",
                          call_id="c")
    celsius = orjson.loads(await get_weather.call('{"city": "New York"}', context))
    again = orjson.loads(await get_weather.call('{"city": " new york "}', context))
    fahrenheit = orjson.loads(await get_weather.call('{"city": "New York", "unit": "F"}',
                                                     context))
    assert celsius["temperature"] == again["temperature"]
    assert celsius["conditions"] == again["conditions"]
    assert fahrenheit["temperature"] == round(celsius["temperature"] * 9 / 5 + 32)


@pytest.mark.parametrize(("question", "tool", "arguments", "answer"), [
    ("multiply 6 and 7", "multiply", {"a": 6, "b": 7}, 42.0),
    ("what is 6 times 7", "multiply", {"a": 6, "b": 7}, 42.0),
    ("add 2.5 and 4", "add", {"a": 2.5, "b": 4}, 6.5),
    ("square root of 81", "square_root", {"x": 81}, 9.0),
    ("convert 10 km to miles", "convert_length", {"value": 10, "unit": "km_to_miles"},
     6.21371),
])
async def test_calculator_answers_with_exact_tools(ask: Ask, question: str, tool: str,
                                                   arguments: dict[str, Any],
                                                   answer: float) -> None:
    run, events = await ask("calculator", question)
    assert run.status == "completed"
    assert calls(events) == [(tool, arguments)]
    assert math.isclose(float(result(events)), answer, rel_tol=1e-9)
    assert run.output == f"Here is what I found. {tool}: {result(events)}"


async def test_calculator_reports_a_tool_error_instead_of_failing(ask: Ask) -> None:
    run, events = await ask("calculator", "square root of -4")
    assert run.status == "completed"
    assert result(events) == ("Error: ValueError: cannot take the square root of a "
                              "negative number")
    assert "cannot take the square root" in (run.output or "")
