"""Starting spans cheaply: `LeanTracer` makes real, recording spans for an SDK provider;
`ApiTracer` is the plain API path for any other tracer. See `tracing` for why."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import MappingProxyType, TracebackType
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
)
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.util import types

# -- starting spans -------------------------------------------------------------------------------

class SpanStarter(Protocol):
    """What hooks, middleware and store use to start a span."""

    def start(self, name: str, kind: SpanKind, attributes: dict[str, Any],
              parent: trace.Span | None = None) -> trace.Span:
        """A started span named `name`, owning `attributes` (the dict is not copied).

        `parent`: the parent span (`INVALID_SPAN` for a root); None: the current context's.
        """
        ...


def span_starter(tracer: trace.Tracer | None) -> SpanStarter | None:
    """The fastest way to start spans with `tracer`: a `LeanTracer` for an SDK tracer."""
    if tracer is None:
        return None
    if type(tracer) is sdk_trace.Tracer:
        return LeanTracer(tracer)
    return ApiTracer(tracer)


class ApiTracer:
    """`SpanStarter` over any `trace.Tracer`, through the plain API."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, name: str, kind: SpanKind, attributes: dict[str, Any],
              parent: trace.Span | None = None) -> trace.Span:
        context = None if parent is None else trace.set_span_in_context(parent)
        return self.tracer.start_span(name, context=context, kind=kind, attributes=attributes)


_RANDOM_BIT: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
# [sampled][random trace id] -> the new span's flags, as the SDK's tracer computes them.
_FLAGS = ((TraceFlags(0), TraceFlags(_RANDOM_BIT)),
          (TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.SAMPLED | _RANDOM_BIT)))


