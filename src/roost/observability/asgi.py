"""`ObservabilityMiddleware`: request ids, log context, server spans, HTTP metrics, access log.

Pure ASGI (Starlette's `BaseHTTPMiddleware` costs a task and a stream per request), outermost:

    app = obs.asgi_middleware(app)                                   # wrap any ASGI app
    app.add_middleware(ObservabilityMiddleware, observability=obs)   # or inside Starlette

Per HTTP request (and WebSocket connection):

- `X-Request-ID` is taken from the request when well-formed, else generated, and echoed on the
  response; it is bound into the log context with the trace id for everything the request logs.
- An incoming W3C `traceparent` is continued by a server span `{method} {route}`, current
  while the app runs (log lines carry its trace and span ids); with tracing off the header's
  trace id still goes into the logs.
- `roost_http_requests_total{route,method,status}` and `roost_http_request_duration_seconds`
  label by route *template* (`/v1/sessions/{session_id}`), never the raw path: bounded series.
  Requests no route matched are labelled "unmatched". Duration runs to the last byte sent, so
  a long SSE stream lands in the top buckets.
- One access log line (`roost.access`) per request: method, path (no query string: it may hold
  secrets), route, status, duration_ms, bytes, client.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from roost.observability import logs, tracing
from roost.observability.metrics import OTHER

if TYPE_CHECKING:
    from roost.observability import Observability

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("roost.access")

UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "WEBSOCKET"})
# What we accept as a caller's request id: it goes into every log line and a response header.
_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=@-]{1,128}$")


class ObservabilityMiddleware:
    """See the module docstring."""

    def __init__(self, app: ASGIApp, observability: Observability) -> None:
        self.app = app
        self._m = observability.metrics
        self._spans = tracing.span_starter(observability.tracer)
        self._access_log = observability.config.access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = traceparent = tracestate = None
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                request_id = value
            elif name == b"traceparent":
                traceparent = value
            elif name == b"tracestate":
                tracestate = value
        if request_id is None or _REQUEST_ID.match(request_id) is None:
            # A correlation id, not a secret: 128 pseudo-random bits (reseeded in every forked
            # worker) at a sixth of uuid4's cost, which reads the OS's entropy each time.
            request_id = b"%032x" % random.getrandbits(128)
        method = scope.get("method", "GET") if kind == "http" else "WEBSOCKET"
        root_path = scope.get("root_path", "")

        span = ctx_token = None
        trace_id: str | None = None
        spans = self._spans
        if spans is not None:
            parent = None  # the current context's span: none in a plain server
            if traceparent is not None:
                parent = tracing.remote_parent(
                    traceparent.decode("latin-1"),
                    tracestate.decode("latin-1") if tracestate is not None else None)
            span = spans.start(method, SpanKind.SERVER, _request_attributes(scope, method),
                               parent)
            # Current for the app: a run the request starts is a child of this span. Log lines
            # take their trace and span ids from the current span: nothing to bind.
            ctx_token = tracing.attach(span)
        elif traceparent is not None:
            trace_id = tracing.trace_id_of(traceparent.decode("latin-1"))
        rid = request_id.decode("ascii")
        scope["roost.request_id"] = rid  # for the audit log (roost.auth.audit)
        log_token = (logs.bind(request_id=rid, trace_id=trace_id) if trace_id
                     else logs.bind(request_id=rid))

        status = 0
        sent = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent
            mtype = message["type"]
            if mtype == "http.response.body":
                sent += len(message.get("body", b""))
            elif mtype == "http.response.start" or mtype == "websocket.accept":
                status = message.get("status", 101)
                headers = list(message.get("headers") or ())
                headers.append((b"x-request-id", request_id))
                message = {**message, "headers": headers}
            elif mtype == "websocket.close" and status == 0:
                status = 403  # closed before accept: the server's answer is 403
            await send(message)

        error: BaseException | None = None
        try:
            await self.app(scope, receive, send_wrapper)
            if status == 0:
                status = 500  # returned without answering: the server sends a 500
        except asyncio.CancelledError:
            if status == 0:
                status = 499  # the client went away (or shutdown) before an answer
            raise
        except BaseException as exc:
            if status == 0:
                status = 500
            error = exc
            raise
        finally:
            duration = time.perf_counter() - start
            route = route_template(scope, root_path)
            m = self._m
            if m is not None:
                route_l = m.guard("route")(route)
                method_l = method if method in _METHODS else OTHER
                m.child(m.http_requests, route_l, method_l, str(status)).inc()
                m.child(m.http_duration, route_l, method_l).observe(duration)
            if self._access_log and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info("request", extra={
                    "method": method, "path": scope.get("path", ""), "route": route,
                    "status": status, "duration_ms": round(duration * 1000, 2),
                    "bytes": sent, "client": client[0] if client else None})
            if span is not None:
                if span.is_recording():
                    attributes: dict[str, Any] = {"http.response.status_code": status}
                    if route != UNMATCHED:
                        span.update_name(f"{method} {route}")
                        attributes["http.route"] = route
                    if error is not None:
                        attributes["error.type"] = type(error).__qualname__
                        span.set_status(Status(StatusCode.ERROR))
                    elif status >= 500:
                        attributes["error.type"] = str(status)
                        span.set_status(Status(StatusCode.ERROR))
                    span.set_attributes(attributes)
                span.end()
                tracing.detach(ctx_token)
            logs.unbind(log_token)


def route_template(scope: Scope, root_path: str = "") -> str:
    """The matched route's template, with the prefix of any mounts it sits under.

    Starlette (and FastAPI) record the matched route in `scope["route"]` — the innermost one
    — and grow `root_path` by each mount's matched prefix.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    current_root = scope.get("root_path", "")
    prefix = current_root[len(root_path):] if current_root.startswith(root_path) else ""
    if hasattr(route, "routes") and hasattr(route, "app"):  # a Mount answering itself
        return prefix + "/{path}"
    return prefix + path


def _request_attributes(scope: Scope, method: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": scope.get("path", ""),
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
    for name, value in scope.get("headers") or ():
        if name == b"user-agent":
            attributes["user_agent.original"] = value.decode("latin-1")[:256]
            break
    return attributes
