"""The agents a runtime hosts, and their lifecycle: `created → running ⇄ paused → stopped`.

A hosted agent is an `Agent` resolved for serving (its model, its tool table, its system
message) with roost.toml's `[agents.NAME]` overrides applied. Lifecycle changes go through
`AgentTable.set_state`, the one place that writes an agent's state; the runtime stores the
change and carries it to the other instances of a fleet.

- `paused`: no new runs start; turns wait (or are refused under `when_paused = "reject"`);
  runs in flight finish.
- `stopped`: turns are refused and runs in flight are cancelled; a stopped agent does not
  resume (only `start` brings it back).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from roost.agent import Agent, Limits, Policies
from roost.config import Settings
from roost.engine.approval import ApprovalGate, build_gate
from roost.engine.run_budget import RunBudget
from roost.errors import AgentNotFound, ConfigError, Conflict, Unavailable
from roost.models.base import Message, Model, ToolSpec
from roost.models.registry import ModelRegistry
from roost.tools.agent_tool import AgentTool
from roost.tools.base import Tool, Toolset
from roost.tools.policy import ToolPolicies
from roost.tools.toolset import (
    close_toolset,
    resolve_tools,
    start_toolset,
    subscribe,
    toolsets_of,
)

log = logging.getLogger("roost.runtime")

STATES = ("created", "running", "paused", "stopped")
ACTIONS = {"pause": "paused", "resume": "running", "stop": "stopped", "start": "running"}


class AgentUnavailable(Unavailable):
    type = "agent_unavailable"


@dataclass(eq=False)
class HostedAgent:
    """An agent as the runtime serves it: resolved model, tool table, lifecycle state."""

    agent: Agent
    model: Model
    tools: dict[str, Tool]
    tool_specs: list[ToolSpec]
    state: str = "created"  # created → running ⇄ paused → stopped
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    system: Message | None = None
    summariser: Model | None = None  # the compaction model, when compaction is on
    # Which calls wait for a person (None: none ever does; see engine/approval.py).
    gate: ApprovalGate | None = None
    # The agent's per-run budget limits (None: unlimited).
    budget: RunBudget | None = None

    @property
    def name(self) -> str:
        return self.agent.name


class AgentTable(Mapping[str, HostedAgent]):
    """name → HostedAgent, with the lifecycle's one writer."""

    def __init__(self, settings: Settings, models: ModelRegistry) -> None:
        self.settings = settings
        self.models = models
        self._agents: dict[str, HostedAgent] = {}
        self._mcp_servers: dict[str, Toolset] = {}  # [mcp_servers.NAME], shared by agents
        self._toolsets: list[Toolset] = []  # started by start_toolsets, closed by close
        self.max_timeout = 120.0  # the longest run timeout of any agent
        self.tool_policies = ToolPolicies.from_config(settings.tool_policies)

    def __getitem__(self, name: str) -> HostedAgent:
        return self._agents[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._agents)

    def __len__(self) -> int:
        return len(self._agents)

    def add(self, agent: Agent) -> HostedAgent:
        if agent.name in self._agents:
            raise ConfigError(f"two agents are named {agent.name!r}", [("agents", agent.name)])
        agent = self._apply_overrides(agent)
        tools = self.tool_policies.limit_tools(agent.function_tools())
        specs = [ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
                 for t in tools.values()]
        model = self.models.resolve(agent.model)
        compaction = agent.policies.compaction
        hosted = HostedAgent(agent=agent, model=model, tools=tools, tool_specs=specs,
                             system=Message(role="system", content=agent.instructions)
                             if agent.instructions else None,
                             summariser=(self.models.resolve(compaction.model)
                                         if compaction.model else model) if compaction else None)
        hosted.gate = build_gate(tools.values(), agent.policies.approval)
        hosted.budget = agent.limits.run_budget()
        self._agents[agent.name] = hosted
        self.max_timeout = max(h.agent.limits.run_timeout_s for h in self._agents.values())
        return hosted

    def _apply_overrides(self, agent: Agent) -> Agent:
        override = self.settings.agents.get(agent.name)
        if override is None:
            return agent
        try:
            limits = Limits(**{**_fields(agent.limits), **override.limits})
            policies = Policies(**{**_fields(agent.policies), **override.policies})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"agents.{agent.name}: {exc}",
                              [(f"agents.{agent.name}", str(exc))]) from None
        tools = (agent.tools + [self._mcp_server(name) for name in override.mcp_servers]
                 + [AgentTool(name) for name in override.agent_tools])
        if "ask_user" in override.builtin_tools and not any(
                getattr(t, "name", None) == "ask_user" for t in tools):
            from roost.tools.ask_user import ask_user

            tools.append(ask_user)
        return Agent(name=agent.name, model=override.model or agent.model,
                     instructions=agent.instructions, tools=tools,
                     description=agent.description, limits=limits, policies=policies,
                     model_settings=agent.model_settings)

    def _mcp_server(self, name: str) -> Toolset:
        known = self._mcp_servers.get(name)
        if known is not None:
            return known
        table = self.settings.mcp_servers.get(name)
        if table is None:
            raise ConfigError(f"no [mcp_servers.{name}] in the configuration",
                              [(f"mcp_servers.{name}", "missing")])
        from roost.tools.mcp import MCPToolset  # the `mcp` extra, only when configured

        toolset = MCPToolset.from_config(name, dict(table))
        self._mcp_servers[name] = toolset
        return toolset

    async def start_toolsets(self) -> None:
        """Start every agent's toolsets (once each: MCP servers are shared) and add their
        tools to the agents' tool tables; a toolset's change (`tools/list_changed`)
        rebuilds the tables of the agents that use it."""
        for hosted in self._agents.values():
            toolsets = toolsets_of(hosted.agent.tools)
            if not toolsets:
                continue
            for toolset in toolsets:
                if not any(toolset is t for t in self._toolsets):
                    self._toolsets.append(toolset)
                    await start_toolset(toolset)
            await self._resolve(hosted, toolsets)
            for toolset in toolsets:
                subscribe(toolset, functools.partial(self._resolve, hosted, toolsets))

    async def _resolve(self, hosted: HostedAgent, toolsets: list[Toolset]) -> None:
        try:
            tools, specs = await resolve_tools(hosted.name, hosted.agent.function_tools(),
                                               toolsets)
        except ConfigError as exc:
            log.error("%s; keeping the agent's previous tools", exc.message)
            return
        # Replaced, not mutated: a run in flight keeps the table it started with.
        hosted.tools, hosted.tool_specs = self.tool_policies.limit_tools(tools.values()), specs
        hosted.gate = build_gate(tools.values(), hosted.agent.policies.approval)

    async def close_toolsets(self) -> None:
        """Close the toolsets, and the tools that hold a connection (`close()`: A2A)."""
        closable: list[object] = list(self._toolsets)
        self._toolsets = []
        for hosted in self._agents.values():
            closable.extend(t for t in hosted.agent.function_tools() if hasattr(t, "close"))
        for item in closable:
            try:
                await close_toolset(item)
            except Exception:  # one toolset's failure does not keep the others open
                log.exception("closing a toolset failed")

    def hosted(self, name: str) -> HostedAgent:
        hosted = self._agents.get(name)
        if hosted is None:
            raise AgentNotFound(f"no agent named {name!r}", agent=name)
        return hosted

    def policies_of(self, name: str) -> Policies:
        hosted = self._agents.get(name)
        return hosted.agent.policies if hosted else Policies()

    def target_state(self, name: str, action: str) -> str:
        """The state `action` leads to, or `Conflict` when the agent cannot go there."""
        hosted = self.hosted(name)
        target = ACTIONS[action]
        if hosted.state == "stopped" and action != "start" and target != "stopped":
            raise Conflict(f"agent {name!r} is stopped", agent=name)
        return target

    def set_state(self, hosted: HostedAgent, state: str) -> bool:
        """Apply a state; True when it changed."""
        if hosted.state == state:
            return False
        hosted.state = state
        if state == "running":
            hosted.resumed.set()
        else:
            hosted.resumed.clear()
        log.info("agent %s is %s", hosted.name, state)
        return True

    def check_admits(self, hosted: HostedAgent) -> None:
        """Raise when the agent takes no new turns now."""
        if hosted.state == "stopped":
            raise AgentUnavailable(f"agent {hosted.name!r} is stopped", retry_after=30)
        if hosted.state == "paused" and hosted.agent.policies.when_paused == "reject":
            raise AgentUnavailable(f"agent {hosted.name!r} is paused", retry_after=5)


def _fields(obj: object) -> dict[str, object]:
    return {name: getattr(obj, name) for name in obj.__slots__}  # type: ignore[attr-defined]
