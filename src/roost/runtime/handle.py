"""A run as this process drives it: its record, its live channel, its task and outcome."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

from roost.engine.approval import Decision
from roost.engine.run import RunContext
from roost.engine.run_budget import RunBudget
from roost.models.base import Message
from roost.runtime.bus import RunChannel
from roost.sessions.records import Event, RunRecord


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass(eq=False)
class RunHandle:
    """A submitted turn: its record, its live events, and its outcome."""

    run: RunRecord
    channel: RunChannel
    stream: bool
    done: asyncio.Future[RunRecord]
    task: asyncio.Task[None] | None = None
    ctx: RunContext | None = None
    cancel_reason: str | None = None
    started: bool = False
    # The whole conversation after the run (without instructions), for compaction.
    conversation: list[Message] = field(default_factory=list)
    # Holds this session's store lease (shared stores): released when the run ends.
    leased: bool = False
    # What the run may spend, the decisions a person made on its calls, and the tool calls
    # it made before (a resumed run: all three read back from its log).
    budget: RunBudget | None = None
    decisions: dict[str, Decision] | None = None
    tool_calls: int = 0

    async def wait(self) -> RunRecord:
        return await asyncio.shield(self.done)

    def cancel(self, reason: str = "user") -> None:
        if self.done.done() or self.task is None:
            return
        self.cancel_reason = reason
        if self.ctx is not None:
            self.ctx.cancel_reason = reason
        self.task.cancel()

    def finish(self) -> None:
        """Resolve the outcome (idempotent): the run's record as it ended."""
        if not self.done.done():
            self.done.set_result(self.run)

    @property
    def events(self) -> list[Event]:
        return self.ctx.events if self.ctx is not None else []
