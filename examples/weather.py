"""A one-tool agent: `roost serve examples/weather.py`, then ask it about the weather.

Runs with the offline `demo` model; point `model=` at an alias from your config for a real one.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from roost import Agent, tool

_CONDITIONS = ["sunny", "cloudy", "light rain", "windy", "snow showers", "clear skies"]


@tool
async def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, object]:
    """Current weather for a city.

    Args:
        city: City name, for example "Paris" or "New York".
        unit: Temperature unit, C or F.
    """
    # Deterministic stand-in for a weather API: the same city always gets the same weather.
    digest = hashlib.sha256(city.strip().lower().encode()).digest()
    celsius = digest[0] % 35 - 5
    temperature = celsius if unit == "C" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit,
            "conditions": _CONDITIONS[digest[1] % len(_CONDITIONS)]}


weather = Agent(
    name="weather",
    description="Answers questions about the current weather in a city.",
    model="demo",
    instructions="You are a concise weather assistant. Use get_weather for any city asked about.",
    tools=[get_weather],
)
