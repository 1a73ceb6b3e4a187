"""Runs that outlive their first attempt: resume from the log, auto-resume at start-up, and
settling the record of a run whose end the store did not take.

A run resumes from the log alone: if its last assistant message has tool calls without
results, the missing ones run; otherwise the model is called. Completed tool calls are never
repeated (at-least-once execution for the call that was in flight, exactly-once recording).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from roost.engine.approval import Decision, decisions_from
from roost.engine.budget import fit_to_budget
from roost.engine.compaction import resume_context
from roost.engine.run_budget import RunBudget
from roost.errors import Conflict, RoostError, RunNotFound
from roost.models.base import Message
from roost.runtime.admission import Slot
from roost.runtime.agents import HostedAgent
from roost.runtime.bus import RunChannel
from roost.runtime.handle import RunHandle
from roost.runtime.live_session import LiveSession
from roost.sessions.records import RUN_END_EVENTS, Event, RunRecord, now

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")

RESUMABLE = ("interrupted", "running", "queued")
# An interrupted run's log ends in run.interrupted, and it resumes after it; a waiting
# run's in run.waiting, and it resumes after the decision (runtime/approvals.py).
FINAL_EVENTS = RUN_END_EVENTS - {"run.interrupted", "run.waiting"}
_STATUS_OF = {"run.completed": "completed", "run.cancelled": "cancelled",
              "run.interrupted": "interrupted", "run.waiting": "waiting"}
#: how much of a session's log a resume reads: a long run's whole own part, with margin
RESUME_TAIL_EVENTS = 10_000


def restored_state(first: list[Event], tail: list[Event], run_id: str) -> dict[str, Any]:
    """What a resumed run carries over from its log: its budget (in `run.started`), the
    decisions a person made on its calls, and how many tool calls it made."""
    started = next((e for e in first if e.type == "run.started" and e.run_id == run_id), None)
    return {"budget": RunBudget.from_data(started.data.get("budget")) if started else None,
            "decisions": decisions_from(tail, run_id) or None,
            "tool_calls": sum(1 for e in tail if e.type == "tool.result" and e.run_id == run_id)}


def apply_terminal(run: RunRecord, event: Event) -> None:
    """Set the run's record from the terminal event its log holds."""
    data = event.data
    status = _STATUS_OF.get(event.type)
    if status is None:  # run.failed: timed_out is a failure with its own status
        error = data.get("error") or {}
        kind = str(error.get("type"))
        status = kind if kind in ("timed_out", "budget_exceeded") else "failed"
    run.status = status
    if event.type == "run.completed":
        run.output = data.get("output", run.output)
        run.error = None
    else:
        run.error = data.get("error") or run.error


