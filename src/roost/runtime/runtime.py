"""The Runtime: hosts agents, admits turns, drives runs, owns every background task.

    runtime = Runtime(settings, agents=[weather])
    await runtime.start()
    session = await runtime.create_session("default", "weather")
    handle = await runtime.submit_turn("default", session.id, "Weather in Paris?")
    run = await handle.wait()
    await runtime.close()

The order of a turn: decisions that cost nothing come first (agent state, admission,
the session's double-texting policy — all synchronous), then the session is loaded (cache or
store), then the run task waits its turn in the session lane and for an admission slot, takes
the store lease when the store is shared between processes, and runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from roost.agent import Agent, Limits, Policies
from roost.config import Settings
from roost.engine.budget import fit_to_budget
from roost.engine.compaction import (
    CompactionPolicy,
    apply_compaction,
    compact,
    compaction_event,
    context_from_events,
    needs_compaction,
)
from roost.engine.context import events_to_messages
from roost.engine.hooks import NO_HOOKS, EngineHooks
from roost.engine.run import RunContext, Runner
from roost.errors import (
    AgentNotFound,
    ConfigError,
    Conflict,
    InvalidInput,
    RoostError,
    RunNotFound,
    SessionBusy,
    StoreUnavailable,
    Unavailable,
    VersionConflict,
)
from roost.models.base import Message, Model, ToolSpec
from roost.models.registry import ModelRegistry
from roost.runtime.adaptive import AdaptiveConfig, watch_loop
from roost.runtime.admission import AdmissionController, Priority, Slot
from roost.runtime.bus import RunChannel
from roost.runtime.cache import CachedSession, SessionCache
from roost.runtime.lanes import SessionLanes
from roost.runtime.limits import admission_limits
from roost.sessions import open_store
from roost.sessions.artifacts import ArtifactStore, artifact_store_for, open_artifact_store
from roost.sessions.records import TERMINAL_STATUSES, Event, Page, RunRecord, Session, now
from roost.sessions.store import Store
from roost.tools.base import Tool

log = logging.getLogger("roost.runtime")

SHARED_BACKENDS = frozenset({"postgres", "redis"})


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class AgentUnavailable(Unavailable):
    type = "agent_unavailable"


@dataclass(eq=False)
class HostedAgent:
    """An agent as the runtime serves it: resolved model, tool table, lifecycle state."""

    agent: Agent
    model: Model
    tools: dict[str, Tool]
    tool_specs: list[ToolSpec]
    state: str = "created"  # created → running ⇄ paused → stopped
    resumed: asyncio.Event = field(default_factory=asyncio.Event)
    system: Message | None = None
    summariser: Model | None = None  # the compaction model, when compaction is on


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
    # Keeps the session's store lease alive while the run lives (shared stores only).
    lease_renewal: asyncio.Task[None] | None = None

    async def wait(self) -> RunRecord:
        return await asyncio.shield(self.done)

    def cancel(self, reason: str = "user") -> None:
        if self.done.done() or self.task is None:
            return
        self.cancel_reason = reason
        if self.ctx is not None:
            self.ctx.cancel_reason = reason
        self.task.cancel()

    @property
    def events(self) -> list[Event]:
        return self.ctx.events if self.ctx is not None else []


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
        self.cache = SessionCache(max_sessions=self.settings.sessions.cache_max_sessions,
                                  max_bytes=self.settings.sessions.cache_max_bytes)
        self.lanes = SessionLanes()
        self.admission = AdmissionController(admission_limits(self.settings.admission))
        self.instance_id = new_id("roost")
        self.agents: dict[str, HostedAgent] = {}
        self.runs: dict[str, RunHandle] = {}  # queued and running, in this process
        self.draining = False
        self.started = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._shared = False
        self._max_timeout = 120.0
        self._store_down_until = 0.0
        for agent in agents:
            self.add_agent(agent)

    # -- lifecycle ----------------------------------------------------------------------
    def add_agent(self, agent: Agent) -> None:
        if agent.name in self.agents:
            raise ConfigError(f"two agents are named {agent.name!r}", [("agents", agent.name)])
        agent = self._apply_overrides(agent)
        tools = {t.name: t for t in agent.function_tools()}
        specs = [ToolSpec(name=t.name, description=t.description, parameters=t.parameters)
                 for t in tools.values()]
        model = self.models.resolve(agent.model)
        compaction = agent.policies.compaction
        hosted = HostedAgent(agent=agent, model=model, tools=tools, tool_specs=specs,
                             system=Message(role="system", content=agent.instructions)
                             if agent.instructions else None,
                             summariser=(self.models.resolve(compaction.model)
                                         if compaction.model else model) if compaction else None)
        self.agents[agent.name] = hosted
        self._max_timeout = max(h.agent.limits.run_timeout_s for h in self.agents.values())
        if self.started:
            self._set_state(hosted, "running")

    def _apply_overrides(self, agent: Agent) -> Agent:
        override = self.settings.agents.get(agent.name)
        if override is None:
            return agent
        try:
            limits = Limits(**{**_fields(agent.limits), **override.limits})
            policies = Policies(**{**_fields(agent.policies), **override.policies})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"agents.{agent.name}: {exc}", [(f"agents.{agent.name}", str(exc))]) from None
        return Agent(name=agent.name, model=override.model or agent.model,
                     instructions=agent.instructions, tools=agent.tools,
                     description=agent.description, limits=limits, policies=policies,
                     model_settings=agent.model_settings)

    async def start(self) -> None:
        await self.store.open()
        await self.artifacts.open()
        self._shared = self.store.backend in SHARED_BACKENDS
        for hosted in self.agents.values():
            if hosted.state == "created":
                self._set_state(hosted, "running")
        self.started = True
        self._spawn(self._sweep_forever(), name="roost-ttl-sweeper")
        # The event loop's load, sampled: admin stats, and the adaptive admission limit.
        interval = (self.admission.limits.adaptive or AdaptiveConfig()).interval_s
        self._spawn(watch_loop(interval, self.admission.on_load), name="roost-loop-load")
        if self.settings.runtime.auto_resume:
            self._spawn(self._auto_resume(), name="roost-auto-resume")

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
                await asyncio.wait([h.done for h in list(self.runs.values())] or [_done()], timeout=10)

    async def close(self) -> None:
        if not self.draining:
            await self.drain(0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.models.aclose()
        await self.artifacts.close()
        await self.store.close()

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
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
            self._store_failed()
            raise
        self._store_down_until = 0.0

    def _store_failed(self) -> None:
        self._store_down_until = time.monotonic() + self.settings.runtime.store_retry_s

    # -- agents ----------------------------------------------------------------------
    def hosted(self, name: str) -> HostedAgent:
        hosted = self.agents.get(name)
        if hosted is None:
            raise AgentNotFound(f"no agent named {name!r}", agent=name)
        return hosted

    def set_agent_state(self, name: str, action: str) -> HostedAgent:
        hosted = self.hosted(name)
        target = {"pause": "paused", "resume": "running", "stop": "stopped", "start": "running"}[action]
        if hosted.state == "stopped" and target != "stopped":
            raise Conflict(f"agent {name!r} is stopped", agent=name)
        self._set_state(hosted, target)
        return hosted

    def _set_state(self, hosted: HostedAgent, state: str) -> None:
        hosted.state = state
        if state == "running":
            hosted.resumed.set()
        else:
            hosted.resumed.clear()
        log.info("agent %s is %s", hosted.agent.name, state)

    # -- sessions ----------------------------------------------------------------------
    async def create_session(self, tenant: str, agent: str, *, user_id: str | None = None,
                             state: dict[str, Any] | None = None,
                             metadata: dict[str, Any] | None = None) -> Session:
        self.hosted(agent)
        ttl = self.settings.sessions.ttl_s
        created = now()
        session = Session(id=new_id("ses"), tenant=tenant, agent=agent, user_id=user_id,
                          state=state or {}, metadata=metadata or {}, created_at=created,
                          updated_at=created, expires_at=created + ttl if ttl else None)
        session = await self.store.create_session(session)
        self.cache.put(session, [])
        return session

    async def get_session(self, tenant: str, session_id: str) -> Session:
        return await self.store.get_session(tenant, session_id)

    async def list_sessions(self, tenant: str, **filters: Any) -> Page:
        return await self.store.list_sessions(tenant, **filters)

    async def patch_session(self, tenant: str, session_id: str, delta: dict[str, Any],
                            expected_version: int | None = None) -> Session:
        fresh = await self.store.patch_state(tenant, session_id, delta, expected_version)
        entry = self.cache.get(tenant, session_id)
        if entry is not None:  # the active run holds this object: keep its version current
            entry.session.version = fresh.version
            entry.session.state = fresh.state
            entry.session.updated_at = fresh.updated_at
        return fresh

    async def delete_session(self, tenant: str, session_id: str) -> None:
        active = self.lanes.active((tenant, session_id))
        if active is not None:
            active.cancel("user")
        if not await self.store.delete_session(tenant, session_id):
            from roost.errors import SessionNotFound

            raise SessionNotFound(f"no session {session_id!r}", session_id=session_id)
        self.cache.discard(tenant, session_id)

    async def _cached(self, tenant: str, session_id: str) -> CachedSession:
        entry = self.cache.get(tenant, session_id)
        if entry is not None:
            return entry
        session = await self.store.get_session(tenant, session_id)
        return self.cache.put(session, await self._history(session))

    async def _history(self, session: Session) -> list[Message]:
        hosted = self.agents.get(session.agent)
        limit = hosted.agent.policies.history_messages if hosted else 40
        if not session.last_seq:
            return []
        # Each message is one event among a few bookkeeping ones: read a margin more.
        events = await self.store.tail_events(session.tenant, session.id, max(limit * 3, 200))
        policies = hosted.agent.policies if hosted else Policies()
        return fit_to_budget(close_dangling_calls(context_from_events(events)),
                             policies.history_token_budget, max_messages=limit)

    # -- turns ----------------------------------------------------------------------------
    async def submit_turn(self, tenant: str, session_id: str, text: str, *, stream: bool = False,
                          timeout_s: float | None = None,
                          priority: Priority = "interactive") -> RunHandle:
        """Admit a turn and start it. Raises at once (before any store work where possible)
        when it cannot be taken: draining, agent paused/stopped, overload, session busy."""
        if self.draining:
            raise AgentUnavailable("the server is shutting down", retry_after=1)
        if self._store_down_until > time.monotonic():
            # The store failed moments ago: fail fast instead of making every turn wait out
            # the store's timeouts. `ready()` (readiness probes) keeps probing it.
            raise StoreUnavailable("the session store is unreachable; retry shortly",
                                   retry_after=self.settings.runtime.store_retry_s)
        # Admission first: the overload decision costs microseconds and no store work.
        slot = self.admission.reserve(tenant, priority=priority,
                                      deadline=time.monotonic() + (timeout_s or self._max_timeout))
        try:
            try:
                entry = await self._cached(tenant, session_id)
            except StoreUnavailable:
                self._store_failed()
                raise
            hosted = self.hosted(entry.session.agent)
            limits = hosted.agent.limits
            if not text or not text.strip():
                raise InvalidInput("input must not be empty", field="input")
            if len(text) > limits.max_input_chars:
                raise InvalidInput(f"input is longer than {limits.max_input_chars} characters",
                                   field="input")
            self._check_agent_state(hosted)
        except BaseException:
            slot.release()
            raise
        timeout = min(timeout_s, limits.run_timeout_s) if timeout_s else limits.run_timeout_s
        loop = asyncio.get_running_loop()
        run = RunRecord(id=new_id("run"), session_id=session_id, tenant=tenant,
                        agent=hosted.agent.name, model=hosted.model.name, status="queued",
                        input=text, deadline=now() + timeout)
        handle = RunHandle(run=run, channel=RunChannel(self.settings.runtime.run_channel_buffer),
                           stream=stream, done=loop.create_future())
        try:
            lane_wait = self.lanes.enter((tenant, entry.session.id), handle,
                                         policy=hosted.agent.policies.double_texting,
                                         max_pending=hosted.agent.policies.max_pending_turns,
                                         cancel=lambda h: h.cancel("interrupt"))
        except BaseException:
            slot.release()
            raise
        self.runs[run.id] = handle
        handle.task = self._spawn(
            self._drive(handle, hosted, entry, slot, lane_wait, loop.time() + timeout),
            name=f"run-{run.id}")
        return handle

    def _check_agent_state(self, hosted: HostedAgent) -> None:
        if hosted.state == "stopped":
            raise AgentUnavailable(f"agent {hosted.agent.name!r} is stopped", retry_after=30)
        if hosted.state == "paused" and hosted.agent.policies.when_paused == "reject":
            raise AgentUnavailable(f"agent {hosted.agent.name!r} is paused", retry_after=5)

    async def _drive(self, handle: RunHandle, hosted: HostedAgent, entry: CachedSession,
                     slot: Slot, lane_wait: asyncio.Future[None] | None, deadline: float) -> None:
        """The root of one run's task: wait for the lane, the agent, a slot and the lease,
        then run. Swallows cancellation: this task has no awaiting parent."""
        key = (handle.run.tenant, handle.run.session_id)
        run = handle.run
        leased = False
        try:
            async with asyncio.timeout_at(deadline):
                if lane_wait is not None:
                    await lane_wait
                if hosted.state != "running":
                    await hosted.resumed.wait()
            # The slot enforces the same deadline itself (RunTimeout), counted as expired.
            await slot.acquire()
            if self._shared:
                # No read of the session here: if another instance moved it on, the run's
                # first append says so and the run catches up then (RunContext.reload).
                async with asyncio.timeout_at(deadline):
                    leased = await self._take_lease(run, hosted)
            await self._execute(handle, hosted, entry, deadline)
            policy = hosted.agent.policies.compaction
            if (run.status == "completed" and policy is not None
                    and needs_compaction(handle.conversation, policy)):
                # Answer the client first; the session stays ours (lane, lease) until the
                # summary is recorded, so the next turn sees it.
                handle.channel.close()
                handle.done.set_result(run)
                await self._compact(handle, hosted, entry, policy)
        except (TimeoutError, RoostError) as exc:
            # Never started: the deadline passed while waiting, the slot timed out in the
            # queue, or the lease stayed taken.
            status = "timed_out" if isinstance(exc, TimeoutError) or exc.type == "timed_out" else "failed"
            await self._record_unstarted(handle, status, exc)
        except asyncio.CancelledError:
            if not handle.started:
                await self._record_unstarted(handle, "cancelled", None)
        except Exception as exc:  # pragma: no cover - a bug; keep serving
            log.exception("run %s crashed in the runtime", run.id)
            await self._record_unstarted(handle, "failed", exc)
        finally:
            if handle.lease_renewal is not None:
                handle.lease_renewal.cancel()
            if leased:
                with contextlib.suppress(RoostError):
                    await self.store.release_lease(run.tenant, run.session_id, self.instance_id)
            self.lanes.leave(key, handle)
            slot.release()
            handle.channel.close()
            self.runs.pop(run.id, None)
            if not handle.done.done():
                handle.done.set_result(run)

    async def _execute(self, handle: RunHandle, hosted: HostedAgent, entry: CachedSession,
                       deadline: float, *, resume_messages: list[Message] | None = None) -> None:
        agent = hosted.agent
        messages: list[Message] = [hosted.system] if hosted.system else []
        messages.extend(resume_messages if resume_messages is not None else entry.history)
        ctx = RunContext(agent=agent, model=hosted.model, tools=hosted.tools,
                         tool_specs=hosted.tool_specs, store=self.store, session=entry.session,
                         run=handle.run, messages=messages, deadline=deadline,
                         emit=handle.channel.publish, stream=handle.stream, hooks=self.hooks,
                         resume=resume_messages is not None, cancel_reason=handle.cancel_reason,
                         artifacts=self.artifacts,
                         reload=(lambda: self._reload(hosted, entry)) if self._shared else None)
        handle.ctx = ctx
        handle.started = True
        try:
            await Runner(ctx).run()
            if (handle.run.error or {}).get("type") == "store_unavailable":
                self._store_failed()
        finally:
            conversation = ctx.messages[1:] if hosted.system else ctx.messages
            if handle.run.status != "completed":
                conversation = close_dangling_calls(conversation)
            handle.conversation = conversation
            entry.history = fit_to_budget(conversation, agent.policies.history_token_budget,
                                          max_messages=agent.policies.history_messages)
            self.cache.resize(entry)

    async def _compact(self, handle: RunHandle, hosted: HostedAgent, entry: CachedSession,
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
            event = compaction_event(compaction, run.id)
            session = entry.session
            for _ in range(3):
                try:
                    session.version = await self.store.append(run.tenant, session.id, [event],
                                                              session.version)
                    break
                except VersionConflict:
                    fresh = await self.store.get_session(run.tenant, session.id)
                    if fresh.last_seq != session.last_seq:
                        return  # someone else moved the log on; skip this compaction
                    session.version = fresh.version
            else:
                return
            session.last_seq = event.seq
            agent = hosted.agent
            entry.history = fit_to_budget(apply_compaction(handle.conversation, compaction),
                                          agent.policies.history_token_budget,
                                          max_messages=agent.policies.history_messages)
            self.cache.resize(entry)
            log.info("compacted session %s: %d messages summarised", session.id,
                     compaction.replaced)
        except RoostError as exc:
            log.warning("compaction of session %s failed: %s", run.session_id, exc)

    async def _record_unstarted(self, handle: RunHandle, status: str, exc: BaseException | None) -> None:
        run = handle.run
        run.status = status
        if exc is not None:
            run.error = {"type": getattr(exc, "type", "timed_out"), "message": str(exc) or status}
        else:  # the same shape as a run cancelled while running
            run.error = {"type": status, "reason": handle.cancel_reason or "user"}
        run.updated_at = now()
        handle.channel.publish(Event(type="run.failed" if status != "cancelled" else "run.cancelled",
                                     run_id=run.id, data={"error": run.error or {"type": status}}))
        with contextlib.suppress(RoostError):
            await self.store.put_run(run)

    async def _take_lease(self, run: RunRecord, hosted: HostedAgent) -> bool:
        """Hold the session across processes. `reject` tries once; others wait their turn."""
        ttl = self.settings.runtime.lease_ttl_s
        delay = 0.01
        while not await self.store.acquire_lease(run.tenant, run.session_id, self.instance_id, ttl):
            if hosted.agent.policies.double_texting == "reject":
                raise SessionBusy("the session has an active run on another instance")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
        handle = self.runs.get(run.id)
        if handle is not None:
            handle.lease_renewal = self._spawn(self._renew_lease(run, ttl), name=f"lease-{run.id}")
        return True

    async def _renew_lease(self, run: RunRecord, ttl: float) -> None:
        handle = self.runs.get(run.id)
        while handle is not None and not handle.done.done():
            await asyncio.sleep(ttl / 3)
            if handle.done.done():
                return
            with contextlib.suppress(RoostError):
                await self.store.acquire_lease(run.tenant, run.session_id, self.instance_id, ttl)

    async def _reload(self, hosted: HostedAgent, entry: CachedSession) -> list[Message]:
        """Catch up with a session another instance moved on; the context to run with."""
        fresh = await self.store.get_session(entry.session.tenant, entry.session.id)
        # In place: the run holds this object and appends with its version.
        entry.session.version = fresh.version
        entry.session.last_seq = fresh.last_seq
        entry.session.state = fresh.state
        entry.history = await self._history(fresh)
        return [hosted.system, *entry.history] if hosted.system else list(entry.history)

    # -- runs -----------------------------------------------------------------------------
    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        handle = self.runs.get(run_id)
        if handle is not None and handle.run.tenant == tenant:
            return handle.run
        return await self.store.get_run(tenant, run_id)

    async def cancel_run(self, tenant: str, run_id: str) -> RunRecord:
        handle = self.runs.get(run_id)
        if handle is None or handle.run.tenant != tenant:
            run = await self.store.get_run(tenant, run_id)
            if run.status in TERMINAL_STATUSES:
                return run
            raise Conflict(f"run {run_id} is not active on this instance", run_id=run_id)
        handle.cancel("user")
        return await handle.wait()

    async def resume_run(self, tenant: str, run_id: str) -> RunHandle:
        """Continue an interrupted run from its log: missing tool results first, else the
        model. Completed tool calls are not repeated."""
        if run_id in self.runs:
            raise Conflict(f"run {run_id} is already active", run_id=run_id)
        run = await self.store.get_run(tenant, run_id)
        if run.status not in ("interrupted", "running", "queued"):
            raise Conflict(f"run {run_id} is {run.status}; only interrupted runs resume",
                           run_id=run_id)
        session = await self.store.get_session(tenant, run.session_id)
        hosted = self.hosted(session.agent)
        events = await self.store.tail_events(tenant, session.id, 10_000)
        if not any(e.run_id == run_id and e.type == "run.started" for e in events):
            raise RunNotFound(f"run {run_id} has no log to resume from", run_id=run_id)
        entry = self.cache.get(tenant, session.id) or self.cache.put(session, [])
        entry.session = session
        messages = resume_messages(events, run_id)
        loop = asyncio.get_running_loop()
        timeout = hosted.agent.limits.run_timeout_s
        run.attempt += 1
        run.status = "running"
        run.error = None
        run.deadline = now() + timeout
        slot = self.admission.reserve(tenant, deadline=time.monotonic() + timeout)
        handle = RunHandle(run=run, channel=RunChannel(self.settings.runtime.run_channel_buffer),
                           stream=False, done=loop.create_future())
        try:
            lane_wait = self.lanes.enter((tenant, session.id), handle, policy="reject",
                                         max_pending=0, cancel=lambda h: None)
        except BaseException:
            slot.release()
            raise
        self.runs[run.id] = handle
        handle.task = self._spawn(self._drive_resume(handle, hosted, entry, slot, lane_wait,
                                                     messages, loop.time() + timeout),
                                  name=f"resume-{run.id}")
        return handle

    async def _drive_resume(self, handle: RunHandle, hosted: HostedAgent, entry: CachedSession,
                            slot: Slot, lane_wait: asyncio.Future[None] | None,
                            messages: list[Message], deadline: float) -> None:
        key = (handle.run.tenant, handle.run.session_id)
        try:
            await slot.acquire()
            await self._execute(handle, hosted, entry, deadline,
                                resume_messages=fit_to_budget(
                                    messages, hosted.agent.policies.history_token_budget,
                                    min_turns=1))
        except asyncio.CancelledError:
            pass
        except RoostError as exc:
            await self._record_unstarted(handle, "failed", exc)
        finally:
            self.lanes.leave(key, handle)
            slot.release()
            handle.channel.close()
            self.runs.pop(handle.run.id, None)
            if not handle.done.done():
                handle.done.set_result(handle.run)

    async def _auto_resume(self) -> None:
        tenants = {"default", *self.settings.admission.tenants}
        for tenant in tenants:
            try:
                runs = await self.store.list_runs(tenant, status="interrupted", limit=1000)
            except RoostError as exc:
                log.warning("auto-resume: cannot list runs of %s: %s", tenant, exc)
                continue
            for run in runs:
                try:
                    await self.resume_run(tenant, run.id)
                    log.info("auto-resumed run %s", run.id)
                except RoostError as exc:
                    log.warning("auto-resume of %s failed: %s", run.id, exc)

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

    def statistics(self) -> dict[str, Any]:
        cache = self.cache.statistics()
        return {
            "draining": self.draining,
            "runs_active": len(self.runs),
            "sessions_busy": len(self.lanes),
            "agents": {name: h.state for name, h in self.agents.items()},
            "admission": self.admission.statistics(),
            "cache": cache,
        }


def close_dangling_calls(messages: list[Message]) -> list[Message]:
    """Give every unanswered tool call a synthetic error result, so the next model call
    sees a well-formed conversation after a cancelled or failed run."""
    out: list[Message] = []
    open_calls: list[Any] = []

    def close() -> None:
        out.extend(Message(role="tool", content="Error: not run (the run ended first)",
                           tool_call_id=c.id, name=c.name) for c in open_calls)
        open_calls.clear()

    for message in messages:
        if message.role != "tool" and open_calls:
            close()
        out.append(message)
        if message.role == "assistant" and message.tool_calls:
            open_calls.extend(message.tool_calls)
        elif message.role == "tool":
            open_calls[:] = [c for c in open_calls if c.id != message.tool_call_id]
    close()  # calls left open at the very end (a cancelled run's last step)
    return out


def resume_messages(events: list[Event], run_id: str) -> list[Message]:
    """Repair earlier runs' conversation but leave the resumed run's open calls open: those
    are exactly what the resume must execute."""
    first = next((i for i, e in enumerate(events) if e.run_id == run_id), len(events))
    before = context_from_events(events[:first])
    after = events_to_messages(events[first:])
    return close_dangling_calls(before) + after


def _shared_options(settings: Settings) -> dict[str, Any]:
    """Artifact-store options that follow the session store's (a PostgreSQL schema, a Redis
    prefix), so tests and tenants of one server stay apart."""
    options = settings.store.options
    return {k: options[k] for k in ("schema", "prefix") if k in options}


def _fields(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__slots__}


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future
