"""Tool policies: per-tool concurrency and rate limits, per-tenant allow and deny lists.

    [tool_policies.limits.send_email]     # one tool, across every agent of this process
    max_concurrency = 4                   # calls running at once; more wait their turn
    rate = 2.0                            # calls per second (token bucket) …
    burst = 5                             # … holding at most this many
    [tool_policies.tenants.acme]
    deny = ["send_email"]                 # never offered to acme's runs, and refused
    [tool_policies.tenants.trial]
    allow = ["get_weather"]               # only these (deny still wins)

Invariants:
1. A limited call waits for its concurrency slot first, then for a token, and never longer
   than its own deadline (`ToolContext.deadline`): a call that cannot get both in time fails
   with `ToolRefused` at once, without sleeping through the deadline — the model sees the
   refusal as the tool's result and may try later.
2. A token is taken only by a call that holds its slot, so waiting calls do not drain the
   bucket for the ones that run.
3. Tenant filtering happens when a run starts (`ToolPolicies.for_tenant`): the model never
   sees a denied tool, and a call to one finds no tool of that name (the engine answers the
   model with an error and runs nothing). With no tenant rule, the agent's own tables are
   returned unchanged (no copy on the turn path).

Limits are per process: a fleet of N instances allows N × the configured figure.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from roost.errors import ConfigError
from roost.models.base import ToolSpec
from roost.runtime.token_bucket import TokenBucket
from roost.tools.base import Tool, ToolContext


class ToolRefused(Exception):
    """A tool policy refused the call (rate limit or concurrency wait past the deadline)."""


@dataclass(frozen=True, slots=True)
class ToolLimit:
    """One tool's limits; None means unlimited."""

    max_concurrency: int | None = None
    rate: float | None = None  # calls per second
    burst: int | None = None  # default: max(1, ceil(rate))

    def __post_init__(self) -> None:
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be > 0")
        if self.burst is not None and (self.burst < 1 or self.rate is None):
            raise ValueError("burst must be >= 1 and needs a rate")


@dataclass(slots=True)
class ToolLimitStatistics:
    running: int = 0
    waiting: int = 0
    calls: int = 0
    refused: int = 0


class ToolLimiter:
    """One tool name's slots and bucket, shared by every agent's copy of the tool."""

    def __init__(self, limit: ToolLimit) -> None:
        self.limit = limit
        self.statistics = ToolLimitStatistics()
        self.slots = (asyncio.Semaphore(limit.max_concurrency)
                      if limit.max_concurrency is not None else None)
        self.bucket: TokenBucket | None = None
        self._burst = float(limit.burst or max(1, math.ceil(limit.rate or 1)))

    def take_bucket(self) -> TokenBucket | None:
        # Created on first use: it reads the loop's clock, and the table is built before
        # the loop runs.
        if self.bucket is None and self.limit.rate is not None:
            self.bucket = TokenBucket(self.limit.rate, self._burst, now=_clock())
        return self.bucket


class LimitedTool:
    """A tool behind its name's `ToolLimiter`."""

    def __init__(self, tool: Tool, limiter: ToolLimiter) -> None:
        self.tool = tool
        self.limiter = limiter
        self.limit = limiter.limit
        self.name = tool.name
        self.description = tool.description
        self.parameters = tool.parameters
        self.timeout_s = tool.timeout_s
        self.statistics = limiter.statistics
        self._slots = limiter.slots

    def __repr__(self) -> str:
        return f"LimitedTool({self.name!r}, {self.limit})"

    def __getattr__(self, name: str) -> Any:
        # close() of A2A tools, validate() of function tools, …
        return getattr(self.tool, name)

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        stats = self.statistics
        if self._slots is None:
            await self._take_token(ctx)
            return await self._run(arguments, ctx)
        stats.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            stats.waiting -= 1
        try:
            await self._take_token(ctx)
            return await self._run(arguments, ctx)
        finally:
            self._slots.release()

    async def _take_token(self, ctx: ToolContext) -> None:
        bucket = self.limiter.take_bucket()
        if bucket is None:
            return
        while True:
            now = _clock()
            wait = bucket.try_take(now)
            if not wait:
                return
            if ctx.deadline is not None and now + wait > ctx.deadline:
                self.statistics.refused += 1
                raise ToolRefused(f"{self.name} is rate limited ({self.limit.rate:g}/s); "
                                  f"try again in {wait:.1f} s")
            await asyncio.sleep(wait)

    async def _run(self, arguments: str, ctx: ToolContext) -> str:
        stats = self.statistics
        stats.running += 1
        stats.calls += 1
        try:
            return await self.tool.call(arguments, ctx)
        finally:
            stats.running -= 1


