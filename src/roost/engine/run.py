"""One run: model call → tool calls → model call … → final answer.

Every completed step is appended to the session log (compare-and-set on the session version)
before the next step starts, so a run can resume from the log alone. The run honours its
deadline (carried to every model and tool call) and cancellation (propagated to the model
stream and tool tasks). An exception never escapes `Runner.run()`: it becomes the run's
terminal status and a `run.failed` / `run.cancelled` event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from roost.agent import Agent
from roost.engine.approval import ApprovalGate
from roost.engine.budget import fit_to_budget
from roost.engine.compaction import (
    CompactionPolicy,
    apply_compaction,
    compact,
    compaction_event,
    is_summary,
    needs_compaction,
    step_tail_start,
)
from roost.engine.context import message_event_data, pending_tool_calls
from roost.engine.hooks import NO_HOOKS, EngineHooks
from roost.engine.run_budget import RunBudget
from roost.errors import (
    BudgetExceeded,
    MaxStepsExceeded,
    ModelError,
    OutputRejected,
    RoostError,
    RunFailure,
    RunWaiting,
    SessionMoved,
    SessionNotFound,
)
from roost.guardrails.base import Decision, GuardrailContext
from roost.guardrails.pipeline import Guardrails, Rejected
from roost.models.base import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from roost.sessions.artifacts import ArtifactStore, offload_if_large
from roost.sessions.records import Event, RunRecord, now
from roost.tools.base import Tool, ToolArgumentsError, ToolContext

Emit = Callable[[Event], None]

# Why a run was cancelled decides its terminal status: a shutdown leaves it resumable.
CANCEL_STATUS = {"shutdown": "interrupted", "interrupt": "cancelled", "user": "cancelled",
                 "disconnect": "cancelled"}


class SessionPort(Protocol):
    """What a run needs of its session: the runtime's `LiveSession` implements it."""

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> dict[str, Any]: ...

    async def append(self, events: list[Event], *, run: RunRecord | None = None) -> None:
        """Append with compare-and-set, assigning seqs; `SessionMoved` when another writer
        appended first (nothing written)."""

    async def reload(self) -> None:
        """Catch up with a session another writer moved on."""

    def context(self, system: Message | None) -> list[Message]:
        """The messages a new run starts from."""

    async def record_run(self, run: RunRecord, *, owner: str | None) -> None:
        """Write the run record alone (when its log cannot take the terminal event), unless
        the stored one ended already or belongs to another owner than `owner`."""


@dataclass(slots=True)
class RunContext:
    """Everything one run needs, assembled by the runtime."""

    agent: Agent
    model: Model
    tools: dict[str, Tool]
    tool_specs: list[ToolSpec]
    session: SessionPort
    run: RunRecord
    messages: list[Message]  # system + history (+ this run's steps when resuming)
    deadline: float  # event loop clock
    emit: Emit
    stream: bool = False
    hooks: EngineHooks = NO_HOOKS
    resume: bool = False
    cancel_reason: str | None = None
    # Persisted events of this run, in order (the non-streaming response returns them).
    events: list[Event] = field(default_factory=list)
    # Where tool results over the agent's size limit go (None: they are truncated).
    artifacts: ArtifactStore | None = None
    # True when the run ended in a store outage and its terminal event could not be written:
    # the record may not match the log until the runtime settles it.
    unsettled: bool = False
    # The agent's guardrails (None: none, nothing to pay) and what its input ones decided.
    guardrails: Guardrails | None = None
    input_decisions: list[Decision] = field(default_factory=list)
    # Human in the loop: which calls wait for a person, and the decisions so far (None: no
    # call of this agent ever waits, and approvals cost nothing).
    gate: ApprovalGate | None = None
    # What the run may spend (None: unlimited), and the tool calls it made so far.
    budget: RunBudget | None = None
    tool_calls: int = 0
    # Compaction within the run (a long run's context summarised as it grows), when the
    # agent's policy has one; None: the context is only windowed.
    compaction: CompactionPolicy | None = None
    summariser: Model | None = None


