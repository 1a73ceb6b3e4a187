"""A several-tool agent: arithmetic and unit conversion, with the offline `demo` model."""

from __future__ import annotations

import math
from typing import Literal

from roost import Agent, tool


@tool
def add(a: float, b: float) -> float:
    """Add two numbers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers (product, times).

    Args:
        a: First factor.
        b: Second factor.
    """
    return a * b


@tool
def square_root(x: float) -> float:
    """Square root of a non-negative number (sqrt).

    Args:
        x: The number; must not be negative.
    """
    if x < 0:
        raise ValueError("cannot take the square root of a negative number")
    return math.sqrt(x)


@tool
def convert_length(value: float, unit: Literal["km_to_miles", "miles_to_km"]) -> float:
    """Convert a length between kilometres and miles.

    Args:
        value: The length to convert.
        unit: Direction of the conversion.
    """
    factor = 0.621371
    return value * factor if unit == "km_to_miles" else value / factor


calculator = Agent(
    name="calculator",
    description="Does arithmetic and converts lengths with exact tools.",
    model="demo",
    instructions="Use the tools for every calculation; never guess numbers.",
    tools=[add, multiply, square_root, convert_length],
)
