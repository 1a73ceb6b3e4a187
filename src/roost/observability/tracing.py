"""Tracing plumbing: span creation, OTLP export, W3C propagation, context attach/detach.

Spans follow the OpenTelemetry GenAI semantic conventions (see `hooks.py`). Export goes through
a `BatchSpanProcessor` to OTLP/HTTP, configured by the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`,
`OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`, …): the hot path only appends a finished span to a
queue; a background thread exports.

The provider is Roost's own, not the process-global one: tests and embedders run several
side by side. Instrumentation of other libraries (httpx, asyncpg, …) still nests under Roost's
spans, because the *current context* is shared.

Why not `tracer.start_span` and the stock exporter: on the reference turn (about a dozen spans)
they cost more CPU than the rest of the turn's observability together. The SDK's span spends
~20 µs between start and end (attribute validation behind a lock, bounded containers, a sampler
call for every child) and the stock OTLP encoder ~30 µs more building protobuf objects field by
field. So, for an SDK provider:

- `span_starter(tracer)` returns a `LeanTracer`: it makes `LeanSpan`s — real, recording
  `trace.Span`s handed to the provider's span processors like the SDK's own — for ~4 µs, and
  takes the parent as an argument instead of through a `Context`. The provider's sampler,
  id generator, resource, span limits and processors all still apply.
- `build_tracer_provider` exports with `OTLPSpanExporter`, the stock exporter (endpoint,
  headers, TLS, compression, retries) with `encode_otlp`, a direct protobuf writer producing
  the same bytes five times faster.

Any other `trace.Tracer` (another SDK, `OTEL_SDK_DISABLED`) gets `ApiTracer`, the plain API path.
"""

from __future__ import annotations

import contextvars
import logging
import re
import struct
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from time import time_ns
from types import MappingProxyType, TracebackType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SpanProcessor,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Decision, ParentBased
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace import propagation as trace_propagation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util import types

from roost.errors import ConfigError

log = logging.getLogger("roost.observability")

W3C = TraceContextTextMapPropagator()

# The context variable behind OpenTelemetry's default runtime context, and the key the current
# span sits under (both private to the API; None when another runtime context is configured).
_RUNTIME = getattr(otel_context, "_RUNTIME_CONTEXT", None)
_CONTEXT_VAR: contextvars.ContextVar[Context] | None = (
    getattr(_RUNTIME, "_current_context", None)
    if type(_RUNTIME).__name__ == "ContextVarsRuntimeContext" else None)
_SPAN_KEY: str = getattr(trace_propagation, "_SPAN_KEY", "")
if not _SPAN_KEY:  # pragma: no cover - another API layout
    _CONTEXT_VAR = None

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
# The propagator's own pattern (W3C Trace Context level 1 and 2), for `remote_parent`.
_TRACEPARENT_FULL = re.compile(
    r"^[ \t]*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:(-.*)|[ \t]*)$")
_MAX_TRACEPARENT = 512
_MAX_TRACESTATE = 512


# -- the provider ---------------------------------------------------------------------------------

def build_tracer_provider(service_name: str, version: str = "") -> TracerProvider:
    """A provider exporting over OTLP/HTTP in batches, configured from `OTEL_*` env vars.

    The sampler comes from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: every
    trace; `parentbased_traceidratio` with `0.1` keeps one in ten, and whatever the caller's
    `traceparent` decided), the batching from `OTEL_BSP_*`.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as StockExporter,
        )
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "tracing needs the OTLP exporter: pip install 'roost[observability]'",
            [("observability.tracing", str(exc))],
        ) from exc

    class OTLPSpanExporter(StockExporter):
        """The stock OTLP/HTTP exporter, encoding with `encode_otlp`."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return export_with(self, spans, super().export)

    attributes = {"service.name": service_name}
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def export_with(
    exporter: Any, spans: Sequence[ReadableSpan],
    stock_export: Callable[[Sequence[ReadableSpan]], SpanExportResult],
) -> SpanExportResult:
    """Export `spans` through the stock exporter's HTTP client, encoded by `encode_otlp`.

    The client (endpoint, headers, TLS, compression, retries with backoff) and the exporter's
    own metrics are private parts of `opentelemetry-exporter-otlp-proto-http` (as of 1.45);
    with any other layout the stock `export` runs instead: slower, never wrong. A test pins
    that the fast path is taken.
    """
    client = getattr(exporter, "_client", None)
    metrics = getattr(exporter, "_metrics", None)
    if (client is None or not hasattr(client, "export") or metrics is None
            or not hasattr(metrics, "export_operation")
            or getattr(exporter, "_shutdown", True)):
        return stock_export(spans)
    with metrics.export_operation(len(spans)) as outcome:
        try:
            data = encode_otlp(spans)
        except Exception as exc:
            log.exception("encoding %d spans failed", len(spans))
            outcome.error = exc
            return SpanExportResult.FAILURE
        limit = getattr(exporter, "_max_request_size", 0) or 0
        if 0 < limit < len(data):
            log.warning("dropping %d spans: %d bytes is over the exporter's max_request_size "
                        "%d", len(spans), len(data), limit)
            outcome.error = ValueError("request too large")
            return SpanExportResult.FAILURE
        result = client.export(data)
        if not getattr(result, "success", False):
            outcome.error = getattr(result, "error", None)
            return SpanExportResult.FAILURE
    return SpanExportResult.SUCCESS


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


