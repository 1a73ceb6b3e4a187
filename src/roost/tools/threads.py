"""Bounded thread pools for plain (sync) tools, one per agent.

A sync tool used to run on the event loop's default executor: a handful of threads shared with
the model client's DNS lookups, so a few hung tools made every other agent's tools (and new
connections) wait. Here each agent gets its own pool of `Limits.tool_threads` threads:

- a hung tool can only occupy its own agent's threads; other agents and the default executor
  are untouched;
- a call whose caller gave up (tool timeout, run cancelled) while its thread still runs is
  *abandoned*: Python cannot kill a thread, so it is counted until the function returns, and
  its thread stays unavailable to that agent (the pool never grows past its size);
- a call cancelled before a thread picked it up never runs.

Invariants (under `_lock`): `0 <= abandoned <= running <= size`; `queued >= 0`;
`abandoned_total >= abandoned`. Statistics are read by `/v1/admin/stats` and `/metrics`
(`roost_tool_threads_*`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_TOOL_THREADS = 4


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    size: int
    queued: int  # submitted, waiting for a thread
    running: int  # on a thread now (abandoned included)
    abandoned: int  # running, but the caller gave up (timeout or cancellation)
    completed: int  # returned or raised, cumulative
    abandoned_total: int  # cumulative


class _Call:
    __slots__ = ("abandoned", "cancelled", "finished", "started")

    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.cancelled = False
        self.abandoned = False


class _NotRun(Exception):
    """The call was cancelled before a thread picked it up."""


class AgentThreads:
    """One agent's bounded pool. `run(fn)` awaits `fn()` on one of `size` threads."""

    def __init__(self, agent: str, size: int) -> None:
        if size < 1:
            raise ValueError("tool_threads must be >= 1")
        self.agent = agent
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size,
                                            thread_name_prefix=f"roost-tool-{agent}")
        self._lock = threading.Lock()
        self._queued = 0
        self._running = 0
        self._abandoned = 0
        self._completed = 0
        self._abandoned_total = 0

    async def run(self, fn: Callable[[], T]) -> T:
        call = _Call()
        self._on_submit()
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, self._work, call, fn)
        except BaseException:
            self._on_not_started(call)
            raise
        try:
            return await future
        except asyncio.CancelledError:
            self._on_caller_gone(call)
            raise

    def statistics(self) -> PoolStatistics:
        with self._lock:
            return PoolStatistics(self.size, self._queued, self._running, self._abandoned,
                                  self._completed, self._abandoned_total)

    def shutdown(self) -> None:
        """Stop accepting calls; running threads finish on their own (they cannot be killed)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- state changes (each under the lock) -------------------------------------------------
    def _work(self, call: _Call, fn: Callable[[], T]) -> T:
        self._on_start(call)
        try:
            return fn()
        finally:
            self._on_finish(call)

    def _on_submit(self) -> None:
        with self._lock:
            self._queued += 1

    def _on_start(self, call: _Call) -> None:
        with self._lock:
            if call.cancelled:
                raise _NotRun
            call.started = True
            self._queued -= 1
            self._running += 1

    def _on_finish(self, call: _Call) -> None:
        with self._lock:
            call.finished = True
            self._running -= 1
            self._completed += 1
            if call.abandoned:
                self._abandoned -= 1

    def _on_not_started(self, call: _Call) -> None:
        with self._lock:
            if not call.started and not call.cancelled:
                call.cancelled = True
                self._queued -= 1

    def _on_caller_gone(self, call: _Call) -> None:
        with self._lock:
            if not call.started:
                call.cancelled = True
                self._queued -= 1
            elif not call.finished:
                # asyncio cancels the awaiting task, not the thread: it runs on, accounted.
                call.abandoned = True
                self._abandoned += 1
                self._abandoned_total += 1


class ToolThreads:
    """The process's per-agent pools, created on first use with the agent's configured size."""

    def __init__(self) -> None:
        self._pools: dict[str, AgentThreads] = {}
        self._lock = threading.Lock()

    def pool(self, agent: str, size: int = DEFAULT_TOOL_THREADS) -> AgentThreads:
        pool = self._pools.get(agent)
        if pool is not None and pool.size == size:
            return pool
        with self._lock:
            pool = self._pools.get(agent)
            if pool is None or pool.size != size:
                # A resized agent (reload) gets a fresh pool; the old one drains on its own.
                if pool is not None:
                    pool.shutdown()
                pool = self._pools[agent] = AgentThreads(agent, size)
            return pool

    async def run(self, agent: str, size: int, fn: Callable[[], T]) -> T:
        return await self.pool(agent, size).run(fn)

    def statistics(self) -> dict[str, PoolStatistics]:
        return {name: pool.statistics() for name, pool in list(self._pools.items())}

    def gauges(self) -> dict[str, Any]:
        """`/metrics` provider: `roost_tool_threads_{running,queued,abandoned}{agent}`,
        `roost_tool_threads_abandoned_total{agent}`."""
        stats = self.statistics()
        return {
            "tool_threads_running": {a: s.running for a, s in stats.items()},
            "tool_threads_queued": {a: s.queued for a, s in stats.items()},
            "tool_threads_abandoned": {a: s.abandoned for a, s in stats.items()},
            "tool_threads_abandoned_total": {a: s.abandoned_total for a, s in stats.items()},
        }


TOOL_THREADS = ToolThreads()
"""The process-wide registry `FunctionTool` runs sync tools on."""
