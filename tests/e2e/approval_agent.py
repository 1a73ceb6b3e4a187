"""Agents for the approval e2e tests: a banker whose `transfer` needs a person's approval,
and an asker that asks the user with `ask_user`. The demo model calls each agent's tools
with schema-valid arguments, then answers from their results."""

from __future__ import annotations

import os

from roost import Agent, tool
from roost.tools.ask_user import ask_user


@tool(requires_approval=True)
async def transfer(amount: int, to: str) -> str:
    """Move money to someone.

    Args:
        amount: How much, in cents.
        to: Who gets it.
    """
    marker = os.environ.get("TRANSFER_MARKER")
    if marker:
        with open(marker, "a") as file:  # noqa: ASYNC230 - a test double, a tiny write
            file.write(f"{amount} {to}\n")
    return f"sent {amount} to {to}"


banker = Agent(name="banker", model="demo", tools=[transfer], description="Moves money.")
asker = Agent(name="asker", model="demo", tools=[ask_user], description="Asks first.")