# -- OTLP encoding --------------------------------------------------------------------------------
#
# The protobuf wire format of opentelemetry/proto/collector/trace/v1 ExportTraceServiceRequest,
# written directly: each message is its fields' bytes, each nested one prefixed by its tag and
# length. Field order and presence match the stock encoder's output byte for byte (a test pins
# it), so any OTLP receiver reads it the same way.

_FIXED64 = struct.Struct("<Q").pack
_DOUBLE = struct.Struct("<d").pack
_BYTE = [bytes((i,)) for i in range(128)]
_INT64_MIN, _INT64_MAX, _UINT64 = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
# Span fields 1-2 (trace_id, in two halves, and span_id), 4 (parent_span_id), 6-8 (kind,
# start and end times), each with its tag (and length): one `pack` call for several fields.
_IDS = struct.Struct(">2sQQ2sQ").pack
_PARENT_ID = struct.Struct(">2sQ").pack
_KIND_TIMES = struct.Struct("<BBBQBQ").pack
# Span.flags: HAS_IS_REMOTE, and IS_REMOTE when the parent is remote (fixed32, field 16).
_LOCAL_PARENT, _REMOTE_PARENT = b"\x85\x01\x00\x01\x00\x00", b"\x85\x01\x00\x03\x00\x00"
_LINK_LOCAL, _LINK_REMOTE = b"\x35\x00\x01\x00\x00", b"\x35\x00\x03\x00\x00"
# An UNSET status (an empty Status message, as the stock encoder writes it), then the flags.
_UNSET_AND_LOCAL, _UNSET_AND_REMOTE = b"\x7a\x00" + _LOCAL_PARENT, b"\x7a\x00" + _REMOTE_PARENT
# Encoded span attributes by key, then (short) string value: GenAI and HTTP ones repeat on
# most spans. A key seen with many values (an id) is marked None and never cached again.
# Bounded: 512 keys x 32 values x 128 characters, and as many span names.
_CACHE_LIMIT = 512
_VALUES_PER_KEY = 32
_CACHED_LENGTH = 128
_UNCACHED: Any = object()
_field_cache: dict[str, dict[str, bytes] | None] = {}
_name_cache: dict[str, bytes] = {}
_key_cache: dict[str, bytes] = {}
# The encoded resource and scope of recent batches, by identity (kept alive with the entry).
_message_cache: dict[int, tuple[object, bytes]] = {}


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    n = len(payload)
    return tag + (_BYTE[n] if n < 0x80 else _varint(n)) + payload


def _string(tag: bytes, text: str) -> bytes:
    # "replace": a lone surrogate would make the whole request unparseable.
    return _field(tag, text.encode("utf-8", "replace"))


