"""Background and delayed runs: submitted now, run on whichever instance has room.

    run = await runtime.background.submit(tenant, session_id, "Summarise the week",
                                          run_at=time.time() + 3600)

The life of a background run:

1. `submit` checks what it can at once (the session, the agent, the input, `run_at`), writes
   the run record (status `queued`, no owner), puts it in the durable queue
   (`BackgroundStore`), and announces it on the fleet bus (channel `background`).
2. Every instance's worker (`work_forever`) sleeps until a wake-up arrives (an announcement,
   one of its background runs ending), the next delayed run is due, or `poll_interval_s`
   passes — the slow look that covers a lost announcement. It then claims at most as many
   runs as its admission has free places (`claim_batch` at most), so a busy instance leaves
   the queue to idle ones, and hands each to `Turns.submit` as a `background`-priority turn:
   the same admission, fair queue between tenants and session lane as any turn.
3. A claimed run is an ordinary owned run: its lease is renewed with the instance's others,
   and when its instance dies the fleet's takeover claims it (`recovery.py`). If it had not
   started yet (its record still has no deadline: a queued record never does), takeover puts
   it back in the queue (`requeue_unstarted`) rather than closing it.
4. A claimed run that cannot start now (overload, agent paused, the session's lane full) goes
   back in the queue for `requeue_delay_s`; one whose session is gone fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from roost.background.config import BackgroundConfig
from roost.background.store import BackgroundStore, open_background_store
from roost.errors import (
    InvalidInput,
    RoostError,
    RunNotFound,
    SessionNotFound,
)
from roost.runtime.handle import new_id
from roost.runtime.idempotency import Replay, check_key, check_same_request, fingerprint
from roost.sessions.records import RunRecord, now

if TYPE_CHECKING:
    from roost.runtime.runtime import Runtime

log = logging.getLogger("roost.background")

CHANNEL = "background"


@dataclass(slots=True)
class BackgroundStatistics:
    """This instance's share of the queue's traffic."""

    submitted: int = 0
    claims: int = 0  # claim calls
    claimed: int = 0  # runs they took
    requeued: int = 0
    wakeups: int = 0  # announcements received


class BackgroundRuns:
    def __init__(self, runtime: Runtime, config: BackgroundConfig) -> None:
        self.runtime = runtime
        self.config = config
        settings = runtime.settings.store
        self.queue: BackgroundStore = open_background_store(
            settings.url, runtime.store, tick_retention_s=config.tick_retention_s,
            **settings.options)
        self.stats = BackgroundStatistics()
        self._wake = asyncio.Event()

    async def open(self) -> None:
        await self.queue.open()

    async def close(self) -> None:
        await self.queue.close()

    # -- submitting -----------------------------------------------------------------
    async def submit(self, tenant: str, session_id: str, text: str, *,
                     run_at: float | None = None, idempotency_key: str | None = None
                     ) -> RunRecord:
        """Queue a run of `text` in the session, due now or at `run_at` (epoch seconds; in
        the past means now). `Replay` names the run an earlier submission with the same
        `idempotency_key` queued."""
        rt = self.runtime
        if rt.draining:
            from roost.runtime.agents import AgentUnavailable

            raise AgentUnavailable("the server is shutting down", retry_after=1)
        rt.check_store()
        clock = now()
        if run_at is not None:
            if not math.isfinite(run_at):
                raise InvalidInput("run_at must be a time", field="run_at")
            if run_at - clock > self.config.max_delay_s:
                raise InvalidInput(f"run_at is more than {self.config.max_delay_s:g} s ahead",
                                   field="run_at")
        session = await rt.store.get_session(tenant, session_id)
        hosted = rt.agents.hosted(session.agent)
        limits = hosted.agent.limits
        if not text or not text.strip():
            raise InvalidInput("input must not be empty", field="input")
        if len(text) > limits.max_input_chars:
            raise InvalidInput(f"input is longer than {limits.max_input_chars} characters",
                               field="input")
        if hosted.state == "stopped":
            rt.agents.check_admits(hosted)
        run = RunRecord(id=new_id("run"), session_id=session_id, tenant=tenant,
                        agent=hosted.name, model=hosted.model.name, status="queued", input=text,
                        attempt=0)  # the claim that starts it makes it attempt 1
        if idempotency_key is not None:
            mine = fingerprint({"session_id": session_id, "input": text,
                                "background": True, "run_at": run_at})
            created, record = await rt.store.claim_idempotency_key(
                tenant, f"turn:{session_id}", check_key(idempotency_key), mine, run.id,
                rt.settings.runtime.idempotency_ttl_s)
            if not created:
                check_same_request(record.fingerprint, mine)
                raise Replay(record.value)
        await self.enqueue(run, max(clock, run_at or clock))
        self.stats.submitted += 1
        return run

    async def enqueue(self, run: RunRecord, not_before: float) -> None:
        """Store the queued record, queue it, and tell the fleet."""
        # The record first: a queue entry without its record is dropped by the claim, a
        # record without its entry would wait forever.
        await self.runtime.store.put_run(run)
        await self.queue.enqueue(run, not_before)
        self.runtime.bus.publish(CHANNEL, repr(not_before).encode())
        self._wake.set()

    async def cancel_queued(self, run: RunRecord) -> RunRecord | None:
        """Cancel a run still in the queue: claim it first (a worker may be taking it at
        this moment; one of us wins), then record it cancelled. None when a worker won."""
        rt = self.runtime
        claimed = await rt.store.claim_run(run.tenant, run.id, rt.instance_id, rt.leases.ttl,
                                           statuses=("queued",))
        if claimed is None:
            return None
        await self.queue.remove(run.tenant, run.id)
        claimed.status = "cancelled"
        claimed.error = {"type": "cancelled", "reason": "user"}
        claimed.disown()
        claimed.updated_at = now()
        await rt.store.put_run(claimed)
        return claimed

    async def requeue_unstarted(self, run: RunRecord) -> bool:
        """Takeover found `run` claimed and never started: if it came from the queue (a
        queued record has no deadline), put it back there and say True."""
        if run.deadline is not None:
            return False
        await self._requeue(run, now())
        log.info("run %s: its instance stopped before starting it; back in the queue", run.id)
        return True

    async def _requeue(self, run: RunRecord, not_before: float) -> None:
        run.status = "queued"
        run.deadline = None
        run.error = None
        run.disown()
        run.updated_at = now()
        self.stats.requeued += 1
        await self.enqueue(run, not_before)

    # -- the worker -----------------------------------------------------------------
    async def listen_forever(self) -> None:
        """Wake the worker when another instance queues a run."""
        async with self.runtime.bus.subscribe(CHANNEL) as subscription:
            async for _ in subscription:  # a gap (None) wakes it too: look again
                self.stats.wakeups += 1
                self._wake.set()

    async def work_forever(self) -> None:
        rt = self.runtime
        cfg = self.config
        while True:
            self._wake.clear()
            wait = cfg.poll_interval_s
            if not rt.draining:
                try:
                    taken, limit = await self.claim_and_start()
                    if taken and taken == limit:
                        continue  # a full batch: more may be due
                    if limit == 0:
                        # Full: look again soon (or when one of our runs ends), without
                        # asking the store anything meanwhile.
                        wait = cfg.busy_retry_s
                    else:
                        due = await self.queue.next_due()
                        if due is not None:
                            # Due now but nothing taken: another instance holds those rows
                            # (PostgreSQL skips locked rows); look again shortly, not at once.
                            wait = max(0.0 if taken else 0.05, min(wait, due - now()))
                except RoostError as exc:
                    log.warning("background worker: %s", exc)
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    def free_capacity(self) -> int:
        """How many runs this instance could start now without queueing in admission."""
        stats = self.runtime.admission.statistics()
        return max(0, min(self.config.claim_batch,
                          stats.running_limit - stats.running - stats.queued))

    async def claim_and_start(self) -> tuple[int, int]:
        """One claim, bounded by free capacity; (runs taken, the bound)."""
        rt = self.runtime
        limit = self.free_capacity()
        if limit == 0:
            return 0, 0
        self.stats.claims += 1
        runs = await self.queue.claim(rt.instance_id, rt.leases.ttl, limit)
        self.stats.claimed += len(runs)
        for run in runs:
            await self._start(run)
        return len(runs), limit

    async def _start(self, run: RunRecord) -> None:
        rt = self.runtime
        try:
            handle = await rt.turns.submit(run.tenant, run.session_id, run.input,
                                           priority="background", claimed=run)
        except (SessionNotFound, RunNotFound) as exc:
            run.status = "failed"
            run.error = {"type": exc.type, "message": str(exc)}
            run.disown()
            with contextlib.suppress(RoostError):  # the session and its runs are gone
                await rt.store.put_run(run)
            return
        except RoostError as exc:
            log.info("run %s cannot start now (%s); back in the queue", run.id, exc)
            try:
                await self._requeue(run, now() + self.config.requeue_delay_s)
            except RoostError as error:  # its lease lapses; takeover requeues it
                log.warning("run %s could not be requeued: %s", run.id, error)
            return
        handle.done.add_done_callback(lambda _: self._wake.set())

    def statistics(self) -> dict[str, int]:
        s = self.stats
        return {"submitted": s.submitted, "claims": s.claims, "claimed": s.claimed,
                "requeued": s.requeued, "wakeups": s.wakeups}

