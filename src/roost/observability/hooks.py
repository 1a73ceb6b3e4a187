"""`ObservabilityHooks`: metrics, GenAI spans, log context and cost at the engine's boundaries.

Spans follow the OpenTelemetry GenAI semantic conventions:

    invoke_agent {agent}        gen_ai.operation.name=invoke_agent, gen_ai.agent.name,
    │                           gen_ai.conversation.id (session), roost.run_id
    ├── chat {model}            gen_ai.provider.name, gen_ai.request.model, gen_ai.response.model,
    │                           gen_ai.usage.input_tokens / output_tokens, finish_reasons
    └── execute_tool {tool}     gen_ai.tool.name, gen_ai.tool.call.id

`invoke_agent` is a child of whatever is current when the run starts (the server request span
when the run task was created inside the request); `chat` and `execute_tool` are children of
their run's span explicitly, whichever task calls the hook. Every span ends exactly once: a
call whose `*_end` never came is ended, marked unfinished, by `run_end`.

With tracing off no span object is created; with metrics off no metric is touched. The hooks
never raise: an observability bug must not fail a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from roost.engine.hooks import EngineHooks
from roost.errors import ModelError, RoostError
from roost.models.base import ModelRequest, ModelResponse
from roost.observability import logs, tracing
from roost.observability.metrics import OTHER, Metrics
from roost.observability.usage import PriceTable
from roost.sessions.records import TERMINAL_STATUSES, RunRecord

log = logging.getLogger("roost.runs")

_RUN_OUTCOMES = TERMINAL_STATUSES
_TOOL_OUTCOMES = frozenset({"ok", "error", "timeout", "cancelled", "invalid_arguments"})
_FAILED_RUN = frozenset({"failed", "timed_out"})
_MAX_CACHED_NAMES = 4096
# Model settings recorded on chat spans, and their attribute names.
_REQUEST_SETTINGS = tuple((key, f"gen_ai.request.{key}")
                          for key in ("temperature", "max_tokens", "top_p"))
_NUMBERS = frozenset({int, float})


class _Run:
    __slots__ = ("agent", "counted", "ctx_token", "done", "log_token", "model", "open", "run",
                 "span", "start")

    def __init__(self, run: RunRecord, agent: str, model: str) -> None:
        self.run = run
        self.agent = agent  # guarded label value
        self.model = model
        self.start = time.perf_counter()
        self.done = False
        self.counted = False  # in roost_runs_in_flight
        self.span: trace.Span | None = None
        self.ctx_token: Any = None
        self.log_token: Any = None
        # Calls started and not yet ended, so run_end can end their spans (tracing only).
        self.open: set[_Call] = set()


class _Call:
    __slots__ = ("ctx_token", "done", "first_token", "labels", "log_token", "name", "parent",
                 "span", "start")

    def __init__(self, parent: _Run | None, name: str, labels: tuple[str, ...]) -> None:
        self.parent = parent
        self.name = name  # model ref or tool name, as given
        self.labels = labels  # guarded label values
        self.start = time.perf_counter()
        self.done = False
        self.first_token: float | None = None
        self.span: trace.Span | None = None
        self.ctx_token: Any = None
        self.log_token: Any = None


class ObservabilityHooks(EngineHooks):
    """The engine hooks Roost's runtime injects; built by `Observability`, not by hand."""

    def __init__(
        self,
        *,
        metrics: Metrics | None,
        tracer: trace.Tracer | None,
        prices: PriceTable,
        run_log: bool = True,
    ) -> None:
        self._m = metrics
        self._spans = tracing.span_starter(tracer)
        self._prices = prices
        self._run_log = run_log
        self._runs: dict[str, _Run] = {}
        self._names: dict[str, tuple[str, str]] = {}
        # The answering model's token and cost counters: three lookups saved per call.
        self._usage_children: dict[str, tuple[Any, Any, Any]] = {}
        self._failed_once: set[str] = set()

    @property
    def active_runs(self) -> int:
        """Runs started and not yet ended (a leak check for tests and debugging)."""
        return len(self._runs)

    # -- runs -----------------------------------------------------------------------------------

    def run_start(self, run: RunRecord, *, model: str) -> Any:
        m = self._m
        try:
            state = _Run(run, m.guard("agent")(run.agent) if m else run.agent, model)
        except Exception:
            self._hook_failed("run_start")
            return None
        # Registered first: whatever fails below, run_end still finds and undoes the rest.
        self._runs[run.id] = state
        try:
            if m is not None:
                m.runs_in_flight.inc()
                state.counted = True
            state.log_token = logs.bind(
                tenant=run.tenant, agent=run.agent, session_id=run.session_id, run_id=run.id
            )
            spans = self._spans
            if spans is not None:
                provider, name = self._split(model)
                attributes: dict[str, Any] = {
                    "gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": run.agent,
                    "gen_ai.conversation.id": run.session_id,
                    "gen_ai.provider.name": provider,
                    "gen_ai.request.model": name,
                    "roost.run_id": run.id,
                    "roost.tenant": run.tenant,
                }
                if run.attempt > 1:
                    attributes["roost.run.attempt"] = run.attempt
                # The current span (the request's) is the parent. Attached so that what the
                # run does in this task — store calls, instrumented libraries — nests under it.
                state.span = spans.start(f"invoke_agent {run.agent}", SpanKind.INTERNAL,
                                         attributes)
                state.ctx_token = tracing.attach(state.span)
        except Exception:
            self._hook_failed("run_start")
        return state

    def run_end(self, token: Any, run: RunRecord) -> None:
        if not isinstance(token, _Run) or token.done:
            return
        token.done = True
        try:
            duration = time.perf_counter() - token.start
            status = run.status
            m = self._m
            if m is not None:
                outcome = status if status in _RUN_OUTCOMES else OTHER
                m.child(m.runs, token.agent, outcome).inc()
                m.child(m.run_duration, token.agent).observe(duration)
            for call in list(token.open):
                self._end_unfinished(call)
            if self._run_log:
                self._log_run(run, duration)
            span = token.span
            if span is not None and span.is_recording():
                usage = run.usage
                # One `set_attributes`: each call takes the span's lock.
                attributes: dict[str, Any] = {
                    "roost.run.status": status,
                    "gen_ai.usage.input_tokens": usage.input_tokens,
                    "gen_ai.usage.output_tokens": usage.output_tokens,
                }
                if usage.cost:
                    attributes["roost.usage.cost"] = usage.cost
                if status in _FAILED_RUN:
                    attributes["error.type"] = str((run.error or {}).get("type") or status)
                    span.set_status(Status(StatusCode.ERROR, _describe(run.error)))
                elif status != "completed":
                    attributes["error.type"] = status
                span.set_attributes(attributes)
        except Exception:
            self._hook_failed("run_end")
        finally:
            if token.counted and self._m is not None:
                self._m.runs_in_flight.dec()
            if token.span is not None:
                token.span.end()
                tracing.detach(token.ctx_token)
            logs.unbind(token.log_token)
            if self._runs.get(run.id) is token:
                del self._runs[run.id]

    # -- model calls ----------------------------------------------------------------------------

    def model_start(self, run: RunRecord, model: str, request: ModelRequest) -> Any:
        try:
            parent = self._runs.get(run.id)
            provider, name = self._split(model)
            m = self._m
            labels = (m.guard("provider")(provider), m.guard("model")(name)) if m else ()
            call = _Call(parent, model, labels)
        except Exception:
            self._hook_failed("model_start")
            return None
        try:
            spans = self._spans
            if spans is not None:
                attributes: dict[str, Any] = {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": provider,
                    "gen_ai.request.model": name,
                }
                settings = request.settings
                if settings:
                    for key, attribute in _REQUEST_SETTINGS:
                        value = settings.get(key)
                        if value is not None and type(value) in _NUMBERS:
                            attributes[attribute] = value
                call.span = spans.start(f"chat {name}", SpanKind.CLIENT, attributes,
                                        _parent_span(parent))
                if parent is not None:
                    parent.open.add(call)
                # Providers send it upstream: the model server's spans join this trace.
                tracing.inject(request.metadata, call.span)
                call.ctx_token = tracing.attach(call.span)
        except Exception:
            self._hook_failed("model_start")
        return call

    def model_first_token(self, token: Any) -> None:
        if not isinstance(token, _Call) or token.first_token is not None or token.done:
            return
        try:
            token.first_token = ttft = time.perf_counter() - token.start
            m = self._m
            if m is not None:
                m.child(m.model_ttft, *token.labels).observe(ttft)
            if token.span is not None:
                # An attribute, not a span event: an event costs as much as half a span.
                token.span.set_attribute("roost.time_to_first_token_s", ttft)
        except Exception:
            self._hook_failed("model_first_token")

    def model_end(
        self, token: Any, response: ModelResponse | None, error: BaseException | None
    ) -> None:
        if not isinstance(token, _Call) or token.done:
            return
        token.done = True
        try:
            duration = time.perf_counter() - token.start
            outcome, kind = _model_outcome(error)
            answered = token.name
            if response is not None:
                answered = _answered_model(token.name, response.model)
                usage = response.usage
                if not usage.cost and self._prices:
                    # The engine adds `response.usage` into `run.usage` after this hook, so
                    # the cost lands on the run record without a second writer.
                    price = self._prices.price(answered) or self._prices.price(token.name)
                    if price is not None:
                        usage.cost = (usage.input_tokens * price.input
                                      + usage.output_tokens * price.output) / 1e6
            m = self._m
            if m is not None:
                provider_l, model_l = token.labels
                m.child(m.model_calls, provider_l, model_l, outcome).inc()
                m.child(m.model_latency, provider_l, model_l).observe(duration)
                if kind is not None:
                    m.child(m.model_errors, provider_l, model_l, m.guard("error_kind")(kind)).inc()
                if response is not None:
                    self._count_usage(m, answered, response)
            span = token.span
            if span is not None and span.is_recording():
                attributes: dict[str, Any] = {}
                if response is not None:
                    usage = response.usage
                    attributes["gen_ai.response.model"] = response.model or token.name
                    attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
                    attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
                    if response.finish_reason:
                        attributes["gen_ai.response.finish_reasons"] = (response.finish_reason,)
                    if usage.cost:
                        attributes["roost.usage.cost"] = usage.cost
                if error is not None:
                    attributes["error.type"] = kind or outcome
                    if kind is not None:
                        span.set_status(Status(StatusCode.ERROR, _short(error)))
                span.set_attributes(attributes)
            if kind is not None and log.isEnabledFor(logging.WARNING):
                log.warning("model call failed", extra={
                    "model": token.name, "error_kind": kind, "error": _short(error),
                    "duration_ms": round(duration * 1000, 1)})
        except Exception:
            self._hook_failed("model_end")
        finally:
            _close(token)

    def _count_usage(self, m: Metrics, answered: str, response: ModelResponse) -> None:
        children = self._usage_children.get(answered)
        if children is None:
            provider, name = self._split(answered)
            provider_l, model_l = m.guard("provider")(provider), m.guard("model")(name)
            children = (m.child(m.tokens, provider_l, model_l, "input"),
                        m.child(m.tokens, provider_l, model_l, "output"),
                        m.child(m.cost, model_l))
            if len(self._usage_children) < _MAX_CACHED_NAMES:
                self._usage_children[answered] = children
        usage = response.usage
        if usage.input_tokens:
            children[0].inc(usage.input_tokens)
        if usage.output_tokens:
            children[1].inc(usage.output_tokens)
        if usage.cost > 0:
            children[2].inc(usage.cost)

    # -- tool calls -----------------------------------------------------------------------------

    def tool_start(self, run: RunRecord, tool: str, call_id: str) -> Any:
        try:
            parent = self._runs.get(run.id)
            m = self._m
            call = _Call(parent, tool, (m.guard("tool")(tool),) if m else ())
        except Exception:
            self._hook_failed("tool_start")
            return None
        try:
            call.log_token = logs.bind(tool=tool, tool_call_id=call_id)
            spans = self._spans
            if spans is not None:
                call.span = spans.start(f"execute_tool {tool}", SpanKind.INTERNAL, {
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": tool,
                    "gen_ai.tool.call.id": call_id,
                    "gen_ai.tool.type": "function",
                }, _parent_span(parent))
                if parent is not None:
                    parent.open.add(call)
                call.ctx_token = tracing.attach(call.span)
        except Exception:
            self._hook_failed("tool_start")
        return call

    def guardrail(self, agent: str, guardrail: str, stage: str, action: str) -> None:
        m = self._m
        if m is None:
            return
        try:
            m.child(m.guardrails, m.guard("agent")(agent), m.guard("guardrail")(guardrail),
                    stage, action).inc()
        except Exception:
            self._hook_failed("guardrail")

    def tool_end(self, token: Any, outcome: str, error: BaseException | None) -> None:
        if not isinstance(token, _Call) or token.done:
            return
        token.done = True
        try:
            duration = time.perf_counter() - token.start
            outcome = outcome if outcome in _TOOL_OUTCOMES else OTHER
            m = self._m
            if m is not None:
                m.child(m.tool_calls, token.labels[0], outcome).inc()
                m.child(m.tool_duration, token.labels[0]).observe(duration)
            span = token.span
            if span is not None and span.is_recording():
                if outcome == "ok":
                    span.set_attribute("roost.tool.outcome", outcome)
                else:
                    span.set_attributes({"roost.tool.outcome": outcome, "error.type": outcome})
                    if outcome != "cancelled":
                        span.set_status(Status(StatusCode.ERROR, _short(error)))
            if outcome not in ("ok", "cancelled") and log.isEnabledFor(logging.INFO):
                log.info("tool call failed", extra={
                    "outcome": outcome, "error": _short(error),
                    "duration_ms": round(duration * 1000, 1)})
        except Exception:
            self._hook_failed("tool_end")
        finally:
            _close(token)
            logs.unbind(token.log_token)

    # -- helpers --------------------------------------------------------------------------------

    def _end_unfinished(self, call: _Call) -> None:
        call.done = True
        if call.span is not None:
            call.span.set_attribute("error.type", "unfinished")
            call.span.set_status(Status(StatusCode.ERROR, "the run ended before this call"))
            call.span.end()
        # The call's context token belongs to its own task; it dies with it.
        if call.parent is not None:
            call.parent.open.discard(call)

    def _split(self, model: str) -> tuple[str, str]:
        """"openai:gpt-4o" -> ("openai", "gpt-4o"); "demo" -> ("demo", "demo")."""
        found = self._names.get(model)
        if found is None:
            provider, sep, name = model.partition(":")
            found = (provider, name) if sep and name else (model or "unknown",) * 2
            if len(self._names) < _MAX_CACHED_NAMES:
                self._names[model] = found
        return found

    def _log_run(self, run: RunRecord, duration: float) -> None:
        level = logging.WARNING if run.status in _FAILED_RUN else logging.INFO
        if not log.isEnabledFor(level):
            return
        usage = run.usage
        fields: dict[str, Any] = {
            "status": run.status,
            "duration_ms": round(duration * 1000, 1),
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cost": usage.cost,
            "attempt": run.attempt,
        }
        if run.error:
            fields["error_type"] = run.error.get("type")
            fields["error"] = run.error.get("message")
        log.log(level, "run finished", extra=fields)

    def _hook_failed(self, hook: str) -> None:
        # Once per hook: a persistent bug would otherwise log on every run.
        if hook not in self._failed_once:
            self._failed_once.add(hook)
            logging.getLogger("roost.observability").exception("observability hook %s failed",
                                                               hook)


