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
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import (
    ReadableSpan,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace import propagation as trace_propagation
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from roost.errors import ConfigError
from roost.observability.otlp import encode_otlp, export_with
from roost.observability.spans import ApiTracer, LeanSpan, LeanTracer, SpanStarter, span_starter

__all__ = ["ApiTracer", "LeanSpan", "LeanTracer", "SpanStarter", "attach", "build_tracer_provider",
           "detach", "encode_otlp", "export_with", "extract", "inject", "remote_parent",
           "span_starter", "trace_id_of"]



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

def tracing_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """`OTEL_SDK_DISABLED=true`: the standard switch that turns the SDK (here: tracing) off."""
    env = os.environ if environ is None else environ
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def build_tracer_provider(service_name: str, version: str = "") -> TracerProvider:
    """A provider exporting in batches, configured from the standard `OTEL_*` variables.

    - `OTEL_TRACES_EXPORTER`: a comma-separated list of `otlp` (the default: OTLP/HTTP, with
      `OTEL_EXPORTER_OTLP_*`), `console` (spans as JSON on stdout) and `none`.
    - `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, else
      `service_name` (observability.service_name); the other resource attributes are added.
    - the sampler from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: every
      trace; `parentbased_traceidratio` with `0.1` keeps one in ten, and whatever the caller's
      `traceparent` decided), the batching from `OTEL_BSP_*`.
    """
    env = os.environ
    exporters = [name.strip().lower()
                 for name in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if name.strip()]
    unknown = sorted(set(exporters) - {"otlp", "console", "none"})
    if unknown:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unsupported exporter {', '.join(unknown)}",
                          [("OTEL_TRACES_EXPORTER", "use otlp, console or none")])
    # Resource.create reads OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME itself, but the
    # attributes passed here would override them: pass service.name only as the fallback.
    attributes: dict[str, str] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
            "OTEL_RESOURCE_ATTRIBUTES", ""):
        attributes["service.name"] = service_name
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(resource=Resource.create(attributes))
    if "otlp" in exporters:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    if "console" in exporters:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


def _otlp_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as StockExporter,
        )
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "tracing needs the OTLP exporter: pip install opentelemetry-exporter-otlp-proto-http",
            [("observability.tracing", str(exc))],
        ) from exc

    class OTLPSpanExporter(StockExporter):
        """The stock OTLP/HTTP exporter, encoding with `encode_otlp`."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return export_with(self, spans, super().export)

    return OTLPSpanExporter()


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
