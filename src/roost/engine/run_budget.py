"""Per-run budgets: what one run may spend before it is stopped with `budget_exceeded`.

(Not to be confused with `budget.py`, the context window's token budget.)

    RunBudget(max_cost=0.50, max_tokens=200_000, max_tool_calls=500, max_duration_s=3600)

Rules, checked in this order at every step boundary (a model call's usage is known only
when it ends; a step's tool calls are counted before any of them runs):

1. `max_duration_s`: wall-clock seconds since the run was submitted, waiting for a person
   included (a run that waits past it stops when it resumes). It is also the run's deadline,
   so a model call or tool in flight is cut when it passes.
2. `max_tokens`: input + output tokens of every model call of the run.
3. `max_cost`: the cost of those calls, as the provider's pricing reports it.
4. `max_tool_calls`: tool calls the run executes (a step whose calls would pass the limit
   runs none of them).

The budget travels in the run's `run.started` event, so a run resumed elsewhere (takeover,
an approval on another instance) keeps it. A turn asks for a budget; the agent's limits give
the default and the cap of each field (`[agents.NAME.limits] max_cost = …`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from roost.errors import BudgetExceeded
from roost.sessions.records import Usage

_FIELDS = ("max_cost", "max_tokens", "max_tool_calls", "max_duration_s")


@dataclass(frozen=True, slots=True)
class RunBudget:
    """Limits on one run; None means unlimited."""

    max_cost: float | None = None
    max_tokens: int | None = None
    max_tool_calls: int | None = None
    max_duration_s: float | None = None

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in _FIELDS)

    def check_usage(self, usage: Usage) -> None:
        if self.max_tokens is not None and usage.total_tokens > self.max_tokens:
            raise _exceeded("max_tokens", self.max_tokens, usage.total_tokens)
        if self.max_cost is not None and usage.cost > self.max_cost:
            raise _exceeded("max_cost", self.max_cost, usage.cost)

    def check_tool_calls(self, done: int, more: int) -> None:
        if self.max_tool_calls is not None and done + more > self.max_tool_calls:
            raise _exceeded("max_tool_calls", self.max_tool_calls, done + more)

    def duration_exceeded(self, elapsed_s: float) -> BudgetExceeded:
        return _exceeded("max_duration_s", self.max_duration_s, round(elapsed_s, 3))

    def to_data(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS if getattr(self, name) is not None}

    @classmethod
    def from_data(cls, data: object) -> RunBudget | None:
        if not isinstance(data, dict):
            return None
        budget = cls(**{k: v for k, v in data.items() if k in _FIELDS})
        return budget or None

    @classmethod
    def resolve(cls, asked: RunBudget | None, limits: RunBudget | None) -> RunBudget | None:
        """The run's budget: each field as asked, capped by the agent's limit (which is
        also the default when the turn asks nothing)."""
        if not asked and not limits:
            return None
        values: dict[str, Any] = {}
        for f in fields(cls):
            mine = getattr(asked, f.name) if asked else None
            cap = getattr(limits, f.name) if limits else None
            values[f.name] = cap if mine is None else (mine if cap is None else min(mine, cap))
        return cls(**values) or None


def _exceeded(name: str, limit: float | None, used: float) -> BudgetExceeded:
    return BudgetExceeded(f"the run's {name} budget ({limit:g}) is exhausted ({used:g} used)",
                          budget=name, limit=limit, used=used)