def _any_value(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        return _string(b"\x0a", value)
    if kind is int:
        number: int = value
        if 0 <= number < 0x80:
            return b"\x18" + _BYTE[number]
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"{number} is out of the int64 range")
        return b"\x18" + _varint(number & _UINT64)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is float:
        return b"\x21" + _DOUBLE(value)
    if kind is tuple or kind is list:
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _string(b"\x0a", str(value))
    if isinstance(value, int):
        return _any_value(int(value))
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", bytes(value))
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join([_field(b"\x0a", _any_value(v)) for v in value]))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(
            [_field(b"\x0a", _encode_key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"invalid attribute value type {type(value).__name__}")


def _encode_key_value(key: str, value: Any) -> bytes:
    prefix = _key_cache.get(key)
    if prefix is None:
        prefix = _string(b"\x0a", key)
        if len(_key_cache) < _CACHE_LIMIT:
            _key_cache[key] = prefix
    return prefix + _field(b"\x12", _any_value(value))


def _attributes(tag: bytes, attributes: types.Attributes, out: list[bytes]) -> None:
    if not attributes:
        return
    for key, value in attributes.items():
        try:
            encoded = _encode_key_value(key, value)
        except Exception as exc:  # the stock encoder's behaviour: drop the attribute, say so
            log.warning("dropping span attribute %r: %s", key, exc)
            continue
        n = len(encoded)
        out.append(tag + (_BYTE[n] if n < 0x80 else _varint(n)) + encoded)


def _span_attributes(attributes: Mapping[str, Any], out: list[bytes]) -> None:
    """`_attributes` of a span, with the fields of few-valued string attributes cached."""
    for key, value in attributes.items():
        if type(value) is str and len(value) <= _CACHED_LENGTH:
            known = _field_cache.get(key, _UNCACHED)
            if known is _UNCACHED:
                known = _field_cache[key] = {} if len(_field_cache) < _CACHE_LIMIT else None
            if known is not None:
                field = known.get(value)
                if field is None:
                    field = _field(b"\x4a", _encode_key_value(key, value))
                    if len(known) < _VALUES_PER_KEY:
                        known[value] = field
                    else:  # an id, a path: a new value each time, not worth keeping
                        _field_cache[key] = None
                out.append(field)
                continue
        try:
            encoded = _encode_key_value(key, value)
        except Exception as exc:  # the stock encoder's behaviour: drop the attribute, say so
            log.warning("dropping span attribute %r: %s", key, exc)
            continue
        n = len(encoded)
        out.append(b"\x4a" + (_BYTE[n] if n < 0x80 else _varint(n)) + encoded)


def _span(span: ReadableSpan) -> bytes:
    attributes: Mapping[str, Any]
    if type(span) is LeanSpan:  # its fields, without the properties' copies
        ctx, parent, name, kind = span._context, span._parent, span._name, span._kind
        start, end, attributes = span._start_time, span._end_time, span._values
        events, links, status = span._events, span._links, span._status
        dropped = span._dropped_attributes
    else:
        ctx, parent, name, kind = span.context, span.parent, span.name, span.kind
        start, end, attributes = span.start_time, span.end_time, span.attributes or {}
        events, links, status = span.events, span.links, span.status
        dropped = span.dropped_attributes
    assert ctx is not None
    trace_id = ctx.trace_id
    out = [_IDS(b"\x0a\x10", trace_id >> 64, trace_id & _UINT64, b"\x12\x08", ctx.span_id)]
    if ctx.trace_state:
        out.append(_string(b"\x1a", ctx.trace_state.to_header()))
    if parent is not None:
        out.append(_PARENT_ID(b"\x22\x08", parent.span_id))
    encoded_name = _name_cache.get(name)
    if encoded_name is None:
        encoded_name = _string(b"\x2a", name)
        if len(name) <= _CACHED_LENGTH:
            if len(_name_cache) >= _CACHE_LIMIT:
                _name_cache.clear()
            _name_cache[name] = encoded_name
    out += (encoded_name, _KIND_TIMES(0x30, kind.value + 1, 0x39, start or 0, 0x41, end or 0))
    _span_attributes(attributes, out)
    if dropped:
        out.append(b"\x50" + _varint(dropped))
    if events:
        for event in events:
            fields = [b"\x09" + _FIXED64(event.timestamp), _string(b"\x12", event.name)]
            _attributes(b"\x1a", event.attributes, fields)
            if event.dropped_attributes:
                fields.append(b"\x20" + _varint(event.dropped_attributes))
            out.append(_field(b"\x5a", b"".join(fields)))
        if span.dropped_events:
            out.append(b"\x60" + _varint(span.dropped_events))
    if links:
        for link in links:
            linked = link.context
            fields = [b"\x0a\x10", linked.trace_id.to_bytes(16, "big"), b"\x12\x08",
                      linked.span_id.to_bytes(8, "big")]
            _attributes(b"\x22", link.attributes, fields)
            dropped = getattr(link, "dropped_attributes", 0)
            if dropped:
                fields.append(b"\x28" + _varint(dropped))
            fields.append(_LINK_REMOTE if linked.is_remote else _LINK_LOCAL)
            out.append(_field(b"\x6a", b"".join(fields)))
        if span.dropped_links:
            out.append(b"\x70" + _varint(span.dropped_links))
    if status is _UNSET:
        out.append(_UNSET_AND_LOCAL if parent is None or not parent.is_remote
                   else _UNSET_AND_REMOTE)
        return b"".join(out)
    code = status.status_code.value
    if code or status.description:
        out.append(_field(b"\x7a", (_string(b"\x12", status.description)
                                    if status.description else b"")
                          + (b"\x18" + _BYTE[code] if code else b"")))
    else:
        out.append(b"\x7a\x00")  # UNSET: an empty Status, as the stock encoder writes it
    out.append(_REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT)
    return b"".join(out)


def _cached(obj: Any, encode: Callable[[Any], bytes]) -> bytes:
    entry = _message_cache.get(id(obj))
    if entry is None or entry[0] is not obj:
        if len(_message_cache) >= 64:
            _message_cache.clear()
        entry = _message_cache[id(obj)] = (obj, encode(obj))
    return entry[1]


def _resource(resource: Resource) -> bytes:
    out: list[bytes] = []
    _attributes(b"\x0a", resource.attributes, out)
    return b"".join(out)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    out = [_string(b"\x0a", scope.name) if scope.name else b"",
           _string(b"\x12", scope.version) if scope.version else b""]
    _attributes(b"\x1a", getattr(scope, "attributes", None), out)
    return b"".join(out)


def encode_otlp(spans: Sequence[ReadableSpan]) -> bytes:
    """`spans` as a serialized OTLP `ExportTraceServiceRequest`, grouped by resource and scope."""
    groups: dict[int, tuple[Resource, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope
        group = groups.get(id(resource))
        if group is None:
            group = groups[id(resource)] = (resource, {})
        scoped = group[1].get(id(scope))
        if scoped is None:
            scoped = group[1][id(scope)] = (scope, [])
        scoped[1].append(_field(b"\x12", _span(span)))
    out = []
    for resource, scopes in groups.values():
        fields = [_field(b"\x0a", _cached(resource, _resource))]
        for scope, encoded in scopes.values():
            scope_fields = [_field(b"\x0a", _cached(scope, _scope)), *encoded]
            if scope is not None and scope.schema_url:
                scope_fields.append(_string(b"\x1a", scope.schema_url))
            fields.append(_field(b"\x12", b"".join(scope_fields)))
        if resource.schema_url:
            fields.append(_string(b"\x1a", resource.schema_url))
        out.append(_field(b"\x0a", b"".join(fields)))
    return b"".join(out)


# -- propagation and context ----------------------------------------------------------------------

def extract(headers: Mapping[str, str]) -> Context:
    """The remote parent named by `traceparent` / `tracestate` (an empty context if none)."""
    return W3C.extract(headers)


def remote_parent(traceparent: str, tracestate: str | None = None) -> trace.Span:
    """The caller's span named by a `traceparent` header (`INVALID_SPAN` when malformed).

    `TraceContextTextMapPropagator.extract`'s rules, without building a `Context`: a
    fifth of its cost, on every request that carries the header.
    """
    if len(traceparent) > _MAX_TRACEPARENT:
        return INVALID_SPAN
    m = _TRACEPARENT_FULL.match(traceparent)
    if m is None:
        return INVALID_SPAN
    version, trace_id, span_id, flags, rest = m.groups()
    if (trace_id == "0" * 32 or span_id == "0" * 16 or version == "ff"
            or (version == "00" and rest)):
        return INVALID_SPAN
    state = None
    if tracestate is not None and len(tracestate) <= _MAX_TRACESTATE:
        state = TraceState.from_header([tracestate])
    return NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), True,
                                        TraceFlags(int(flags, 16)), state))


def inject(carrier: dict[str, str], span: trace.Span) -> None:
    """Write the W3C `traceparent` (and `tracestate`) for `span` into `carrier`.

    The header `TraceContextTextMapPropagator.inject` writes, formatted directly: a quarter
    of the cost, on every model call.
    """
    trace_id, span_id, _, flags, state, valid = span.get_span_context()
    if not valid:
        return
    carrier["traceparent"] = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
    if state:
        carrier["tracestate"] = state.to_header()


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a valid `traceparent` header, for logs when tracing is off."""
    m = _TRACEPARENT.match(traceparent.strip().lower())
    if m is None or m[1] == "0" * 32:
        return None
    return m[1]


def attach(span: trace.Span) -> Any:
    """Make `span` current in this context; returns a token for `detach`.

    `otel_context.attach(trace.set_span_in_context(span))`, in one step with the default
    (contextvars) runtime context: five calls fewer, for every span made current.
    """
    if _CONTEXT_VAR is None:
        return otel_context.attach(trace.set_span_in_context(span))
    return _CONTEXT_VAR.set(Context({**_CONTEXT_VAR.get(), _SPAN_KEY: span}))


def detach(token: Any) -> None:
    """Undo `attach`, tolerating a token from another task's context.

    Hooks may end in a different task than they started in; OpenTelemetry's own `detach` logs
    an error then. The stale value simply dies with the task that set it.
    """
    if token is None:
        return
    if isinstance(token, contextvars.Token):
        try:  # noqa: SIM105 - hot path: cheaper than contextlib.suppress
            token.var.reset(token)
        except (ValueError, RuntimeError):
            pass
    else:  # pragma: no cover - a non-contextvars runtime context (OTEL_PYTHON_CONTEXT)
        otel_context.detach(token)