class Runner:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._append_lock = asyncio.Lock()
        self._owner = ctx.run.owner  # the instance running it (cleared when the run ends)
        self._metadata = {"run_id": ctx.run.id, "tenant": ctx.run.tenant,
                          "agent": ctx.agent.name, "session_id": ctx.session.id}
        guardrails = ctx.guardrails
        # With output guardrails a final answer must be checked before anyone sees it, and
        # a model step is known to be final only once it ended: whole messages, no deltas.
        self._hold_deltas = guardrails is not None and bool(guardrails.output)
        self._guard_tools = guardrails is not None and bool(guardrails.tool_result)
        # Compaction within the run: the log seq of each assistant message of this attempt
        # (by identity), where a summary's verbatim tail may start.
        self._seqs: dict[int, tuple[Message, int]] = {}
        self._compaction_failed = False

    async def run(self) -> RunRecord:
        """Execute to a terminal status. Re-raises CancelledError after recording it."""
        ctx, run = self.ctx, self.ctx.run
        token = ctx.hooks.run_start(run, model=ctx.model.name)
        budget_deadline = self._budget_deadline()
        try:
            try:
                async with asyncio.timeout_at(ctx.deadline):
                    if not ctx.resume:
                        await self._start()
                    await self._steps()
            except TimeoutError:
                if budget_deadline and ctx.budget is not None:
                    await self._finish("budget_exceeded", "run.failed", _error(
                        ctx.budget.duration_exceeded(now() - run.created_at)))
                else:
                    await self._finish("timed_out", "run.failed", {
                        "type": "timed_out", "message": "the run passed its deadline"})
            except RunWaiting as waiting:
                await self._wait(waiting.pending)
            except asyncio.CancelledError:
                reason = ctx.cancel_reason or "user"
                status = CANCEL_STATUS.get(reason, "cancelled")
                event = "run.interrupted" if status == "interrupted" else "run.cancelled"
                await asyncio.shield(self._finish(status, event, {"type": status, "reason": reason}))
                raise
            except BudgetExceeded as exc:
                await self._finish("budget_exceeded", "run.failed", _error(exc))
            except RunFailure as exc:
                await self._finish("failed", "run.failed", _error(exc))
            except RoostError as exc:
                await self._finish("failed", "run.failed", _error(exc))
            except Exception as exc:  # an engine bug must not take the server down
                await self._finish("failed", "run.failed",
                                   {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"})
        finally:
            ctx.hooks.run_end(token, run)
        return run

    def _budget_deadline(self) -> bool:
        """Bring the deadline forward to the run's duration budget; True when the budget
        is now the deadline (its passing is `budget_exceeded`, not `timed_out`)."""
        ctx = self.ctx
        if ctx.budget is None or ctx.budget.max_duration_s is None:
            return False
        left = ctx.run.created_at + ctx.budget.max_duration_s - now()
        deadline = asyncio.get_running_loop().time() + left
        if deadline >= ctx.deadline:
            return False
        ctx.deadline = deadline
        return True

    # -- steps --------------------------------------------------------------------------
    async def _start(self) -> None:
        ctx = self.ctx
        ctx.run.status = "running"
        user = Message(role="user", content=ctx.run.input)
        ctx.messages.append(user)

        started: dict[str, Any] = {"input": ctx.run.input, "agent": ctx.agent.name,
                                   "attempt": ctx.run.attempt}
        if ctx.input_decisions:
            started["guardrails"] = [d.data() for d in ctx.input_decisions]
        if ctx.budget is not None:  # the log carries it to wherever the run resumes
            started["budget"] = ctx.budget.to_data()
        if ctx.run.parent_run_id is not None:
            started["parent_run_id"] = ctx.run.parent_run_id

        def first_step() -> list[Event]:
            return [Event(type="run.started", run_id=ctx.run.id, data=dict(started)),
                    Event(type="message", run_id=ctx.run.id, data=message_event_data(user))]

        try:
            await self._append(first_step(), with_run=True)
        except SessionMoved:
            # Nothing of this run is written yet, and the caller holds the session (a store
            # lease): the log moved because another instance ran the previous turn. Catch up
            # on it and start again, instead of reading the session before every turn.
            await ctx.session.reload()
            system = ctx.messages[0] if ctx.agent.instructions and ctx.messages else None
            ctx.messages[:] = [*ctx.session.context(system), user]
            await self._append(first_step(), with_run=True)

    async def _steps(self) -> None:
        ctx = self.ctx
        steps_taken = sum(1 for m in ctx.messages if m.role == "assistant") if ctx.resume else 0
        pending = pending_tool_calls(ctx.messages) if ctx.resume else []
        if pending:
            await self._run_step_tools(pending)
        while True:
            if steps_taken >= ctx.agent.limits.max_steps:
                raise MaxStepsExceeded(f"no final answer within {ctx.agent.limits.max_steps} steps")
            if ctx.budget is not None:
                ctx.budget.check_usage(ctx.run.usage)
            response = await self._call_model()
            steps_taken += 1
            message = response.message
            if message.role != "assistant":
                message = Message(role="assistant", content=message.content, tool_calls=message.tool_calls)
            decisions: list[Decision] = []
            if not message.tool_calls and self._hold_deltas:
                # Before the answer joins the conversation: a rejected one is never seen,
                # stored or remembered by the session's cached history.
                message, decisions = await self._guard_output(message)
            ctx.messages.append(message)
            data = message_event_data(message)
            data["model"] = response.model or ctx.model.name
            data["usage"] = {"input_tokens": response.usage.input_tokens,
                             "output_tokens": response.usage.output_tokens}
            if decisions:
                data["guardrails"] = [d.data() for d in decisions]
            step = [Event(type="message", run_id=ctx.run.id, data=data)]
            if not message.tool_calls:
                ctx.run.output = message.content or ""
                ctx.run.status = "completed"
                ctx.run.disown()
                step.append(Event(type="run.completed", run_id=ctx.run.id,
                                  data={"output": ctx.run.output, "usage": ctx.run.usage_data()}))
                await self._append(step, with_run=True)
                return
            step.extend(Event(type="tool.call", run_id=ctx.run.id,
                              data={"id": c.id, "name": c.name, "arguments": c.arguments})
                        for c in message.tool_calls)
            await self._append(step)
            if ctx.compaction is not None:
                self._seqs[id(message)] = (message, step[0].seq)
            await self._run_step_tools(message.tool_calls)
            if ctx.compaction is not None:
                await self._compact_within()

    async def _compact_within(self) -> None:
        """Summarise the run's older steps when its context passed the policy's trigger;
        the summary is a `compaction` event (a resume starts from it). Best effort: a
        summariser failure leaves the context windowed, and this attempt stops trying."""
        ctx = self.ctx
        policy = ctx.compaction
        if policy is None or ctx.summariser is None or self._compaction_failed \
                or not needs_compaction(ctx.messages, policy):
            return
        start, first = step_tail_start(ctx.messages, policy)
        known = self._seqs.get(id(first)) if first is not None else None
        if known is None or known[0] is not first:
            return  # the tail starts before this attempt (resumed): later steps will do
        seqs = [0] * len(ctx.messages)
        seqs[start] = known[1]
        loop = asyncio.get_running_loop()
        try:
            compaction = await compact(ctx.messages, policy, ctx.summariser,
                                       deadline=min(ctx.deadline, loop.time() + policy.timeout_s),
                                       seqs=seqs, metadata=dict(self._metadata),
                                       within_run=True)
        except ModelError:
            self._compaction_failed = True
            return
        if compaction is None:
            return
        ctx.run.usage.add(compaction.usage)
        await self._append([compaction_event(compaction, ctx.run.id)])
        # The run's own request stays verbatim after the summary: a turn starts with it
        # (the window keeps whole turns), and the model keeps the task in its own words.
        compacted = apply_compaction(ctx.messages, compaction)
        at = next(i for i, m in enumerate(compacted) if is_summary(m)) + 1
        compacted.insert(at, Message(role="user", content=ctx.run.input))
        ctx.messages[:] = compacted
        self._seqs = {k: v for k, v in self._seqs.items()
                      if any(v[0] is m for m in ctx.messages)}

    async def _run_step_tools(self, calls: list[ToolCall]) -> None:
        """A step's tool calls, within the budget; the calls a person must see first wait
        (the others run, then the run waits: `RunWaiting`)."""
        ctx = self.ctx
        if ctx.budget is not None:
            ctx.budget.check_usage(ctx.run.usage)
            ctx.budget.check_tool_calls(ctx.tool_calls, len(calls))
        held = ctx.gate.pending(calls) if ctx.gate is not None else None
        if held:
            waiting = {h["call_id"] for h in held}
            free = [c for c in calls if c.id not in waiting]
            if free:
                await self._run_tools(free)
            raise RunWaiting(held)
        await self._run_tools(calls)

    async def _call_model(self) -> ModelResponse:
        ctx = self.ctx
        policies = ctx.agent.policies
        # The whole conversation stays in ctx.messages (it is the checkpoint); the model
        # sees what fits the agent's token budget, never less than the current turn.
        messages = fit_to_budget(ctx.messages, policies.history_token_budget, min_turns=1)
        request = ModelRequest(messages=messages, tools=ctx.tool_specs,
                               settings=ctx.agent.model_settings, deadline=ctx.deadline,
                               stream=ctx.stream, metadata=dict(self._metadata))
        token = ctx.hooks.model_start(ctx.run, ctx.model.name, request)
        response: ModelResponse | None = None
        first = True
        try:
            # aclosing: a run stopped mid-stream frees the provider's connection at once.
            async with contextlib.aclosing(ctx.model.stream(request)) as stream:
                async for item in stream:
                    if isinstance(item, TextDelta):
                        if first:
                            ctx.hooks.model_first_token(token)
                            first = False
                        if not self._hold_deltas:
                            ctx.emit(Event(type="message.delta", run_id=ctx.run.id,
                                           data={"text": item.text}))
                    else:
                        response = item
            if response is None:
                raise ModelError(f"{ctx.model.name}: the stream ended without a response",
                                 kind="malformed")
        except BaseException as exc:
            ctx.hooks.model_end(token, None, exc)
            raise
        ctx.hooks.model_end(token, response, None)
        ctx.run.usage.add(response.usage)
        return response

    async def _guard_output(self, message: Message) -> tuple[Message, list[Decision]]:
        """The final answer after the output guardrails; `OutputRejected` ends the run
        `failed` without it."""
        ctx = self.ctx
        assert ctx.guardrails is not None
        gctx = GuardrailContext("output", ctx.agent.name, ctx.run.tenant, ctx.session.id)
        try:
            text, decisions = await ctx.guardrails.apply("output", message.content or "", gctx)
        except Rejected as exc:
            ctx.hooks.guardrail(ctx.agent.name, exc.guardrail, "output", "reject")
            raise OutputRejected(exc.guardrail, exc.reason) from None
        for d in decisions:
            ctx.hooks.guardrail(ctx.agent.name, d.guardrail, "output", d.action)
        if text != (message.content or ""):
            message = Message(role="assistant", content=text)
        return message, decisions

    async def _guard_tool_result(self, tool: str, content: str
                                 ) -> tuple[str, str | None, dict[str, Any] | None]:
        """A tool result after the tool_result guardrails: (content, outcome override,
        the decision for the event). A rejected result is withheld from the model."""
        ctx = self.ctx
        assert ctx.guardrails is not None
        untrusted = bool(getattr(ctx.tools.get(tool), "untrusted", False))
        gctx = GuardrailContext("tool_result", ctx.agent.name, ctx.run.tenant, ctx.session.id,
                                tool=tool, untrusted=untrusted)
        try:
            content, decisions = await ctx.guardrails.apply("tool_result", content, gctx)
        except Rejected as exc:
            ctx.hooks.guardrail(ctx.agent.name, exc.guardrail, "tool_result", "reject")
            withheld = (f"Error: the result of {tool} was withheld by guardrail "
                        f"{exc.guardrail}: {exc.reason}")
            return withheld, "rejected", {"guardrail": exc.guardrail, "stage": "tool_result",
                                          "action": "reject", "reason": exc.reason}
        for d in decisions:
            ctx.hooks.guardrail(ctx.agent.name, d.guardrail, "tool_result", d.action)
        return content, None, decisions[-1].data() if decisions else None

    async def _run_tools(self, calls: list[ToolCall]) -> None:
        """Run a step's tool calls in parallel under the agent's bound; each result is
        persisted as it completes. A failing tool is a result, never a crash."""
        limit = asyncio.Semaphore(self.ctx.agent.limits.max_tool_concurrency)

        async def one(call: ToolCall) -> None:
            async with limit:
                content, outcome, duration, kept = await self._call_tool(call)
            self.ctx.tool_calls += 1
            guarded = None
            if self._guard_tools and outcome == "ok":
                content, rejected, guarded = await self._guard_tool_result(call.name, content)
                outcome = rejected or outcome
            policies = self.ctx.agent.policies
            content, artifact = await offload_if_large(
                content, limit_bytes=policies.max_tool_result_bytes, store=self.ctx.artifacts,
                tenant=self.ctx.run.tenant, preview_chars=policies.tool_result_preview_chars)
            data: dict[str, Any] = {
                "call_id": call.id, "name": call.name, "content": content,
                "is_error": outcome != "ok", "outcome": outcome,
                "duration_ms": round(duration * 1000, 3)}
            if artifact is not None:
                data["artifact"] = artifact
            if kept:  # what the tool itself stored (an MCP server's images, say)
                data["artifacts"] = kept
            if guarded is not None:
                data["guardrail"] = guarded
            result = Message(role="tool", content=content, tool_call_id=call.id, name=call.name)
            async with self._append_lock:
                self.ctx.messages.append(result)
                await self._append([Event(type="tool.result", run_id=self.ctx.run.id,
                                          data=data)])

        if len(calls) == 1:
            await one(calls[0])
            return
        try:
            async with asyncio.TaskGroup() as group:
                for call in calls:
                    group.create_task(one(call))
        except* RoostError as group:
            # One typed failure (a store outage while recording results) is the run's
            # failure; an ExceptionGroup would hide its type from the caller.
            raise group.exceptions[0] from None

    async def _call_tool(self, call: ToolCall) -> tuple[str, str, float, list[dict[str, Any]]]:
        ctx = self.ctx
        tool = ctx.tools.get(call.name)
        started = time.perf_counter()
        if tool is None:
            return f"Error: unknown tool {call.name!r}", "error", 0.0, []
        if ctx.gate is not None and (decision := ctx.gate.decisions.get(call.id)) is not None:
            decided = decision.result()
            if decided is not None:  # rejected (the reason) or answered: nothing runs
                return decided[0], decided[1], 0.0, []
            if decision.arguments is not None:  # approved with the person's arguments
                call = ToolCall(id=call.id, name=call.name, arguments=decision.arguments)
        loop = asyncio.get_running_loop()
        timeout = tool.timeout_s or ctx.agent.limits.tool_timeout_s
        tool_deadline = min(ctx.deadline, loop.time() + timeout)
        token = ctx.hooks.tool_start(ctx.run, call.name, call.id)
        context = ToolContext(run_id=ctx.run.id, session_id=ctx.session.id, tenant=ctx.run.tenant,
                              agent=ctx.agent.name, call_id=call.id, deadline=tool_deadline,
                              state=ctx.session.state, artifacts=ctx.artifacts,
                              tool_threads=ctx.agent.limits.tool_threads)
        outcome = "ok"
        error: BaseException | None = None
        try:
            # The run's own deadline is the outer timeout: if it fires first, the run ends
            # timed_out (CancelledError passes through this inner timeout untouched).
            async with asyncio.timeout_at(tool_deadline):
                content = await tool.call(call.arguments, context)
        except ToolArgumentsError as exc:
            outcome, error, content = "invalid_arguments", exc, f"Error: {exc}"
        except TimeoutError as exc:
            if loop.time() >= ctx.deadline:
                ctx.hooks.tool_end(token, "timeout", exc)
                raise
            outcome, error, content = "timeout", exc, f"Error: {call.name} timed out after {timeout:g} s"
        except asyncio.CancelledError as exc:
            ctx.hooks.tool_end(token, "cancelled", exc)
            raise
        except Exception as exc:
            outcome, error, content = "error", exc, f"Error: {type(exc).__name__}: {exc}"
        ctx.hooks.tool_end(token, outcome, error)
        return content, outcome, time.perf_counter() - started, context.kept

    # -- persistence ----------------------------------------------------------------------
    async def _append(self, events: list[Event], *, with_run: bool = False) -> None:
        """Persist one step through the session (compare-and-set there), then publish it."""
        ctx = self.ctx
        await ctx.session.append(events, run=ctx.run if with_run else None)
        for event in events:
            ctx.events.append(event)
            ctx.emit(event)

    async def _wait(self, pending: list[dict[str, Any]]) -> None:
        """Pause for a person: `approval.required` per call and `run.waiting`, with the run
        record in the same append (status `waiting`, no owner: it holds nothing). The
        record's lease expiry is the wait's deadline, when some instance applies the
        policy's timeout outcome."""
        ctx = self.ctx
        assert ctx.gate is not None
        policy = ctx.gate.policy
        expires = now() + policy.timeout_s
        ctx.run.status = "waiting"
        ctx.run.disown()
        ctx.run.lease_expires_at = expires
        events = [Event(type="approval.required", run_id=ctx.run.id,
                        data={**p, "expires_at": expires}) for p in pending]
        events.append(Event(type="run.waiting", run_id=ctx.run.id,
                            data={"pending": pending, "expires_at": expires,
                                  "on_timeout": policy.on_timeout,
                                  "usage": ctx.run.usage_data()}))
        try:
            await self._append(events, with_run=True)
        except RoostError as exc:
            await self._finish("failed", "run.failed", _error(exc))

    async def _finish(self, status: str, event_type: str, data: dict[str, Any]) -> None:
        ctx = self.ctx
        ctx.run.status = status
        ctx.run.error = data if event_type != "run.completed" else None
        ctx.run.disown()
        try:
            await self._append([Event(type=event_type, run_id=ctx.run.id,
                                      data={"error": data, "usage": ctx.run.usage_data()})],
                               with_run=True)
        except (SessionMoved, SessionNotFound):
            # The log moved on or is gone: record the run itself if we can.
            with contextlib.suppress(RoostError):
                await ctx.session.record_run(ctx.run, owner=self._owner)
            ctx.emit(Event(type=event_type, run_id=ctx.run.id, data={"error": data}))
        except RoostError:
            # An outage: neither the log nor the record can be trusted to say how the run
            # ended. The runtime settles it from the log when the store answers again.
            ctx.unsettled = True
            ctx.emit(Event(type=event_type, run_id=ctx.run.id, data={"error": data}))


def _error(exc: RoostError) -> dict[str, Any]:
    data: dict[str, Any] = {"type": exc.type, "message": exc.message}
    if isinstance(exc, BudgetExceeded):
        data.update(exc.details)
    if isinstance(exc, ModelError):
        data.update(kind=exc.kind, status_code=exc.status_code, provider=exc.provider)
    elif isinstance(exc, OutputRejected):
        data.update(guardrail=exc.guardrail, reason=exc.reason)
    return data
