"""`InstrumentedStore`: a `Store` wrapper timing every operation, with a span per call.

    store = obs.instrument_store(open_store(url))   # still a Store; same errors, same results

`roost_store_operation_seconds{backend, operation}` times every call (failures included);
`roost_store_errors_total{backend, operation, kind}` counts the ones that raised, by Roost
error type (`version_conflict`, `session_not_found`, `store_unavailable`, …). With tracing on,
each call is a client span `{operation} {backend}` carrying `db.system.name` and
`db.operation.name`, child of the current run or request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from roost.errors import RoostError
from roost.observability import tracing
from roost.observability.metrics import Metrics
from roost.sessions.store import Store
from roost.sessions.wrapper import StoreWrapper

T = TypeVar("T")

_DB_SYSTEM = {"postgres": "postgresql", "sqlite": "sqlite", "redis": "redis", "memory": "memory"}


class InstrumentedStore(StoreWrapper):
    """A `Store` that measures the `Store` it wraps. Build it with `Observability.instrument_store`.

    `StoreWrapper` forwards every protocol method through `_call`, which this class times
    and traces: a method added to the protocol is measured without a change here.
    """

    def __init__(self, inner: Store, *, metrics: Metrics | None, tracer: trace.Tracer | None):
        super().__init__(inner)
        self._m = metrics
        self._spans = tracing.span_starter(tracer)
        self._db_system = _DB_SYSTEM.get(self.backend, self.backend)

    async def _call(self, operation: str, awaitable: Awaitable[T]) -> T:
        span = ctx_token = None
        spans = self._spans
        if spans is not None:
            span = spans.start(f"{operation} {self.backend}", SpanKind.CLIENT,
                               {"db.system.name": self._db_system,
                                "db.operation.name": operation})
            # Current for the driver's own instrumentation; one coroutine, so properly nested.
            ctx_token = tracing.attach(span)
        start = time.perf_counter()
        kind: str | None = None
        try:
            return await awaitable
        except asyncio.CancelledError:
            kind = "cancelled"
            raise
        except RoostError as exc:
            kind = exc.type
            raise
        except Exception as exc:  # a backend bug; still counted, still raised
            kind = type(exc).__name__
            raise
        finally:
            m = self._m
            if m is not None:
                m.child(m.store_latency, self.backend, operation).observe(
                    time.perf_counter() - start)
                if kind is not None and kind != "cancelled":
                    m.child(m.store_errors, self.backend, operation,
                            m.guard("store_error")(kind)).inc()
            if span is not None:
                if kind is not None and span.is_recording():
                    span.set_attribute("error.type", kind)
                    if kind != "cancelled":
                        span.set_status(Status(StatusCode.ERROR))
                span.end()
                tracing.detach(ctx_token)