def _clock() -> float:
    # The loop's clock: the one ToolContext.deadline is on.
    return asyncio.get_running_loop().time()


@dataclass(frozen=True, slots=True)
class TenantToolAccess:
    """Which tools one tenant may use: `allow` (None: all) minus `deny`."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()

    def permits(self, name: str) -> bool:
        return name not in self.deny and (self.allow is None or name in self.allow)


@dataclass(slots=True)
class ToolPolicies:
    """The process's tool policies, built from `[tool_policies]`."""

    limits: dict[str, ToolLimit] = field(default_factory=dict)
    tenants: dict[str, TenantToolAccess] = field(default_factory=dict)
    _limiters: dict[str, ToolLimiter] = field(default_factory=dict)
    # tenant → (the agent's tool table it was filtered from, filtered table, specs)
    _filtered: dict[tuple[str, int], tuple[dict[str, Tool], dict[str, Tool],
                                           list[ToolSpec]]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, table: dict[str, Any] | None) -> ToolPolicies:
        table = dict(table or {})
        unknown = set(table) - {"limits", "tenants"}
        if unknown:
            raise ConfigError(f"tool_policies: unknown keys {sorted(unknown)}",
                              [("tool_policies", k) for k in sorted(unknown)])
        limits: dict[str, ToolLimit] = {}
        for name, spec in dict(table.get("limits") or {}).items():
            try:
                limits[name] = ToolLimit(**dict(spec))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"tool_policies.limits.{name}: {exc}",
                                  [(f"tool_policies.limits.{name}", str(exc))]) from None
        tenants: dict[str, TenantToolAccess] = {}
        for tenant, spec in dict(table.get("tenants") or {}).items():
            spec = dict(spec)
            extra = set(spec) - {"allow", "deny"}
            if extra:
                raise ConfigError(f"tool_policies.tenants.{tenant}: unknown keys {sorted(extra)}",
                                  [(f"tool_policies.tenants.{tenant}", k) for k in sorted(extra)])
            allow = spec.get("allow")
            tenants[tenant] = TenantToolAccess(
                allow=frozenset(allow) if allow is not None else None,
                deny=frozenset(spec.get("deny") or ()))
        return cls(limits=limits, tenants=tenants)

    def limit_tools(self, tools: Iterable[Tool]) -> dict[str, Tool]:
        """The tool table with each configured tool behind its limit (wrapped once)."""
        table: dict[str, Tool] = {}
        for tool in tools:
            limit = self.limits.get(tool.name)
            if limit is not None and not isinstance(tool, LimitedTool):
                limiter = self._limiters.get(tool.name)
                if limiter is None:
                    limiter = self._limiters[tool.name] = ToolLimiter(limit)
                tool = LimitedTool(tool, limiter)
            table[tool.name] = tool
        return table

    def for_tenant(self, tenant: str, tools: dict[str, Tool],
                   specs: list[ToolSpec]) -> tuple[dict[str, Tool], list[ToolSpec]]:
        """The tools and specs a run of `tenant` gets (invariant 3)."""
        access = self.tenants.get(tenant)
        if access is None:
            return tools, specs
        key = (tenant, id(tools))
        cached = self._filtered.get(key)
        if cached is not None and cached[0] is tools:
            return cached[1], cached[2]
        kept = {name: t for name, t in tools.items() if access.permits(name)}
        kept_specs = [s for s in specs if s.name in kept]
        if len(self._filtered) > 4096:  # agents' tables changed many times (MCP reloads)
            self._filtered.clear()
        self._filtered[key] = (tools, kept, kept_specs)
        return kept, kept_specs

    def statistics(self) -> dict[str, dict[str, int]]:
        """Per limited tool name: running, waiting, calls, refused."""
        return {name: {"running": s.running, "waiting": s.waiting, "calls": s.calls,
                       "refused": s.refused}
                for name, s in ((n, lim.statistics) for n, lim in self._limiters.items())}
