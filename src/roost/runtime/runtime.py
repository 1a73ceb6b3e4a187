"""The Runtime: hosts agents, admits turns, drives runs, owns every background task.

    runtime = Runtime(settings, agents=[weather])
    await runtime.start()
    session = await runtime.create_session("default", "weather")
    handle = await runtime.submit_turn("default", session.id, "Weather in Paris?")
    run = await handle.wait()
    await runtime.close()

This module is the facade; the work lives along its seams:

- `agents.py` — the hosted agents and their lifecycle;
- `live_session.py` — the one owner of each hot session (the only code that appends);
- `turns.py` — admitting a turn and driving its run; `execution.py` — one run over the engine;
- `recovery.py` — resume, auto-resume, settling records after an outage;
- `ownership.py` — the store's session lease across processes.

The server asks the Runtime, never the store: events, runs and sessions are read through
the methods below.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from typing import Any

from roost.agent import Agent
from roost.background.listing import list_runs_page
from roost.background.runs import BackgroundRuns
from roost.background.scheduler import Scheduler
from roost.bus import FleetBus, open_bus
from roost.config import Settings
from roost.engine.hooks import NO_HOOKS, EngineHooks
from roost.engine.run_budget import RunBudget
from roost.errors import Conflict, RoostError, SessionNotFound, StoreUnavailable, Unavailable
from roost.models.registry import ModelRegistry
from roost.runtime.adaptive import AdaptiveConfig, watch_loop
from roost.runtime.admission import AdmissionController, Priority, Slot
from roost.runtime.agents import AgentTable, AgentUnavailable, HostedAgent
from roost.runtime.approvals import Approvals, DecisionRequest
from roost.runtime.cache import SessionCache
from roost.runtime.control import FLEET, Control, instance_channel
from roost.runtime.execution import Executor
from roost.runtime.follow import follow_run, run_channel
from roost.runtime.handle import RunHandle, new_id
from roost.runtime.idempotency import check_key, check_same_request, fingerprint
from roost.runtime.lanes import SessionLanes
from roost.runtime.limits import admission_limits
from roost.runtime.live_session import LiveSession, LiveSessions
from roost.runtime.ownership import SessionLeases
from roost.runtime.recovery import Recovery
from roost.runtime.turns import Turns
from roost.sessions import open_store
from roost.sessions.artifacts import ArtifactStore, artifact_store_for, open_artifact_store
from roost.sessions.records import (
    RUN_END_EVENTS,
    TERMINAL_STATUSES,
    Event,
    Page,
    RunRecord,
    Session,
    now,
)
from roost.sessions.store import Store
from roost.sessions.usage import UsageTotals

__all__ = ["AgentUnavailable", "HostedAgent", "RunHandle", "Runtime", "new_id"]

log = logging.getLogger("roost.runtime")

SHARED_BACKENDS = frozenset({"postgres", "redis"})



class Runtime:
    """Hosts agents: `Runtime(settings, [agent])`, `await start()`, `submit_turn(...)`, `close()`."""

    def __init__(self, settings: Settings | None = None, agents: Iterable[Agent] = (), *,
                 store: Store | None = None, models: ModelRegistry | None = None,
                 hooks: EngineHooks = NO_HOOKS) -> None:
        self.settings = settings or Settings()
        self.store = store or open_store(self.settings.store.url, **self.settings.store.options)
        self.models = models or ModelRegistry(self.settings.providers, self.settings.models)
        self.hooks = hooks
        artifacts = self.settings.artifacts
        self.artifacts: ArtifactStore = (
            open_artifact_store(artifacts.url, **artifacts.options) if artifacts.url
            else artifact_store_for(self.settings.store.url, **_shared_options(self.settings)))
        self.cache: SessionCache = SessionCache(
            max_sessions=self.settings.sessions.cache_max_sessions,
            max_bytes=self.settings.sessions.cache_max_bytes)
        self.sessions = LiveSessions(self.store, self.cache)
        self.lanes = SessionLanes()
        self.admission = AdmissionController(admission_limits(self.settings.admission))
        self.instance_id = new_id("roost")
        self.agents = AgentTable(self.settings, self.models)
        self.runs: dict[str, RunHandle] = {}  # queued and running, in this process
        self.draining = False
        self.started = False
        self.shared = False  # the store is shared between processes
        self.turns = Turns(self)
        self.executor = Executor(self)
        self.recovery = Recovery(self)
        self.approvals = Approvals(self)
        self.leases = SessionLeases(self)
        # Events and control across the instances sharing the store (in process otherwise).
        self.bus: FleetBus = open_bus(self.settings.store.url, **self.settings.store.options)
        self.control = Control(self, self.bus)
        # Background, delayed and scheduled runs: the durable queue beside the store.
        self.background = BackgroundRuns(self, self.settings.background)
        self.scheduler = Scheduler(self, self.settings.background)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._store_down_until = 0.0
        for agent in agents:
            self.add_agent(agent)

    # -- lifecycle ----------------------------------------------------------------------
    def add_agent(self, agent: Agent) -> None:
        hosted = self.agents.add(agent)
        for tool in hosted.tools.values():
            bind = getattr(tool, "bind_runtime", None)  # agents as tools call this runtime
            if bind is not None:
                bind(self)
        if self.started:
            self.agents.set_state(hosted, "running")

    async def start(self) -> None:
        await self.store.open()
        await self.artifacts.open()
        self.shared = self.store.backend in SHARED_BACKENDS
        await self.bus.open()
        await self.background.open()
        await self.agents.start_toolsets()  # MCP servers &c.: their tools join the agents'
        for hosted in self.agents.values():
            if hosted.state == "created":
                self.agents.set_state(hosted, "running")
        # Lifecycle changes made through any instance survive restarts: apply the stored ones.
        await self.reload_agent_states()
        self.control.on_gap = self.reload_agent_states
        self.started = True
        self.spawn(self._sweep_forever(), name="roost-ttl-sweeper")
        # The event loop's load, sampled: admin stats, and the adaptive admission limit.
        interval = (self.admission.limits.adaptive or AdaptiveConfig()).interval_s
        self.spawn(watch_loop(interval, self.admission.on_load), name="roost-loop-load")
        self.spawn(self.recovery.settle_forever(), name="roost-settle")
        for channel in (instance_channel(self.instance_id), FLEET):
            self.spawn(self.control.listen(channel), name=f"roost-control-{channel}")
        # Renewal keeps this instance's runs and sessions owned; takeover adopts the runs of
        # instances that died (and, with auto_resume, runs a shutdown interrupted).
        self.spawn(self.leases.renew_forever(), name="roost-ownership-renewal")
        if self.settings.runtime.takeover or self.settings.runtime.auto_resume:
            self.spawn(self.recovery.take_over_forever(), name="roost-takeover")
        if self.settings.background.worker:
            self.spawn(self.background.listen_forever(), name="roost-background-wake")
            self.spawn(self.background.work_forever(), name="roost-background-worker")
        if self.settings.background.scheduler:
            self.spawn(self.scheduler.listen_forever(), name="roost-scheduler-changes")
            self.spawn(self.scheduler.fire_forever(), name="roost-scheduler")

    async def drain(self, grace_s: float | None = None) -> None:
        """Refuse new turns, give in-flight runs `grace_s`, then interrupt what is left at its
        next await (status `interrupted`, resumable from the log)."""
        self.draining = True
        grace = self.settings.server.shutdown_grace_s if grace_s is None else grace_s
        pending = [h.done for h in self.runs.values()]
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            if still:
                log.warning("interrupting %d runs after a %.1f s grace", len(still), grace)
                for handle in list(self.runs.values()):
                    handle.cancel("shutdown")
                await asyncio.wait([h.done for h in list(self.runs.values())] or [_done()],
                                   timeout=10)

    async def close(self) -> None:
        if not self.draining:
            await self.drain(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.agents.close_toolsets()
        await self.models.aclose()
        await self.bus.close()
        await self.background.close()
        await self.artifacts.close()
        await self.store.close()

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        """Start a task the runtime owns: tracked, cancelled and awaited by `close()`."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ready(self) -> None:
        """Raise when this instance should not get traffic (draining, store unreachable)."""
        if self.draining:
            raise Unavailable("draining")
        try:
            await self.store.ping()
        except StoreUnavailable:
            self.store_failed()
            raise
        self._store_down_until = 0.0

    def store_failed(self) -> None:
        self._store_down_until = time.monotonic() + self.settings.runtime.store_retry_s

    def check_store(self) -> None:
        """Fail fast while the store failed moments ago, instead of making every turn wait
        out the store's timeouts. `ready()` (readiness probes) keeps probing it."""
        if self._store_down_until > time.monotonic():
            raise StoreUnavailable("the session store is unreachable; retry shortly",
                                   retry_after=self.settings.runtime.store_retry_s)

    # -- agents ----------------------------------------------------------------------
    def hosted(self, name: str) -> HostedAgent:
        return self.agents.hosted(name)

    async def change_agent_state(self, name: str, action: str) -> HostedAgent:
        """`pause`, `resume`, `stop` or `start` an agent for the whole fleet: stored first
        (it survives restarts), applied here, then announced to every instance."""
        hosted = self.agents.hosted(name)
        state = self.agents.target_state(name, action)
        await self.store.set_agent_state("*", name, state)
        self.apply_agent_state(name, state)
        self.control.announce_agent_state("*", name, state)
        return hosted

    def set_agent_state(self, name: str, action: str) -> HostedAgent:
        """The same change on this instance alone, not stored (an embedded runtime, tests)."""
        hosted = self.agents.hosted(name)
        self.apply_agent_state(name, self.agents.target_state(name, action))
        return hosted

    async def reload_agent_states(self) -> None:
        """Apply the lifecycle states the store holds (at start, and after a bus gap)."""
        try:
            states = await self.store.agent_states()
        except RoostError as exc:
            log.warning("cannot read the agents' stored states: %s", exc)
            return
        for (scope, name), state in states.items():
            if scope == "*":
                self.apply_agent_state(name, state)

    def apply_agent_state(self, name: str, state: str) -> None:
        """Apply a lifecycle state here (from this instance or another). `stopped` cancels
        the agent's runs in flight on this instance."""
        hosted = self.agents.get(name)
        if hosted is None or not self.agents.set_state(hosted, state):
            return
        if state == "stopped":
            for handle in list(self.runs.values()):
                if handle.run.agent == name:
                    handle.cancel("agent_stopped")

    # -- sessions ----------------------------------------------------------------------
    async def create_session(self, tenant: str, agent: str, *, user_id: str | None = None,
                             state: dict[str, Any] | None = None,
                             metadata: dict[str, Any] | None = None,
                             idempotency_key: str | None = None) -> Session:
        """A new session; with `idempotency_key`, the same key and request within the key's
        lifetime return the session the first request created."""
        hosted = self.agents.hosted(agent)
        session_id = new_id("ses")
        if idempotency_key is not None:
            mine = fingerprint({"agent": agent, "user_id": user_id, "state": state,
                                "metadata": metadata})
            created_key, record = await self.store.claim_idempotency_key(
                tenant, f"session:{agent}", check_key(idempotency_key), mine, session_id,
                self.settings.runtime.idempotency_ttl_s)
            if not created_key:
                check_same_request(record.fingerprint, mine)
                session_id = record.value
                with contextlib.suppress(SessionNotFound):  # else the first try never made it
                    return await self.store.get_session(tenant, session_id)
        ttl = self.settings.sessions.ttl_s
        created = now()
        session = Session(id=session_id, tenant=tenant, agent=agent, user_id=user_id,
                          state=state or {}, metadata=metadata or {}, created_at=created,
                          updated_at=created, expires_at=created + ttl if ttl else None)
        try:
            session = await self.store.create_session(session)
        except Conflict:
            if idempotency_key is None:
                raise
            # Two requests with one key raced past the claim: the other one created it.
            return await self.store.get_session(tenant, session_id)
        self.sessions.add(session, hosted.agent.policies)
        return session

    async def get_session(self, tenant: str, session_id: str) -> Session:
        return await self.store.get_session(tenant, session_id)

    async def list_sessions(self, tenant: str, **filters: Any) -> Page:
        return await self.store.list_sessions(tenant, **filters)

    async def patch_session(self, tenant: str, session_id: str, delta: dict[str, Any],
                            expected_version: int | None = None) -> Session:
        live = self.sessions.peek(tenant, session_id)
        if live is not None:  # the active run holds this object: keep its version current
            return await live.patch_state(delta, expected_version)
        return await self.store.patch_state(tenant, session_id, delta, expected_version)

    async def delete_session(self, tenant: str, session_id: str) -> None:
        active = self.lanes.active((tenant, session_id))
        if active is not None:
            active.cancel("user")
        if not await self.store.delete_session(tenant, session_id):
            raise SessionNotFound(f"no session {session_id!r}", session_id=session_id)
        self.sessions.discard(tenant, session_id)

    async def read_events(self, tenant: str, session_id: str, *, after: int = 0,
                          limit: int = 100) -> list[Event]:
        """A session's persisted log after `after`, oldest first."""
        return await self.store.read_events(tenant, session_id, after=after, limit=limit)

    # -- turns and runs ---------------------------------------------------------------
    async def submit_turn(self, tenant: str, session_id: str, text: str, *, stream: bool = False,
                          timeout_s: float | None = None, priority: Priority = "interactive",
                          idempotency_key: str | None = None,
                          budget: RunBudget | None = None) -> RunHandle:
        """Admit a turn and start it (see `turns.py`); `Replay` for a repeated key."""
        return await self.turns.submit(tenant, session_id, text, stream=stream,
                                       timeout_s=timeout_s, priority=priority,
                                       idempotency_key=idempotency_key, budget=budget)

    async def end_run(self, handle: RunHandle, live: LiveSession, slot: Slot) -> None:
        """A run's task ends, whatever happened: give back what it held, in order."""
        run = handle.run
        if handle.leased:
            handle.leased = False
            await self.leases.release(run.tenant, run.session_id)
        self.lanes.leave((run.tenant, run.session_id), handle)
        slot.release()
        handle.channel.close()
        self.runs.pop(run.id, None)
        self.sessions.unpin(live)
        handle.finish()

    def live_run(self, tenant: str, run_id: str) -> RunHandle | None:
        """The run when this process drives it."""
        handle = self.runs.get(run_id)
        return handle if handle is not None and handle.run.tenant == tenant else None

    async def list_runs(self, tenant: str, **query: Any) -> Page:
        """A page of the tenant's runs, newest first (see `roost.background.listing`)."""
        return await list_runs_page(self.store, tenant, **query)

    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        handle = self.live_run(tenant, run_id)
        if handle is not None:
            return handle.run
        return await self.store.get_run(tenant, run_id)

    async def read_run_events(self, tenant: str, run: RunRecord, *, after: int = 0,
                              limit: int = 1000) -> list[Event]:
        """A run's persisted events after seq `after`, oldest first, at most `limit` —
        read by run (an index), wherever the run sits in its session's log."""
        return await self.store.read_run_events(tenant, run.session_id, run.id, after=after,
                                                limit=limit)

    def replay_of(self, run: RunRecord) -> Callable[[int], Awaitable[list[Event]]]:
        """Reads `run`'s persisted events after a seq: how a lagging follower catches up."""
        async def replay(after: int) -> list[Event]:
            return await self.read_run_events(run.tenant, run, after=after, limit=500)
        return replay

    async def usage_summary(self, tenant: str, **query: Any) -> list[UsageTotals]:
        return await self.store.usage_summary(tenant, **query)

    async def cancel_run(self, tenant: str, run_id: str, *,
                         wait_s: float = 10.0) -> RunRecord:
        """Cancel a run wherever it runs: here, or through the bus on its owner; returns its
        record once it ended (or as it stands after `wait_s`)."""
        handle = self.live_run(tenant, run_id)
        if handle is not None:
            handle.cancel("user")
            return await handle.wait()
        run = await self.store.get_run(tenant, run_id)
        if run.status in TERMINAL_STATUSES:
            return run
        if run.status == "queued" and run.owner is None:  # still in the durable queue
            cancelled = await self.background.cancel_queued(run)
            if cancelled is not None:
                return cancelled
            run = await self.store.get_run(tenant, run_id)  # a worker took it meanwhile
        if run.status == "waiting":  # nobody runs it: end it here (see approvals.py)
            return await self.approvals.cancel(run)
        if run.owner is None:
            raise Conflict(f"run {run_id} has no live owner to cancel it", run_id=run_id)
        self.control.cancel_remote(run.owner, tenant, run_id, "user")
        return await self.wait_for_end(tenant, run_id, wait_s)

    async def wait_for_end(self, tenant: str, run_id: str, wait_s: float) -> RunRecord:
        """The run's record once it ended, following its events on the bus."""
        run = await self.store.get_run(tenant, run_id)
        if run.status in TERMINAL_STATUSES:
            return run
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for _ in self.follow(run):
                    pass
        return await self.store.get_run(tenant, run_id)

    def follow(self, run: RunRecord, *, after_seq: int = 0,
               idle_s: float | None = None) -> AsyncGenerator[list[Event], None]:
        """A run's events from any instance: persisted after `after_seq`, then live, to its
        end (batches; [] after `idle_s` without an event)."""
        return follow_run(self.bus, run_channel(run.id), self.replay_of(run), after_seq=after_seq,
                          idle_s=idle_s,
                          is_terminal=lambda e: e.type in RUN_END_EVENTS and e.run_id == run.id)

    async def decide_run(self, tenant: str, run_id: str,
                         decisions: list[DecisionRequest]) -> RunHandle:
        """A person's decisions on a waiting run's calls; resumes it here (see
        `approvals.py`). `Conflict` when it is not waiting or another decision won."""
        if self.draining:
            raise AgentUnavailable("the server is shutting down", retry_after=1)
        return await self.approvals.decide(tenant, run_id, decisions)

    async def resume_run(self, tenant: str, run_id: str) -> RunHandle:
        """Continue an interrupted run from its log (see `recovery.py`)."""
        return await self.recovery.resume(tenant, run_id)

    # -- maintenance ------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        interval = self.settings.sessions.sweep_interval_s
        while True:
            await asyncio.sleep(interval)
            await self.sweep()

    async def sweep(self) -> int:
        """Delete expired sessions now; returns how many."""
        try:
            count = await self.store.expire_sessions(now())
        except RoostError as exc:
            log.warning("TTL sweep failed: %s", exc)
            return 0
        if count:
            log.info("expired %d sessions", count)
        retention = self.settings.artifacts.retention_s
        if retention:
            try:
                await self.artifacts.sweep(now() - retention)
            except RoostError as exc:
                log.warning("artifact sweep failed: %s", exc)
        return count

    def fleet_statistics(self) -> dict[str, Any]:
        """This instance in its fleet: who it is, what it owns, what it took over."""
        bus = self.bus.statistics()
        return {
            "instance_id": self.instance_id,
            "store": self.store.backend,
            "shared": self.shared,
            "runs_owned": len(self.runs),
            "sessions_leased": self.leases.held(),
            "runs_taken_over": self.recovery.takeovers,
            "runs_unsettled": self.recovery.unsettled(),
            "approvals": self.approvals.statistics(),
            "lease_renewals": self.leases.renewals,
            "lease_renewal_failures": self.leases.renewal_failures,
            "bus": {"backend": self.bus.backend, "published": bus.published,
                    "dropped": bus.dropped, "delivered": bus.delivered,
                    "reconnects": bus.reconnects},
            "control_commands": self.control.received,
        }

    def statistics(self) -> dict[str, Any]:
        return {
            "draining": self.draining,
            "runs_active": len(self.runs),
            "sessions_busy": len(self.lanes),
            "fleet": self.fleet_statistics(),
            "agents": {name: h.state for name, h in self.agents.items()},
            "admission": self.admission.statistics(),
            "cache": self.cache.statistics(),
            "tools": self.agents.tool_policies.statistics(),
            "background": {**self.background.statistics(), **self.scheduler.statistics()},
        }


def _shared_options(settings: Settings) -> dict[str, Any]:
    """Artifact-store options that follow the session store's (a PostgreSQL schema, a Redis
    prefix), so tests and tenants of one server stay apart."""
    options = settings.store.options
    return {k: options[k] for k in ("schema", "prefix") if k in options}


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
