"""Turns: admit one, then drive its run to the end.

The order of a turn: decisions that cost nothing come first (draining, admission, the agent's
state, the session's double-texting policy — all synchronous), then the session's live owner
is found (cache, or one load from the store), then the run's task waits its turn in the
session lane and for an admission slot, takes the store lease when the store is shared
between processes, and runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from roost.engine.compaction import needs_compaction
from roost.engine.run_budget import RunBudget
from roost.errors import InvalidInput, RoostError, SessionBusy, StoreUnavailable
from roost.runtime.admission import InheritedSlot, Priority, Slot
from roost.runtime.agents import AgentUnavailable, HostedAgent
from roost.runtime.bus import RunChannel
from roost.runtime.handle import RunHandle, new_id
from roost.runtime.idempotency import Replay, check_key, check_same_request, fingerprint
from roost.runtime.live_session import LiveSession
from roost.sessions.records import RunRecord, now

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.runtime")


class Turns:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def submit(self, tenant: str, session_id: str, text: str, *, stream: bool = False,
                     timeout_s: float | None = None, priority: Priority = "interactive",
                     idempotency_key: str | None = None,
                     claimed: RunRecord | None = None,
                     budget: RunBudget | None = None,
                     parent_run_id: str | None = None) -> RunHandle:
        """Admit a turn and start it. Raises at once (before any store work where possible)
        when it cannot be taken: draining, agent paused/stopped, overload, session busy;
        `Replay` when `idempotency_key` names an earlier submission of the same turn.
        `claimed`: a queued run this instance claimed (`roost.background`), run as it is;
        it waits for its session's lane whatever the double-texting policy.
        `budget` is capped by the agent's limits (which are also its default)."""
        rt = self.runtime
        if rt.draining:
            raise AgentUnavailable("the server is shutting down", retry_after=1)
        rt.check_store()
        # Admission first: the overload decision costs microseconds and no store work. A child
        # run (an agent called as a tool) runs under its parent's slot: waiting for a slot
        # its parent holds could deadlock (roost.tools.agent_tool).
        slot = InheritedSlot() if parent_run_id is not None else rt.admission.reserve(
            tenant, priority=priority,
            deadline=time.monotonic() + (timeout_s or rt.agents.max_timeout))
        try:
            try:
                live = await rt.sessions.get(tenant, session_id, rt.agents.policies_of)
            except StoreUnavailable:
                rt.store_failed()
                raise
            hosted = rt.agents.hosted(live.session.agent)
            limits = hosted.agent.limits
            if not text or not text.strip():
                raise InvalidInput("input must not be empty", field="input")
            if len(text) > limits.max_input_chars:
                raise InvalidInput(f"input is longer than {limits.max_input_chars} characters",
                                   field="input")
            rt.agents.check_admits(hosted)
        except BaseException:
            slot.release()
            raise
        timeout = min(timeout_s, limits.run_timeout_s) if timeout_s else limits.run_timeout_s
        loop = asyncio.get_running_loop()
        if claimed is None:
            run = RunRecord(id=new_id("run"), session_id=session_id, tenant=tenant,
                            agent=hosted.name, model=hosted.model.name, status="queued",
                            input=text, deadline=now() + timeout, owner=rt.instance_id,
                            lease_expires_at=now() + rt.settings.runtime.lease_ttl_s,
                            parent_run_id=parent_run_id)
        else:
            run = claimed
            run.deadline = now() + timeout
        policy = "enqueue" if claimed is not None else hosted.agent.policies.double_texting
        handle = RunHandle(run=run, channel=RunChannel(rt.settings.runtime.run_channel_buffer),
                           stream=stream, done=loop.create_future(),
                           budget=RunBudget.resolve(budget, hosted.budget))
        try:
            lane_wait = rt.lanes.enter((tenant, session_id), handle, policy=policy,
                                       max_pending=hosted.agent.policies.max_pending_turns,
                                       cancel=lambda h: h.cancel("interrupt"))
        except BaseException:
            slot.release()
            raise
        if rt.shared and lane_wait is None and policy in ("reject", "interrupt"):
            # Across instances these policies act now, like the lane does in one process:
            # `reject` answers 409 with nothing stored; `interrupt` asks the owner of the
            # session's active run to stop it, then waits for the session.
            try:
                handle.leased = await rt.leases.try_take(tenant, session_id)
                if not handle.leased and policy == "reject":
                    raise SessionBusy("the session has an active run on another instance",
                                      session_id=session_id)
                if not handle.leased:
                    await self._interrupt_elsewhere(tenant, session_id)
            except BaseException:
                rt.lanes.leave((tenant, session_id), handle)
                slot.release()
                raise
        if idempotency_key is not None:
            try:
                await self._claim_key(run, idempotency_key, timeout_s, priority)
            except BaseException:
                if handle.leased:
                    await rt.leases.release(tenant, session_id)
                rt.lanes.leave((tenant, session_id), handle)
                slot.release()
                raise
        rt.runs[run.id] = handle
        rt.sessions.pin(live)
        handle.task = rt.spawn(self._drive(handle, hosted, live, slot, lane_wait,
                                           loop.time() + timeout, policy), name=f"run-{run.id}")
        return handle

    async def _claim_key(self, run: RunRecord, key: str, timeout_s: float | None,
                         priority: str) -> None:
        """Claim the key for this run, or raise `Replay` with the run it already names."""
        rt = self.runtime
        mine = fingerprint({"session_id": run.session_id, "input": run.input,
                            "timeout_s": timeout_s, "priority": priority})
        created, record = await rt.store.claim_idempotency_key(
            run.tenant, f"turn:{run.session_id}", check_key(key), mine, run.id,
            rt.settings.runtime.idempotency_ttl_s)
        if not created:
            check_same_request(record.fingerprint, mine)
            raise Replay(record.value)

    async def _interrupt_elsewhere(self, tenant: str, session_id: str) -> None:
        rt = self.runtime
        for run in await rt.store.list_runs(tenant, session_id=session_id, status="running",
                                            limit=10):
            if run.owner is not None and run.owner != rt.instance_id:
                rt.control.cancel_remote(run.owner, tenant, run.id, "interrupt")

    async def _drive(self, handle: RunHandle, hosted: HostedAgent, live: LiveSession,
                     slot: Slot, lane_wait: asyncio.Future[None] | None, deadline: float,
                     policy: str) -> None:
        """The root of one run's task: wait for the lane, the agent, a slot and the lease,
        then run. Swallows cancellation: this task has no awaiting parent."""
        rt = self.runtime
        run = handle.run
        try:
            async with asyncio.timeout_at(deadline):
                if lane_wait is not None:
                    await lane_wait
                if hosted.state != "running":
                    await hosted.resumed.wait()
            # The slot enforces the same deadline itself (RunTimeout), counted as expired.
            await slot.acquire()
            if rt.shared and not handle.leased:
                # No read of the session here: if another instance moved it on, the run's
                # first append says so and the run catches up then (LiveSession.reload).
                async with asyncio.timeout_at(deadline):
                    await rt.leases.take(run, policy=policy)
                handle.leased = True
            await rt.executor.execute(handle, hosted, live, deadline)
            compaction = hosted.agent.policies.compaction
            if (run.status == "completed" and compaction is not None
                    and needs_compaction(handle.conversation, compaction)):
                # Answer the client first; the session stays ours (lane, lease) until the
                # summary is recorded, so the next turn sees it.
                handle.channel.close()
                handle.finish()
                await rt.executor.compact(handle, hosted, live, compaction)
        except (TimeoutError, RoostError) as exc:
            # Never started: the deadline passed while waiting, the slot timed out in the
            # queue, or the lease stayed taken.
            status = "timed_out" if isinstance(exc, TimeoutError) or exc.type == "timed_out" else "failed"
            await rt.executor.record_unstarted(handle, status, exc)
        except asyncio.CancelledError:
            if not handle.started:
                await rt.executor.record_unstarted(handle, "cancelled", None)
        except Exception as exc:  # pragma: no cover - a bug; keep serving
            log.exception("run %s crashed in the runtime", run.id)
            await rt.executor.record_unstarted(handle, "failed", exc)
        finally:
            await rt.end_run(handle, live, slot)