class LeanTracer:
    """`SpanStarter` for an SDK `Tracer`: its sampler, ids, resource, limits and processors,
    without the SDK span's per-span overhead. See the module docstring."""

    def __init__(self, tracer: sdk_trace.Tracer) -> None:
        self.tracer = tracer
        # Typed loosely: the SDK's processors annotate their spans as its own class.
        self.processor: Any = tracer.span_processor
        self.limits = tracer._span_limits
        self._ids = tracer.id_generator
        self._random_ids = bool(_RANDOM_BIT) and bool(
            getattr(self._ids, "is_trace_id_random", lambda: False)())
        sampler = tracer.sampler
        # ParentBased with its default delegates (the default sampler, and
        # `parentbased_traceidratio`): a child follows its parent's decision, no call needed.
        based = isinstance(sampler, ParentBased) and (
            type(sampler).should_sample is ParentBased.should_sample)
        self._follow_local_parent = based and (
            getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON
            and getattr(sampler, "_local_parent_not_sampled", None) is ALWAYS_OFF)
        self._follow_remote_parent = based and (
            getattr(sampler, "_remote_parent_sampled", None) is ALWAYS_ON
            and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF)
        self._sample_roots = based and getattr(sampler, "_root", None) is ALWAYS_ON
        # The SDK's own span metrics (OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED); off: skipped.
        metrics = getattr(tracer, "_tracer_metrics", None)
        self._metrics = None if type(metrics).__name__ == "NoOpTracerMetrics" else metrics
        self._is_enabled: Callable[[], bool] = getattr(tracer, "_is_enabled", lambda: True)
        # The provider's processors, called directly: the ones whose on_start and _on_ending
        # do nothing (the SDK's batch and simple processors) skipped. Re-planned whenever
        # the provider's tuple of processors changes (add_span_processor replaces it).
        self._multi = type(self.processor) is SynchronousMultiSpanProcessor
        self._planned: object = None
        self._starts: tuple[Callable[..., None], ...] = ()
        self._endings: tuple[Callable[[LeanSpan], None], ...] = ()
        self._ends: tuple[Callable[[LeanSpan], None], ...] = (self.processor.on_end,)
        if not self._multi:
            self._starts = (self.processor.on_start,)
            ending = getattr(self.processor, "_on_ending", None)
            self._endings = (ending,) if ending is not None else ()
        limits = self.limits
        self._max_attributes: int | None = limits.max_span_attributes
        self._max_length: int | None = limits.max_span_attribute_length

    def start(self, name: str, kind: SpanKind, attributes: dict[str, Any],
              parent: trace.Span | None = None) -> trace.Span:
        tracer = self.tracer
        if not self._is_enabled():
            return NonRecordingSpan(
                (parent or trace.get_current_span()).get_span_context())
        parent_span = trace.get_current_span() if parent is None else parent
        parent_ctx: SpanContext | None = parent_span.get_span_context()
        trace_state: TraceState | None
        if parent_ctx is not None and parent_ctx.is_valid:
            # SpanContext is a tuple; unpacked once rather than through five properties.
            trace_id, _, remote, flags, trace_state, _ = parent_ctx
            random_id = flags & _RANDOM_BIT != 0
        else:
            parent_ctx, remote, flags = None, False, _FLAGS[0][0]
            trace_id = self._ids.generate_trace_id()
            random_id = self._random_ids
        if parent_ctx is not None and (self._follow_remote_parent if remote
                                       else self._follow_local_parent):
            sampled = flags & TraceFlags.SAMPLED != 0
            decision = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
        elif parent_ctx is None and self._sample_roots:
            sampled, decision, trace_state = True, Decision.RECORD_AND_SAMPLE, None
        else:
            context = None if parent is None else trace.set_span_in_context(parent)
            result = tracer.sampler.should_sample(context, trace_id, name, kind, attributes, ())
            decision = result.decision
            sampled = decision is Decision.RECORD_AND_SAMPLE
            trace_state = result.trace_state
            if decision is not Decision.DROP:
                attributes = dict(result.attributes or {})
        span_context = SpanContext(trace_id, self._ids.generate_span_id(), False,
                                   _FLAGS[sampled][random_id], trace_state)
        record_end = (self._metrics.start_span(parent_ctx, decision)
                      if self._metrics is not None else None)
        if decision is Decision.DROP:
            return NonRecordingSpan(span_context)
        cleaned = self._clean(attributes)
        span = LeanSpan(name, span_context, parent_ctx, kind,
                        attributes if cleaned is None else cleaned, self, record_end)
        if cleaned is not None:  # the SDK counts invalid attributes as dropped
            span._dropped_attributes += len(attributes) - len(cleaned)
        if self._multi and self.processor._span_processors is not self._planned:
            self._plan()
        for on_start in self._starts:
            on_start(span, parent_context=None)
        return span

    def _plan(self) -> None:
        processors = self.processor._span_processors
        self._starts = tuple(p.on_start for p in processors
                             if type(p).on_start not in _NOOP_STARTS)
        self._endings = tuple(p._on_ending for p in processors
                              if hasattr(p, "_on_ending")
                              and getattr(type(p), "_on_ending", None) not in _NOOP_ENDINGS)
        self._ends = tuple(p.on_end for p in processors)
        self._planned = processors

    def _clean(self, attributes: Mapping[str, Any]) -> dict[str, Any] | None:
        """None when the SDK would keep `attributes` as they are, else what it would keep."""
        max_length = self._max_length
        for key, value in attributes.items():
            kind = type(value)
            if kind not in _SCALARS and not (
                    kind is tuple and all(type(v) in _SCALARS for v in value)):
                return self._clean_slowly(attributes)
            if type(key) is not str or not key or (
                    max_length is not None and kind is str and len(value) > max_length):
                return self._clean_slowly(attributes)
        return None

    def _clean_slowly(self, attributes: Mapping[str, Any]) -> dict[str, Any]:
        """The SDK's own rules (keys, value types, lengths): for unusual attributes only."""
        bounded = BoundedAttributes(None, attributes, immutable=False,
                                    max_value_len=self._max_length)
        return dict(bounded.items())


_SCALARS = frozenset({str, int, float, bool})
_NOOP_STARTS = frozenset({SpanProcessor.on_start, BatchSpanProcessor.on_start,
                          SimpleSpanProcessor.on_start})
_NOOP_ENDINGS = frozenset(getattr(kind, "_on_ending", None) for kind in (
    SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor)) - {None}


