"""What the OpenAI-compatible routes share on the wire: reading a request, OpenAI's error
shape, JSON and server-sent-event responses, and a run's failure as an HTTP error.

OpenAI's error body is `{"error": {"message", "type", "param", "code"}}`; the official SDKs
pick their exception class from the status alone (400 BadRequestError, 401
AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError, 422
UnprocessableEntityError, 429 RateLimitError, >= 500 InternalServerError), and retry 408,
409, 429 and 5xx honouring `Retry-After`. Roost's errors keep their status; `code` carries
Roost's own error type (`session_busy`, `tenant_overloaded`, …).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.types import Receive, Scope, Send

from roost.errors import Overloaded, RoostError
from roost.sessions.records import DEFAULT_TENANT, RunRecord

_encode = msgspec.json.Encoder().encode

#: OpenAI's `error.type` for a status
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "conflict_error", 412: "invalid_request_error",
          413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}

#: the HTTP status a failed run answers with (the request was fine; the run was not)
_RUN_FAILURE_STATUS = {"model_error": 502, "timed_out": 504, "store_unavailable": 503,
                       "cancelled": 500, "max_steps_exceeded": 500}


class Request(msgspec.Struct):
    """What the protocol routes read of a request."""

    tenant: str
    headers: dict[bytes, bytes]
    body: bytes


from roost.auth.principal import PRINCIPAL  # noqa: E402 - where the auth edge leaves it
from roost.server.sse import wait_disconnect  # noqa: E402 - the one disconnect listener


def tenant_of(scope: Scope, headers: dict[bytes, bytes], tenant_header: bytes | None) -> str:
    """The request's tenant: its principal's when the auth edge decided it (the tenant
    header included), else the configured trusted header, else `default` — as the native
    routes decide it (`server/hotpath.py`)."""
    principal = scope.get(PRINCIPAL)
    if principal is not None:
        return str(principal.tenant)
    if tenant_header is not None and headers.get(tenant_header):
        return headers[tenant_header].decode("latin-1")
    return DEFAULT_TENANT


async def read_request(scope: Scope, receive: Receive, tenant_header: bytes | None) -> Request | None:
    """The request's headers and whole body; None when the client left first."""
    headers = dict(scope["headers"])
    tenant = tenant_of(scope, headers, tenant_header)
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return Request(tenant=tenant, headers=headers, body=b"".join(chunks))


class ProtocolError(Exception):
    """A request the protocol refuses before it reaches the runtime (status 400 unless said)."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code


def error_body(message: str, status: int, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class JSONResponse:
    """A complete JSON response, plain ASGI."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: Any, status: int = 200,
                 headers: dict[str, str] | None = None) -> None:
        self.body = _encode(body)
        self.status = status
        self.headers = [(b"content-type", b"application/json"),
                        (b"content-length", b"%d" % len(self.body))]
        self.headers.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in (headers or {}).items())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status,
                    "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def error_response(status: int, message: str, *, param: str | None = None,
                   code: str | None = None, retry_after: float | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(error_body(message, status, param=param, code=code), status, extra)


def roost_error(exc: RoostError) -> JSONResponse:
    """A Roost error in OpenAI's shape, with its own status and Retry-After."""
    retry_after = exc.retry_after if isinstance(exc, Overloaded) else exc.details.get("retry_after")
    param = getattr(exc, "field", None)
    return error_response(exc.status, exc.message, param=param, code=exc.type,
                          retry_after=retry_after)


def protocol_error(exc: ProtocolError) -> JSONResponse:
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code)


def run_failure(run: RunRecord, headers: dict[str, str]) -> JSONResponse:
    """A run that ended without an answer: 5xx in OpenAI's shape, naming the run."""
    error = run.error or {}
    kind = str(error.get("type") or run.status)
    status = _RUN_FAILURE_STATUS.get(kind, 500)
    message = str(error.get("message") or f"run {run.id} ended {run.status}")
    retry_after = 1.0 if status == 503 else None
    return error_response(status, message, code=kind, retry_after=retry_after, headers=headers)


async def wait_or_disconnect(done: asyncio.Future[Any], receive: Receive) -> bool:
    """Wait for `done`; False when the client left first."""
    listener = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((done, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not listener.done():
            listener.cancel()
    return done.done()


def data_frame(payload: Any) -> bytes:
    return b"data: " + _encode(payload) + b"\n\n"


def event_frame(event: str, payload: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


def decode(body: bytes, kind: type[Any]) -> Any:
    """The body as `kind` (a msgspec Struct), or ProtocolError 400 saying what is wrong."""
    if not body:
        raise ProtocolError("the request body is empty; send a JSON object")
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        param = None
        text = str(exc)
        if "at `$." in text:
            param = text.rsplit("at `$.", 1)[1].rstrip("`")
        raise ProtocolError(f"invalid request: {text}", param=param) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"the request body is not valid JSON: {exc}") from None
