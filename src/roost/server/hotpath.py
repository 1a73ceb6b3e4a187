"""The hot paths, served as plain ASGI in front of FastAPI: `POST /v1/sessions/{id}/turns`
(every turn, and under overload every refusal) and `POST /v1/agents/{name}/sessions` (a new
conversation: one per few turns).

What FastAPI adds per request is most of these requests' cost: its middleware (error pages,
telemetry, body limit) and their wrapped `send`s, matching the path against every route,
solving dependencies. Measured in process: a refused turn cost 137 µs of CPU through FastAPI,
most of it routing (29 µs here); a created session 340–355 µs (see docs/performance.md for
the figure here). The bodies are parsed as strict JSON (orjson) and validated by the same
Pydantic models the FastAPI routes declare, so errors are the same problem+json, naming the
field. The routes are recorded in the scope, as routing would, so metrics, spans and access
logs name them. The FastAPI routes stay declared: they are the OpenAPI entries, and they
serve these paths when the routers are mounted without this middleware.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from roost.auth.principal import PRINCIPAL
from roost.errors import RoostError, UnsupportedMediaType
from roost.runtime.runtime import Runtime
from roost.server import problems, turns
from roost.server.routes.sessions import created_session
from roost.server.schemas import SessionCreate, TurnCreate
from roost.server.turns import prefers_async
from roost.sessions.records import DEFAULT_TENANT

log = logging.getLogger("roost.server")

M = TypeVar("M", bound=BaseModel)

_TURN = re.compile(r"/v1/sessions/([^/]+)/turns")
_SESSIONS = re.compile(r"/v1/agents/([^/]+)/sessions")
_EMPTY_BODY = [{"loc": ("body",), "msg": "Field required", "type": "missing"}]


@dataclass(frozen=True, slots=True)
class Route:
    """What `scope["route"]` holds for a hot path: the template observability labels it by."""

    path: str


_TURN_ROUTE = Route("/v1/sessions/{session_id}/turns")
_SESSIONS_ROUTE = Route("/v1/agents/{name}/sessions")


@dataclass(slots=True)
class Request:
    """What the hot paths read of a request: its headers of interest and its body."""

    tenant: str
    content_type: bytes | None
    accept: bytes | None
    body: bytes
    idempotency_key: str | None = None
    respond_async: bool = False  # Prefer: respond-async (RFC 7240)


class HotPath:
    """ASGI middleware: answers the hot paths itself, passes everything else to `app`."""

    def __init__(self, app: ASGIApp, runtime: Runtime, tenant_header: str | None) -> None:
        self.app = app
        self.runtime = runtime
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            match = _TURN.fullmatch(path)
            route = _TURN_ROUTE
            if match is None:
                match = _SESSIONS.fullmatch(path)
                route = _SESSIONS_ROUTE
            if match is not None:
                scope["route"] = route
                try:
                    response = await self._answer(route, match[1], scope, receive)
                except Exception:
                    # FastAPI's error middleware is behind us: answer as it would, in
                    # problem+json. (A stream that fails once started just ends.)
                    log.exception("unhandled error on POST %s", path)
                    response = problems.internal_error()
                if response is not None:
                    await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, route: Route, name: str, scope: Scope,
                      receive: Receive) -> Response | None:
        request = await self._read(scope, receive)
        if request is None:
            return None  # the client left before its request was complete
        try:
            if route is _TURN_ROUTE:
                turn = parse_body(request.body, request.content_type, TurnCreate)
                if isinstance(turn, Response):
                    return turn
                return await turns.respond(self.runtime, request.tenant, name, turn,
                                           request.accept is not None
                                           and b"text/event-stream" in request.accept, receive,
                                           request.idempotency_key, request.respond_async)
            # The body is optional: without one (or `null`), a session with nothing set.
            body = parse_body(request.body, request.content_type, SessionCreate,
                              absent=SessionCreate())
            if isinstance(body, Response):
                return body
            return await created_session(self.runtime, request.tenant, name, body,
                                         request.idempotency_key)
        except RoostError as exc:
            return problems.error_response(exc, "POST", scope["path"])

    async def _read(self, scope: Scope, receive: Receive) -> Request | None:
        # The principal's tenant, as `AuthEdge` decided it (tenant header included); without
        # that edge in front (tests mounting this alone), the configured header.
        principal = scope.get(PRINCIPAL)
        tenant = DEFAULT_TENANT if principal is None else principal.tenant
        content_type = accept = key = None
        respond_async = False
        for header, value in scope["headers"]:
            if header == b"content-type":
                content_type = value
            elif header == b"accept":
                accept = value
            elif header == self.tenant_header and value and principal is None:
                tenant = value.decode("latin-1")
            elif header == b"idempotency-key":
                key = value.decode("latin-1")
            elif header == b"prefer":
                respond_async = prefers_async(value.decode("latin-1"))
        body = await _read_body(receive)
        return None if body is None else Request(tenant, content_type, accept, body, key,
                                                 respond_async)


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


def parse_body(body: bytes, content_type: bytes | None, model: type[M], *,
               absent: M | None = None) -> M | Response:
    """The request as a `model`, or the problem response saying what is wrong with it.

    As FastAPI treats a body: JSON only when the Content-Type says so (`application/json`,
    `application/*+json`); a missing one is not JSON (a browser form cannot send JSON
    without a CORS preflight: one cannot post a turn for a user by tricking a page). An
    optional body (`absent`: what it means when there is none) may be empty or `null`."""
    if not body:
        return absent if absent is not None else problems.invalid_body(_EMPTY_BODY)
    if content_type is None or not _is_json(content_type):
        return problems.roost_error_response(UnsupportedMediaType(
            "the body must be JSON: send Content-Type: application/json"))
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return problems.malformed_json(exc.msg, exc.pos)
    if data is None and absent is not None:
        return absent
    try:
        # from_attributes: FastAPI's wording for a body that is not an object.
        return model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        return problems.invalid_body(list(exc.errors()))


def _is_json(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/")
                                            and media.endswith(b"+json"))
