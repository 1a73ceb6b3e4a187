"""Executing one admitted run: the engine over its live session, then what follows it
(the window kept, compaction), and the record of a run that never started."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from roost.bus import FleetBus
from roost.engine.approval import with_decisions
from roost.engine.compaction import CompactionPolicy, compact
from roost.engine.run import RunContext, Runner
from roost.errors import RoostError
from roost.models.base import Message
from roost.runtime.agents import HostedAgent
from roost.runtime.follow import publish_events
from roost.runtime.handle import RunHandle
from roost.runtime.live_session import LiveSession
from roost.sessions.records import Event, now

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")


def _fleet_emitter(local: Callable[[Event], None], bus: FleetBus,
                   run_id: str) -> Callable[[Event], None]:
    """Emit to this process's readers and, for followers on other instances, to the bus.
    Token deltas stay local: they are many, never persisted, and a follower elsewhere gets
    each message whole."""
    def emit(event: Event) -> None:
        local(event)
        if event.type != "message.delta":
            publish_events(bus, run_id, (event,))
    return emit


class Executor:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def execute(self, handle: RunHandle, hosted: HostedAgent, live: LiveSession,
                      deadline: float, *, resume_messages: list[Message] | None = None) -> None:
        rt = self.runtime
        agent = hosted.agent
        messages = ([hosted.system] if hosted.system else []) + (
            resume_messages if resume_messages is not None else live.history)
        emit: Callable[[Event], None] = handle.channel.publish
        if rt.shared:
            emit = _fleet_emitter(emit, rt.bus, handle.run.id)
        tools, specs = rt.agents.tool_policies.for_tenant(handle.run.tenant,
                                                          hosted.tools, hosted.tool_specs)
        ctx = RunContext(agent=agent, model=hosted.model, tools=tools,
                         tool_specs=specs, session=live, run=handle.run,
                         messages=messages, deadline=deadline, emit=emit,
                         stream=handle.stream, hooks=rt.hooks,
                         resume=resume_messages is not None, cancel_reason=handle.cancel_reason,
                         artifacts=rt.artifacts, budget=handle.budget,
                         gate=with_decisions(hosted.gate, handle.decisions),
                         tool_calls=handle.tool_calls,
                         compaction=agent.policies.compaction, summariser=hosted.summariser)
        handle.ctx = ctx
        handle.started = True
        # The run's record is first written by its first append, maybe long after it was
        # submitted (it waited for its lane, a slot, the session): stamp the lease now, or
        # another instance would find it already expired and take it over.
        handle.run.owner = rt.instance_id
        handle.run.lease_expires_at = now() + rt.leases.ttl
        try:
            await Runner(ctx).run()
            error = (handle.run.error or {}).get("type")
            if error == "store_unavailable":
                rt.store_failed()
            elif error == "session_not_found":  # deleted elsewhere: forget the cached copy
                rt.sessions.discard(live.tenant, live.id)
        finally:
            conversation = ctx.messages[1:] if hosted.system else ctx.messages
            handle.conversation = conversation
            live.remember(conversation, completed=handle.run.status == "completed")
            rt.sessions.resize(live)
            if ctx.unsettled:
                rt.recovery.settle_later(handle.run)

    async def compact(self, handle: RunHandle, hosted: HostedAgent, live: LiveSession,
                      policy: CompactionPolicy) -> None:
        """Summarise older history with a model; best effort — a failure leaves the history
        as it was (windowing still bounds the prompt)."""
        assert hosted.summariser is not None
        run = handle.run
        loop = asyncio.get_running_loop()
        try:
            compaction = await compact(handle.conversation, policy, hosted.summariser,
                                       deadline=loop.time() + policy.timeout_s,
                                       metadata={"run_id": run.id, "tenant": run.tenant,
                                                 "session_id": run.session_id,
                                                 "purpose": "compaction"})
            if compaction is None:
                return
            if await live.record_compaction(compaction, run.id, handle.conversation):
                self.runtime.sessions.resize(live)
                log.info("compacted session %s: %d messages summarised", live.id,
                         compaction.replaced)
        except RoostError as exc:
            log.warning("compaction of session %s failed: %s", run.session_id, exc)

    async def record_unstarted(self, handle: RunHandle, status: str,
                               exc: BaseException | None) -> None:
        """A run that never reached the engine: its record, and its end for live readers."""
        run = handle.run
        run.status = status
        if exc is not None:
            run.error = {"type": getattr(exc, "type", "timed_out"), "message": str(exc) or status}
        else:  # the same shape as a run cancelled while running
            run.error = {"type": status, "reason": handle.cancel_reason or "user"}
        run.disown()
        run.updated_at = now()
        handle.channel.publish(Event(type="run.failed" if status != "cancelled" else "run.cancelled",
                                     run_id=run.id, data={"error": run.error or {"type": status}}))
        try:
            await self.runtime.store.put_run(run)
        except RoostError as error:
            log.warning("run %s: its %s record could not be written: %s", run.id, status, error)