def _close(call: _Call) -> None:
    if call.span is not None:
        call.span.end()
        tracing.detach(call.ctx_token)
        if call.parent is not None:
            call.parent.open.discard(call)


def _parent_span(parent: _Run | None) -> trace.Span | None:
    """The run's span, parent of its calls whichever task they run in (None: the current)."""
    return parent.span if parent is not None else None


def _model_outcome(error: BaseException | None) -> tuple[str, str | None]:
    """(outcome label, error kind or None): cancellation is an outcome, not an error."""
    if error is None:
        return "ok", None
    if isinstance(error, asyncio.CancelledError):
        return "cancelled", None
    if isinstance(error, ModelError):
        return "error", error.kind
    if isinstance(error, TimeoutError):
        return "error", "timeout"
    if isinstance(error, RoostError):
        return "error", error.type
    return "error", "error"


def _answered_model(requested: str, answered: str) -> str:
    """The model that answered, with the requested provider when the response names none."""
    if not answered:
        return requested
    if ":" in answered:
        return answered
    provider, sep, _ = requested.partition(":")
    return f"{provider}:{answered}" if sep else answered


def _short(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = f"{type(error).__name__}: {error}"
    return str(logs.redact(text[:300]))


def _describe(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return str(logs.redact(str(error.get("message") or error.get("type") or "")[:300]))
