"""`POST /v1/sessions/{id}/turns`, the hot path, served as plain ASGI in front of FastAPI.

Every turn passes here, and under overload so does every refusal, so this endpoint skips what
FastAPI adds per request: its middleware (error pages, telemetry, body limit) and their
wrapped `send`s, matching the path against every route, solving dependencies (measured
in-process: a refused turn cost 137 µs of CPU through FastAPI, most of it routing; see
docs/performance.md for the figure here). It records the route in the scope, as routing
would, so metrics, spans and access logs name it. The body is parsed as strict JSON (orjson) and validated by the same Pydantic model
the FastAPI route declares, so errors are the same problem+json, naming the field.

The FastAPI route (`routes/runs.py`) stays declared: it is the endpoint's OpenAPI entry, and
it serves the turn through `respond` below when the routers are mounted without this
middleware.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from roost.errors import RoostError, StoreUnavailable
from roost.runtime.runtime import RunHandle, Runtime
from roost.server import problems
from roost.server.respond import json_response, turn_body
from roost.server.schemas import TurnCreate
from roost.server.sse import RunEventStream
from roost.sessions.records import DEFAULT_TENANT, RunRecord

log = logging.getLogger("roost.server")

_PATH = re.compile(r"/v1/sessions/([^/]+)/turns")


@dataclass(frozen=True, slots=True)
class TurnRoute:
    """What `scope["route"]` holds for a turn: the template observability labels it by."""

    path: str = "/v1/sessions/{session_id}/turns"


_ROUTE = TurnRoute()
_EMPTY_BODY = [{"loc": ("body",), "msg": "Field required", "type": "missing"}]
_NOT_JSON = [{"loc": ("body",), "type": "content_type",
              "msg": "the body must be JSON (Content-Type: application/json)"}]


class TurnEndpoint:
    """ASGI middleware: answers turn requests itself, passes everything else to `app`."""

    def __init__(self, app: ASGIApp, runtime: Runtime, tenant_header: str | None) -> None:
        self.app = app
        self.runtime = runtime
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _PATH.fullmatch(scope["path"])
            if match is not None:
                scope["route"] = _ROUTE
                try:
                    response = await self._turn(match[1], scope, receive)
                except Exception:
                    # FastAPI's error middleware is behind us: answer as it would, in
                    # problem+json. (A stream that fails once started just ends.)
                    log.exception("unhandled error on POST %s", scope["path"])
                    response = problems.internal_error()
                if response is not None:
                    await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _turn(self, session_id: str, scope: Scope, receive: Receive) -> Response | None:
        tenant = DEFAULT_TENANT
        content_type = accept = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"accept":
                accept = value
            elif name == self.tenant_header and value:
                tenant = value.decode("latin-1")
        body = await _read_body(receive)
        if body is None:
            return None  # the client left before its request was complete
        turn = parse_turn(body, content_type)
        if isinstance(turn, Response):
            return turn
        try:
            return await respond(self.runtime, tenant, session_id, turn,
                                 accept is not None and b"text/event-stream" in accept, receive)
        except RoostError as exc:
            return problems.error_response(exc, "POST", scope["path"])


async def _read_body(receive: Receive) -> bytes | None:
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body  # the usual case: a small body in one message
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_turn(body: bytes, content_type: bytes | None) -> TurnCreate | Response:
    """The request as a `TurnCreate`, or the problem response saying what is wrong with it.

    As FastAPI treats a body: JSON only when the Content-Type says so (`application/json`,
    `application/*+json`); a missing one is not JSON (a browser form cannot send JSON
    without a CORS preflight, one cannot post a turn for a user by tricking a page)."""
    if not body:
        return problems.invalid_body(_EMPTY_BODY)
    if content_type is None or not _is_json(content_type):
        return problems.invalid_body(_NOT_JSON)
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return problems.malformed_json(exc.msg, exc.pos)
    try:
        # from_attributes: FastAPI's wording for a body that is not an object.
        return TurnCreate.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        return problems.invalid_body(list(exc.errors()))


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/")
                                            and media.endswith(b"+json"))


async def respond(runtime: Runtime, tenant: str, session_id: str, turn: TurnCreate,
                  wants_stream: bool, receive: Receive) -> Response:
    """Run one turn: JSON when it ends, or SSE with `"stream": true` or
    `Accept: text/event-stream`. Raises RoostError (→ problem+json)."""
    stream = turn.stream or wants_stream
    handle = await runtime.submit_turn(tenant, session_id, turn.input, stream=stream,
                                       timeout_s=turn.timeout_s, priority=turn.priority)
    if stream:
        return _event_stream(runtime, handle)
    run = await _wait_or_disconnect(runtime, handle, receive)
    if (run.error or {}).get("type") == "store_unavailable":
        # The run could not be recorded: say so as the outage it is, not as a run result.
        raise StoreUnavailable(f"the session store became unreachable during run {run.id}; "
                               "steps recorded before the outage are kept",
                               retry_after=runtime.settings.runtime.store_retry_s)
    return json_response(turn_body(run, handle.events))


def _event_stream(runtime: Runtime, handle: RunHandle) -> RunEventStream:
    policy = runtime.hosted(handle.run.agent).agent.policies.on_disconnect
    return RunEventStream(
        handle, runtime.store, heartbeat_s=runtime.settings.server.heartbeat_s,
        on_disconnect=(lambda h: h.cancel("disconnect")) if policy == "cancel" else None,
        headers={"X-Run-Id": handle.run.id})


async def _wait_or_disconnect(runtime: Runtime, handle: RunHandle,
                              receive: Receive) -> RunRecord:
    """Wait for the run; if the client leaves first and the agent's policy is `cancel`,
    cancel the run (a synchronous caller that left cannot read the answer)."""
    listener = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((handle.done, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not listener.done():
            listener.cancel()
    if not handle.done.done():
        if runtime.hosted(handle.run.agent).agent.policies.on_disconnect == "cancel":
            handle.cancel("disconnect")
        return await handle.wait()
    return handle.done.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
