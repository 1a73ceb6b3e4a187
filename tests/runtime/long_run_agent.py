"""A long run for tests: the model calls `step` until it has made $LONG_RUN_STEPS calls, then
answers; it summarises when asked to (compaction). Restart-safe: the next step is decided
from the newest tool result in the request, so a run resumed elsewhere continues where its
log stands. Served by `roost serve` in tests/e2e/test_long_runs.py."""

from __future__ import annotations

import os
import re

import orjson

from roost import Agent, tool
from roost.agent import Limits, Policies
from roost.engine.compaction import CompactionPolicy
from roost.models.base import Message, ModelRequest, ModelResponse, ToolCall
from roost.testing.scripted import ScriptedModel

_DONE = re.compile(r"step (\d+) done")


@tool
async def step(n: int) -> str:
    """Do step n.

    Args:
        n: The step number.
    """
    marker = os.environ.get("LONG_RUN_MARKER")
    if marker:
        with open(marker, "a") as file:  # noqa: ASYNC230 - a test double, a tiny write
            file.write(f"{n}\n")
    return f"step {n} done"


def next_step(request: ModelRequest, steps: int) -> ModelResponse | str:
    if request.metadata.get("purpose") == "compaction":
        return f"summary: the first steps are done ({len(request.messages[-1].content or '')} chars)"
    last = 0
    for message in reversed(request.messages):
        if message.role == "tool" and (match := _DONE.search(message.content or "")):
            last = int(match.group(1))
            break
    if last >= steps:
        return f"all {last} steps done"
    call = ToolCall(id=f"call_{last + 1}", name="step", arguments=orjson.dumps({"n": last + 1}).decode())
    return ModelResponse(message=Message(role="assistant", tool_calls=[call]),
                         finish_reason="tool_calls", model="long")


def long_agent(steps: int, name: str = "long") -> Agent:
    model = ScriptedModel([lambda request: next_step(request, steps)], repeat_last=True,
                          name="long")
    return Agent(name=name, model=model, tools=[step],
                 limits=Limits(max_steps=steps + 10, run_timeout_s=600),
                 policies=Policies(history_token_budget=2000, compaction=CompactionPolicy(
                     trigger_tokens=1000, keep_tokens=300, timeout_s=10)))


long = long_agent(int(os.environ.get("LONG_RUN_STEPS", "1000")))
