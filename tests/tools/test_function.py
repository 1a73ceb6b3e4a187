from __future__ import annotations

import asyncio
import threading
from typing import Literal

import pydantic
import pytest

from roost.tools import FunctionTool, ToolArgumentsError, ToolContext, tool


def ctx(**overrides: object) -> ToolContext:
    values: dict[str, object] = {"run_id": "run_1", "session_id": "ses_1", "tenant": "default",
                                 "agent": "a", "call_id": "call_1"}
    values.update(overrides)
    return ToolContext(**values)  # type: ignore[arg-type]


@tool
def get_weather(city: str, unit: Literal["C", "F"] = "C", days: int = 1) -> dict[str, object]:
    """Current weather for a city.

    Args:
        city: City name, e.g. "Paris".
        unit: Temperature unit.
        days: How many days
            of forecast (continued line).
    """
    return {"city": city, "unit": unit, "days": days, "thread": threading.current_thread().name}


class Address(pydantic.BaseModel):
    street: str
    number: int


def test_schema_from_hints_and_docstring() -> None:
    assert get_weather.name == "get_weather"
    assert get_weather.description == "Current weather for a city."
    schema = get_weather.parameters
    assert schema["type"] == "object"
    assert schema["required"] == ["city"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["city"] == {"type": "string", "description": 'City name, e.g. "Paris".'}
    assert schema["properties"]["unit"]["enum"] == ["C", "F"]
    assert schema["properties"]["days"]["description"] == "How many days of forecast (continued line)."


def test_nested_model_arguments_validate() -> None:
    @tool
    def ship(to: Address, express: bool = False) -> str:
        """Ship a parcel."""
        return f"{to.street} {to.number} {express}"

    assert "$defs" in ship.parameters
    assert ship.validate('{"to": {"street": "Main", "number": 5}}')["to"] == Address(street="Main", number=5)
    with pytest.raises(ToolArgumentsError, match=r"to\.number"):
        ship.validate('{"to": {"street": "Main", "number": "five"}}')


@pytest.mark.parametrize(("arguments", "expected"), [
    ("{}", "city: Field required"),
    ('{"city": "X", "unit": "K"}', "unit: Input should be 'C' or 'F'"),
    ('{"city": "X", "bogus": 1}', "bogus: Extra inputs are not permitted"),
    ("not json", "Invalid JSON"),
])
def test_invalid_arguments_name_the_field(arguments: str, expected: str) -> None:
    with pytest.raises(ToolArgumentsError) as info:
        get_weather.validate(arguments)
    assert expected in str(info.value)
    assert "get_weather" in str(info.value)


async def test_sync_tool_runs_in_a_thread_not_the_loop() -> None:
    result = await get_weather.call('{"city": "Oslo"}', ctx())
    assert '"city":"Oslo"' in result
    assert threading.current_thread().name not in result  # ran elsewhere
    assert "MainThread" not in result


async def test_async_tool_gets_context_hidden_from_schema() -> None:
    seen: list[str] = []

    @tool(name="remember", timeout_s=2)
    async def remember(note: str, context: ToolContext) -> str:
        """Remember a note."""
        seen.append(context.idempotency_key)
        await asyncio.sleep(0)
        return note.upper()

    assert "context" not in remember.parameters["properties"]
    assert remember.timeout_s == 2
    assert await remember.call('{"note": "hi"}', ctx(run_id="r9", call_id="c3")) == "HI"
    assert seen == ["r9:c3"]


def test_bad_tool_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="tool name"):
        FunctionTool(lambda: None, name="bad name!")

    def varargs(*args: int) -> None: ...

    with pytest.raises(TypeError, match=r"\*args"):
        FunctionTool(varargs)
