"""`Agent`: a model, instructions and tools, with the limits and policies a runtime enforces.

    from roost import Agent, tool

    @tool
    def get_weather(city: str) -> str:
        '''Current weather for a city.'''
        return f"Sunny in {city}"

    weather = Agent(name="weather", model="demo", instructions="Be brief.", tools=[get_weather])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from roost.engine.approval import ApprovalPolicy
from roost.engine.compaction import CompactionPolicy
from roost.engine.run_budget import RunBudget
from roost.models.base import Model
from roost.tools.base import Tool, Toolset
from roost.tools.function import FunctionTool

DoubleTexting = Literal["reject", "enqueue", "interrupt"]
DisconnectPolicy = Literal["cancel", "continue"]
PausedPolicy = Literal["queue", "reject"]

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-agent run limits. Every one is configurable; the defaults suit interactive chat."""

    max_steps: int = 10  # model calls per run
    run_timeout_s: float = 120.0  # the longest a turn may take; a turn's timeout_s is capped by it
    max_tool_concurrency: int = 8  # parallel tool calls within one step
    tool_timeout_s: float = 30.0  # default per-call timeout (a tool may set its own)
    tool_threads: int = 4  # this agent's own thread pool for sync tools (tools/threads.py)
    max_input_chars: int = 100_000
    # Per-run budgets (None: unlimited): the default of a turn that asks none, and the cap of
    # one that asks more. A run over one stops with status `budget_exceeded`.
    max_cost: float | None = None
    max_tokens: int | None = None
    max_tool_calls: int | None = None
    max_duration_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "max_tool_concurrency", "max_input_chars", "tool_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"limits.{name} must be >= 1")
        for name in ("run_timeout_s", "tool_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"limits.{name} must be > 0")
        self.run_budget()  # validates the budget fields

    def run_budget(self) -> RunBudget | None:
        return RunBudget(max_cost=self.max_cost, max_tokens=self.max_tokens,
                         max_tool_calls=self.max_tool_calls,
                         max_duration_s=self.max_duration_s) or None


@dataclass(frozen=True, slots=True)
class Policies:
    """How the runtime treats this agent's sessions."""

    # A turn arriving while the session has an active run: 409, wait in order, or cancel the
    # active run at a step boundary and start the new one.
    double_texting: DoubleTexting = "enqueue"
    max_pending_turns: int = 8  # per session, with `enqueue`
    # A streaming client that goes away: cancel its run, or let it finish and persist.
    on_disconnect: DisconnectPolicy = "cancel"
    # New turns while the agent is paused: wait until resumed, or 503.
    when_paused: PausedPolicy = "reject"
    # Messages of history sent to the model (newest kept; a turn is never split)…
    history_messages: int = 40
    # … and their token budget (estimated); a summary, when compaction made one, comes first.
    history_token_budget: int = 8000
    # Summarise older history with a model when it grows past a threshold (None: off).
    # Config: `[agents.NAME.policies.compaction] trigger_tokens = …` or `compaction = true`.
    compaction: CompactionPolicy | None = None
    # Which tool calls wait for a person, for how long, and what a timeout decides (None:
    # only tools declared `requires_approval`, and `ask_user`, wait; with the defaults).
    # Config: `[agents.NAME.policies.approval]` (see `ApprovalPolicy.from_config`).
    approval: ApprovalPolicy | None = None
    # Tool results larger than this are stored as artifacts; the model sees a preview.
    max_tool_result_bytes: int = 64 * 1024
    tool_result_preview_chars: int = 2000

    def __post_init__(self) -> None:
        # Config overrides arrive as plain tables.
        object.__setattr__(self, "compaction", CompactionPolicy.from_config(self.compaction))
        object.__setattr__(self, "approval", ApprovalPolicy.from_config(self.approval))
        for name in ("max_pending_turns", "history_messages", "history_token_budget",
                     "max_tool_result_bytes", "tool_result_preview_chars"):
            if getattr(self, name) < (0 if name == "max_pending_turns" else 1):
                raise ValueError(f"policies.{name} is out of range")
        if self.compaction and self.compaction.trigger_tokens >= self.history_token_budget:
            # Windowing would drop turns before they were ever summarised.
            raise ValueError("policies.compaction.trigger_tokens must be below "
                             "history_token_budget")


@dataclass(eq=False)
class Agent:
    """A servable agent. `model` is a model reference from config ("demo", an alias,
    "openai:gpt-4o-mini") or a `Model` instance."""

    name: str
    model: str | Model = "demo"
    instructions: str = ""
    tools: list[Any] = field(default_factory=list)
    description: str = ""
    limits: Limits = field(default_factory=Limits)
    policies: Policies = field(default_factory=Policies)
    model_settings: dict[str, Any] = field(default_factory=dict)
    # Checks on input, output and untrusted tool results (roost.guardrails), in order.
    guardrails: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"agent name {self.name!r} must match {_NAME.pattern}")
        self.tools = [_as_tool(t) for t in self.tools]
        names = [t.name for t in self.tools if not isinstance(t, Toolset)]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"agent {self.name}: duplicate tool names {sorted(duplicates)}")
        from roost.guardrails.base import Guardrail

        for g in self.guardrails:
            if not isinstance(g, Guardrail):
                raise TypeError(f"agent {self.name}: not a guardrail (needs name, stages "
                                f"and check): {g!r}")

    @property
    def model_ref(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    def as_tool(self, *, name: str | None = None, description: str | None = None,
                timeout_s: float | None = None) -> Tool:
        """This agent as a tool of another agent: each call is a child run of it
        (`roost.tools.agent_tool.AgentTool`). The runtime must host this agent too."""
        from roost.tools.agent_tool import AgentTool

        return AgentTool(self, name=name, description=description, timeout_s=timeout_s)

    def function_tools(self) -> list[Tool]:
        return [t for t in self.tools if not isinstance(t, Toolset)]


def _as_tool(value: Any) -> Tool | Toolset:
    if isinstance(value, (FunctionTool, Toolset, Tool)):
        return value
    if callable(value):
        return FunctionTool(value)
    raise TypeError(f"not a tool: {value!r}")


def agents_in(namespace: dict[str, Any] | Iterable[Any]) -> list[Agent]:
    """The `Agent` objects defined in a module namespace (or any iterable), in order."""
    values = namespace.values() if isinstance(namespace, dict) else namespace
    return [v for v in values if isinstance(v, Agent)]


AgentFactory = Callable[[], Agent]
