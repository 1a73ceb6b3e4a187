"""Runs that outlive their first attempt: resume from the log, auto-resume at start-up, and
settling the record of a run whose end the store did not take.

A run resumes from the log alone: if its last assistant message has tool calls without
results, the missing ones run; otherwise the model is called. Completed tool calls are never
repeated (at-least-once execution for the call that was in flight, exactly-once recording).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from roost.engine.budget import fit_to_budget
from roost.engine.compaction import resume_context
from roost.errors import Conflict, RoostError, RunNotFound
from roost.models.base import Message
from roost.runtime.admission import Slot
from roost.runtime.agents import HostedAgent
from roost.runtime.bus import RunChannel
from roost.runtime.handle import RunHandle
from roost.runtime.live_session import LiveSession
from roost.sessions.records import RunRecord, now

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")

RESUMABLE = ("interrupted", "running", "queued")


class Recovery:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._unsettled: dict[str, RunRecord] = {}
        self._settle_wake = asyncio.Event()

    async def resume(self, tenant: str, run_id: str) -> RunHandle:
        """Continue an interrupted run from its log: missing tool results first, else the
        model. Completed tool calls are not repeated."""
        rt = self.runtime
        if run_id in rt.runs:
            raise Conflict(f"run {run_id} is already active", run_id=run_id)
        run = await rt.store.get_run(tenant, run_id)
        if run.status not in RESUMABLE:
            raise Conflict(f"run {run_id} is {run.status}; only interrupted runs resume",
                           run_id=run_id)
        live = await rt.sessions.get(tenant, run.session_id, rt.agents.policies_of)
        await live.reload()
        hosted = rt.agents.hosted(live.session.agent)
        events = await rt.store.tail_events(tenant, live.id, 10_000)
        if not any(e.run_id == run_id and e.type == "run.started" for e in events):
            raise RunNotFound(f"run {run_id} has no log to resume from", run_id=run_id)
        messages = resume_context(events, run_id)
        return self._start(run, hosted, live, messages)

    def _start(self, run: RunRecord, hosted: HostedAgent, live: LiveSession,
               messages: list[Message]) -> RunHandle:
        rt = self.runtime
        loop = asyncio.get_running_loop()
        timeout = hosted.agent.limits.run_timeout_s
        run.attempt += 1
        run.status = "running"
        run.error = None
        run.deadline = now() + timeout
        slot = rt.admission.reserve(run.tenant, deadline=time.monotonic() + timeout)
        handle = RunHandle(run=run, channel=RunChannel(rt.settings.runtime.run_channel_buffer),
                           stream=False, done=loop.create_future())
        try:
            lane_wait = rt.lanes.enter((run.tenant, live.id), handle, policy="reject",
                                       max_pending=0, cancel=lambda h: None)
        except BaseException:
            slot.release()
            raise
        rt.runs[run.id] = handle
        rt.sessions.pin(live)
        handle.task = rt.spawn(self._drive(handle, hosted, live, slot, lane_wait, messages,
                                           loop.time() + timeout), name=f"resume-{run.id}")
        return handle

    async def _drive(self, handle: RunHandle, hosted: HostedAgent, live: LiveSession,
                     slot: Slot, lane_wait: asyncio.Future[None] | None,
                     messages: list[Message], deadline: float) -> None:
        rt = self.runtime
        try:
            await slot.acquire()
            await rt.executor.execute(handle, hosted, live, deadline,
                                      resume_messages=fit_to_budget(
                                          messages, hosted.agent.policies.history_token_budget,
                                          min_turns=1))
        except asyncio.CancelledError:
            pass
        except RoostError as exc:
            await rt.executor.record_unstarted(handle, "failed", exc)
        finally:
            await rt.end_run(handle, live, slot)

    async def auto_resume(self) -> None:
        rt = self.runtime
        tenants = {"default", *rt.settings.admission.tenants}
        for tenant in tenants:
            try:
                runs = await rt.store.list_runs(tenant, status="interrupted", limit=1000)
            except RoostError as exc:
                log.warning("auto-resume: cannot list runs of %s: %s", tenant, exc)
                continue
            for run in runs:
                try:
                    await self.resume(tenant, run.id)
                    log.info("auto-resumed run %s", run.id)
                except RoostError as exc:
                    log.warning("auto-resume of %s failed: %s", run.id, exc)

    # -- settling records after an outage ----------------------------------------------
    def settle_later(self, run: RunRecord) -> None:
        """The run ended in a store outage: record its end from the log when the store
        answers again (its record must agree with its log)."""
        self._unsettled[run.id] = run
        self._settle_wake.set()

    def unsettled(self) -> int:
        return len(self._unsettled)