class Recovery:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._unsettled: dict[str, RunRecord] = {}
        self._settle_wake = asyncio.Event()
        self.takeovers = 0

    async def resume(self, tenant: str, run_id: str) -> RunHandle:
        """Continue a run from its log: missing tool results first, else the model.
        Completed tool calls are not repeated. Manual resume, auto-resume and takeover all
        claim the run first: exactly one claimant resumes it, the others get `Conflict`."""
        rt = self.runtime
        if rt.live_run(tenant, run_id) is not None:
            raise Conflict(f"run {run_id} is already active", run_id=run_id)
        run = await rt.store.get_run(tenant, run_id)
        if run.status not in RESUMABLE:
            raise Conflict(f"run {run_id} is {run.status}; only interrupted runs resume",
                           run_id=run_id)
        claimed = await rt.store.claim_run(tenant, run_id, rt.instance_id, rt.leases.ttl)
        if claimed is None:
            raise Conflict(f"run {run_id} is being run by a live instance", run_id=run_id)
        return await self._resume_claimed(claimed)

    async def _resume_claimed(self, run: RunRecord) -> RunHandle:
        """The run is ours (claimed): resume it at its place in the log, or close it when
        the session moved on without it."""
        rt = self.runtime
        try:
            live = await rt.sessions.get(run.tenant, run.session_id, rt.agents.policies_of)
            await live.reload()
            hosted = rt.agents.hosted(live.session.agent)
            events = await rt.read_run_events(run.tenant, run)
        except BaseException:
            await self._give_back(run)
            raise
        if not any(e.type == "run.started" for e in events):
            if await rt.background.requeue_unstarted(run):
                raise Conflict(f"run {run.id} had not started: back in the queue", run_id=run.id)
            await self._close_orphan(run, "the run had not started when its instance stopped")
            raise RunNotFound(f"run {run.id} has no log to resume from", run_id=run.id)
        try:
            # The newest part of the log: a long run's first page of events is not its end.
            tail = await rt.store.tail_events(run.tenant, live.id, RESUME_TAIL_EVENTS)
        except BaseException:
            await self._give_back(run)
            raise
        mine = [e for e in tail if e.run_id == run.id] or events
        ended = next((e for e in reversed(mine) if e.type in FINAL_EVENTS), None)
        if ended is not None:  # its end is in the log: the record only has to agree
            apply_terminal(run, ended)
            run.disown()
            await rt.store.put_run(run)
            raise Conflict(f"run {run.id} already ended ({run.status})", run_id=run.id)
        if mine[-1].seq != live.session.last_seq:
            # A later turn moved the session on: appending this run's steps now would put
            # them after that turn's. Close it where it stands instead.
            await self._close_orphan(run, "the session moved on while the run was interrupted")
            raise Conflict(f"run {run.id} cannot resume: its session moved on", run_id=run.id)
        try:
            return self._start(run, hosted, live, resume_context(tail, run.id),
                               **restored_state(events, tail, run.id))
        except BaseException:
            # Claimed but not started (the session is busy here, the store failed): give the
            # claim back at once, so the next look (here or elsewhere) tries again.
            await self._give_back(run)
            raise

    async def _close_orphan(self, run: RunRecord, why: str) -> None:
        run.status = "interrupted"
        run.error = {"type": "orphaned", "message": why}
        run.disown()
        run.updated_at = now()
        await self.runtime.store.put_run(run)
        log.warning("run %s closed: %s", run.id, why)

    async def _give_back(self, run: RunRecord) -> None:
        """A claimed run we could not start: let its lease lapse now for another claimant
        (without an owner, or our own renewal would keep extending it)."""
        run.disown()
        run.lease_expires_at = now()
        with contextlib.suppress(RoostError):
            await self.runtime.store.put_run(run)

    async def take_over_forever(self) -> None:
        """Every instance looks for runs whose owner died (lease expired), and, with
        `auto_resume`, runs a shutdown interrupted; it claims each and resumes it."""
        rt = self.runtime
        interval = rt.settings.runtime.takeover_interval_s
        while True:
            await self.take_over()
            await asyncio.sleep(interval)

    async def take_over(self) -> int:
        """One look; returns how many runs this instance took over."""
        rt = self.runtime
        if rt.draining:
            return 0
        try:
            orphans = await rt.store.claimable_runs(
                include_interrupted=rt.settings.runtime.auto_resume, limit=100)
        except RoostError as exc:
            log.warning("takeover: cannot list runs: %s", exc)
            return 0
        taken = 0
        for orphan in orphans:
            if rt.draining:
                break
            if orphan.status == "waiting":  # nobody decided in time: the policy's outcome
                try:
                    await rt.approvals.expire(orphan)
                except RoostError as exc:
                    log.info("approval timeout of run %s: %s", orphan.id, exc)
                continue
            try:
                claimed = await rt.store.claim_run(orphan.tenant, orphan.id, rt.instance_id,
                                                   rt.leases.ttl)
                if claimed is None:
                    continue  # another instance was quicker
                self.takeovers += 1
                await self._resume_claimed(claimed)
                taken += 1
                log.info("took over run %s (previous owner %s)", orphan.id, orphan.owner)
            except RoostError as exc:
                log.info("takeover of run %s: %s", orphan.id, exc)
        return taken

    def _start(self, run: RunRecord, hosted: HostedAgent, live: LiveSession,
               messages: list[Message], *, budget: RunBudget | None = None,
               decisions: dict[str, Decision] | None = None, tool_calls: int = 0) -> RunHandle:
        rt = self.runtime
        loop = asyncio.get_running_loop()
        timeout = hosted.agent.limits.run_timeout_s
        run.deadline = now() + timeout
        slot = rt.admission.reserve(run.tenant, deadline=time.monotonic() + timeout)
        handle = RunHandle(run=run, channel=RunChannel(rt.settings.runtime.run_channel_buffer),
                           stream=False, done=loop.create_future(), budget=budget,
                           decisions=decisions, tool_calls=tool_calls)
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
            if rt.shared:
                # The dead owner's session lease lapses with its run lease: wait for it.
                async with asyncio.timeout_at(deadline):
                    await rt.leases.take(handle.run, policy="enqueue")
                handle.leased = True
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

    # -- settling records after an outage ----------------------------------------------
    def settle_later(self, run: RunRecord) -> None:
        """The run ended in a store outage: record its end from the log when the store
        answers again (its record must agree with its log)."""
        self._unsettled[run.id] = run
        self._settle_wake.set()

    def unsettled(self) -> int:
        return len(self._unsettled)

    async def settle_forever(self) -> None:
        """Record the end of runs that ended in an outage, once the store answers."""
        retry = self.runtime.settings.runtime.store_retry_s
        while True:
            await self._settle_wake.wait()
            for run_id, run in list(self._unsettled.items()):
                try:
                    await self.settle(run)
                except RoostError as exc:
                    log.info("run %s not settled yet: %s", run_id, exc)
                    continue
                self._unsettled.pop(run_id, None)
            if not self._unsettled:
                self._settle_wake.clear()
            else:
                await asyncio.sleep(retry)

    async def settle(self, run: RunRecord) -> None:
        """Make `run`'s record agree with its log: the log's terminal event when it has
        one (an append that landed although the store failed to say so), else the run's
        own end appended now. Raises `StoreUnavailable` while the store is still down."""
        rt = self.runtime
        live = await rt.sessions.get(run.tenant, run.session_id, rt.agents.policies_of)
        await live.reload()
        events = await rt.read_run_events(run.tenant, run)
        ended = next((e for e in reversed(events) if e.type in RUN_END_EVENTS), None)
        if ended is not None:
            apply_terminal(run, ended)
            await live.record_run(run, owner=self.runtime.instance_id)
            log.info("run %s settled from its log: %s", run.id, run.status)
            return
        if live.session.last_seq != (events[-1].seq if events else live.session.last_seq):
            # A later turn moved the session on: record the run alone.
            await live.record_run(run, owner=self.runtime.instance_id)
            return
        error = run.error or {"type": "store_unavailable",
                              "message": "the store failed during the run"}
        event_type = "run.cancelled" if run.status == "cancelled" else (
            "run.interrupted" if run.status == "interrupted" else "run.failed")
        await live.append([Event(type=event_type, run_id=run.id,
                                 data={"error": error, "usage": run.usage_data()})], run=run)
        log.info("run %s settled: %s recorded after the outage", run.id, run.status)
