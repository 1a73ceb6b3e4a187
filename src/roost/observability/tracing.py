"""Tracing plumbing: the tracer provider, W3C propagation, and context attach/detach.

Spans follow the OpenTelemetry GenAI semantic conventions (see `hooks.py`). Export goes through
a `BatchSpanProcessor` to OTLP/HTTP, configured by the standard variables
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, …): the
hot path only appends a finished span to a queue; a background thread exports.

The provider is Roost's own, not the process-global one: tests and embedders run several
side by side. Instrumentation of other libraries (httpx, asyncpg, …) still nests under Roost's
spans, because the *current context* is shared.
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from roost.errors import ConfigError

W3C = TraceContextTextMapPropagator()

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def build_tracer_provider(service_name: str, version: str = "") -> TracerProvider:
    """A provider exporting over OTLP/HTTP in batches, configured from `OTEL_*` env vars."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "tracing needs the OTLP exporter: pip install 'roost[observability]'",
            [("observability.tracing", str(exc))],
        ) from exc
    attributes = {"service.name": service_name}
    if version:
        attributes["service.version"] = version
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def extract(headers: Mapping[str, str]) -> Context:
    """The remote parent named by `traceparent` / `tracestate` (an empty context if none)."""
    return W3C.extract(headers)


def inject(carrier: dict[str, str], span: trace.Span) -> None:
    """Write the W3C `traceparent` (and `tracestate`) for `span` into `carrier`.

    The header `TraceContextTextMapPropagator.inject` writes, formatted directly: a quarter
    of the cost, on every model call.
    """
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return
    carrier["traceparent"] = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    if ctx.trace_state:
        carrier["tracestate"] = ctx.trace_state.to_header()


def trace_id_of(traceparent: str) -> str | None:
    """The trace id of a valid `traceparent` header, for logs when tracing is off."""
    m = _TRACEPARENT.match(traceparent.strip().lower())
    if m is None or m[1] == "0" * 32:
        return None
    return m[1]


def attach(span: trace.Span) -> Any:
    """Make `span` current in this context; returns a token for `detach`."""
    return otel_context.attach(trace.set_span_in_context(span))


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
