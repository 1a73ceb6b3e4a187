"""`AgentTool`: another hosted agent as a tool — each call is a child run.

    researcher = Agent(name="researcher", model="demo", tools=[search])
    writer = Agent(name="writer", model="demo", tools=[AgentTool("researcher")])
    # or: tools=[researcher.as_tool()]; in roost.toml: [agents.writer] agent_tools = ["researcher"]

How a call runs, and why:
1. **Its own child session.** The child agent has its own instructions and history, so it
   gets a session of its own (agent = the child; metadata: `parent_run_id`,
   `parent_session_id`, `call_id`), created with the call's `idempotency_key`: a parent step
   re-run after a takeover finds the same child session, and the child turn (submitted with
   the same key) replays the child run instead of starting a second one.
2. **Under the parent's admission slot.** The child is not admitted separately: it runs on
   the slot its parent holds (`Turns.submit(parent_run_id=…)`). A child waiting for a slot
   its parent holds would deadlock at `max_running = 1`; running under the parent cannot,
   and the parent's own bounds (max_steps × max_tool_concurrency, and `max_depth` here) bound
   the children.
3. **The parent's remaining deadline and cancellation.** The child's timeout is the call's
   deadline (the parent run's deadline, capped by the tool's timeout: set `timeout_s` on the
   tool for long children); cancelling the parent cancels the child and waits for it to
   record its end.
4. **Recorded and rolled up.** The child run carries `parent_run_id` (its `run.started`
   event says so); its usage and cost are added to the parent's when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import pydantic

from roost.errors import RoostError
from roost.tools.base import ToolArgumentsError, ToolContext

if TYPE_CHECKING:
    from roost.agent import Agent
    from roost.runtime.handle import RunHandle
    from roost.runtime.runtime import Runtime


class _Arguments(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    input: str = pydantic.Field(min_length=1)


class AgentTool:
    """Call the hosted agent `agent` (a name or an `Agent`) as a tool: `{"input": "…"}`."""

    max_depth = 4  # children of children …: a cycle of agents calling each other stops here

    def __init__(self, agent: str | Agent, *, name: str | None = None,
                 description: str | None = None, timeout_s: float | None = None) -> None:
        self.agent = agent if isinstance(agent, str) else agent.name
        self.name = name or self.agent.replace(".", "_")
        self.description = description or (
            "" if isinstance(agent, str) else agent.description) or f"Ask the {self.agent} agent."
        self.parameters: dict[str, Any] = {
            "type": "object", "additionalProperties": False, "required": ["input"],
            "properties": {"input": {"type": "string",
                                     "description": f"What to ask the {self.agent} agent."}}}
        self.timeout_s = timeout_s
        self._runtime: Runtime | None = None

    def __repr__(self) -> str:
        return f"AgentTool({self.agent!r})"

    def bind_runtime(self, runtime: Runtime) -> None:
        """Called by the runtime hosting the calling agent."""
        self._runtime = runtime

    async def call(self, arguments: str, ctx: ToolContext) -> str:
        try:
            text = _Arguments.model_validate_json(arguments or "{}").input
        except pydantic.ValidationError as exc:
            raise ToolArgumentsError(f"invalid arguments for {self.name}: "
                                     f"{exc.errors(include_url=False)[0]['msg']}") from None
        rt = self._runtime
        if rt is None:
            raise RuntimeError(f"{self!r} is not hosted by a runtime")
        depth = _depth_of(rt, ctx.run_id) + 1
        if depth > self.max_depth:
            raise RuntimeError(f"agent calls nest deeper than {self.max_depth}")
        loop = asyncio.get_running_loop()
        remaining = (ctx.deadline - loop.time()) if ctx.deadline is not None else None
        if remaining is not None and remaining <= 0:
            raise TimeoutError
        session = await rt.create_session(
            ctx.tenant, self.agent, idempotency_key=f"child:{ctx.idempotency_key}",
            metadata={"parent_run_id": ctx.run_id, "parent_session_id": ctx.session_id,
                      "call_id": ctx.call_id})
        from roost.runtime.idempotency import Replay

        try:
            handle: RunHandle | None = await rt.turns.submit(
                ctx.tenant, session.id, text, timeout_s=remaining,
                idempotency_key=f"child:{ctx.idempotency_key}", parent_run_id=ctx.run_id)
            assert handle is not None
            _DEPTH[handle.run.id] = depth
            try:
                run = await handle.wait()
            except asyncio.CancelledError:
                handle.cancel("user")
                with contextlib.suppress(RoostError):
                    await asyncio.shield(handle.wait())
                raise
            finally:
                _DEPTH.pop(handle.run.id, None)
        except Replay as replay:  # the step re-ran: the child run exists already
            run = await rt.wait_for_end(ctx.tenant, replay.run_id, remaining or 1e9)
        parent = rt.runs.get(ctx.run_id)
        if parent is not None:  # roll the child's usage and cost up to the parent
            parent.run.usage.add(run.usage)
        if run.status != "completed":
            error = (run.error or {}).get("message") or run.status
            raise RuntimeError(f"{self.agent} run {run.id} {run.status}: {error}")
        return run.output or ""


# run id → nesting depth of the child runs this process drives
_DEPTH: dict[str, int] = {}


def _depth_of(rt: Runtime, run_id: str) -> int:
    return _DEPTH.get(run_id, 0)