class LeanSpan(trace.Span, ReadableSpan):
    """A recording span of a `LeanTracer`: the SDK span's behaviour, a fifth of its cost.

    It is its own `ReadableSpan` (processors and exporters read it after `end`, when it no
    longer changes). Mutators take a lock — one for all spans: they are short and rare off the
    event loop — because code in a worker thread may hold the span as current.
    """

    # ReadableSpan's fields among them: with every field a slot, no instance dict is made.
    __slots__ = ("_attributes", "_context", "_dropped_attributes", "_end_time", "_events",
                 "_instrumentation_info", "_instrumentation_scope", "_kind", "_links", "_name",
                 "_parent", "_record_end", "_resource", "_start_time", "_status", "_tracer",
                 "_values")

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], tracer: LeanTracer,
                 record_end: Callable[[], None] | None) -> None:
        # ReadableSpan's fields, assigned here: its __init__ is not called.
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = self._values = attributes
        self._events: Sequence[Event] = ()
        self._links: Sequence[Link] = ()
        self._status = _UNSET
        self._resource = tracer.tracer.resource
        self._instrumentation_info = tracer.tracer.instrumentation_info
        self._instrumentation_scope = tracer.tracer._instrumentation_scope
        self._end_time: int | None = None
        self._tracer = tracer
        self._record_end = record_end
        self._dropped_attributes = 0
        limit = tracer._max_attributes
        if limit is not None and len(attributes) > limit:
            self._trim(limit)
        self._start_time: int | None = time_ns()

    def __repr__(self) -> str:
        return f'LeanSpan(name="{self._name}", context={self._context})'

    # -- trace.Span -------------------------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # never None here

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        cleaned = self._tracer._clean(attributes)
        with _LOCK:
            if self._end_time is not None:
                return
            values = self._values
            if cleaned is None:
                values.update(attributes)
            else:
                values.update(cleaned)
                self._dropped_attributes += len(attributes) - len(cleaned)
            limit = self._tracer._max_attributes
            if limit is not None and len(values) > limit:
                self._trim(limit)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        kind = type(value)
        if kind not in _SCALARS or (kind is str and self._tracer._max_length is not None) or (
                type(key) is not str or not key):
            self.set_attributes({key: value})
            return
        with _LOCK:
            if self._end_time is not None:
                return
            values = self._values
            values[key] = value
            limit = self._tracer._max_attributes
            if limit is not None and len(values) > limit:
                self._trim(limit)

    def _trim(self, limit: int) -> None:
        # The SDK's rule: when full, the oldest attribute makes room for the newest.
        values = self._values
        while len(values) > limit:
            del values[next(iter(values))]
            self._dropped_attributes += 1

    def add_event(self, name: str, attributes: types.Attributes = None,
                  timestamp: int | None = None) -> None:
        limits = self._tracer.limits
        event = Event(name, BoundedAttributes(limits.max_event_attributes, attributes,
                                              max_value_len=limits.max_attribute_length),
                      timestamp)
        with _LOCK:
            if self._end_time is not None:
                return
            if not isinstance(self._events, BoundedList):
                self._events = BoundedList(limits.max_events)
            self._events.append(event)

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not (context and (context.is_valid or attributes or context.trace_state)):
            return
        limits = self._tracer.limits
        link = Link(context, BoundedAttributes(limits.max_link_attributes, attributes,
                                               max_value_len=limits.max_attribute_length))
        with _LOCK:
            if self._end_time is not None:
                return
            if not isinstance(self._links, BoundedList):
                self._links = BoundedList(limits.max_links)
            self._links.append(link)

    def update_name(self, name: str) -> None:
        with _LOCK:
            if self._end_time is None:
                self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # The SDK's rules: OK is final, UNSET never overrides.
        if status.status_code is StatusCode.UNSET:
            return
        with _LOCK:
            if self._end_time is None and self._status.status_code is not StatusCode.OK:
                self._status = status

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        kind = type(exception)
        module = kind.__module__
        fields: dict[str, types.AnyValue] = {
            "exception.type": (f"{module}.{kind.__qualname__}"
                               if module and module != "builtins" else kind.__qualname__),
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            fields.update(attributes)
        self.add_event("exception", fields, timestamp)

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None:
        if exc_val is not None and self.is_recording():
            self.record_exception(exc_val, escaped=True)
            self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        super().__exit__(exc_type, exc_val, exc_tb)

    def end(self, end_time: int | None = None) -> None:
        with _LOCK:
            if self._end_time is not None:
                return
            self._end_time = time_ns() if end_time is None else end_time
        if self._record_end is not None:
            self._record_end()
        tracer = self._tracer
        if tracer._multi and tracer.processor._span_processors is not tracer._planned:
            tracer._plan()
        for on_ending in tracer._endings:
            on_ending(self)
        for on_end in tracer._ends:
            on_end(self)

    # -- ReadableSpan -----------------------------------------------------------------------------

    @property
    def attributes(self) -> types.Attributes:
        return MappingProxyType(self._values)

    @property
    def dropped_attributes(self) -> int:
        return self._dropped_attributes


_UNSET = Status(StatusCode.UNSET)
_LOCK = threading.Lock()
