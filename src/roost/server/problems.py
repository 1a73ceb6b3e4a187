"""Roost errors → RFC 9457 `application/problem+json`, in one place.

    {"type": "urn:roost:problem:session_not_found", "title": "Not Found", "status": 404,
     "detail": "no session 'ses_…'", "field": null}

A rejected request never reaches the runtime's state: validation happens before any write.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import msgspec
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from roost.errors import InvalidInput, Overloaded, RoostError

log = logging.getLogger("roost.server")

PROBLEM_JSON = "application/problem+json"


class ProblemResponse(Response):
    """A problem+json response built without Starlette's header assembly: under overload
    every refusal is one of these (see `problem`)."""

    media_type = PROBLEM_JSON

    def __init__(self, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self.status_code = status
        self.background = None
        self.body = body
        self.raw_headers = [(b"content-length", b"%d" % len(body)),
                            (b"content-type", _PROBLEM_JSON), *headers]


_PROBLEM_JSON = PROBLEM_JSON.encode()


def problem(status: int, type_: str, detail: str, *, field: str | None = None,
            errors: list[dict[str, Any]] | None = None, retry_after: float | None = None,
            headers: dict[str, str] | None = None) -> Response:
    seconds = None if retry_after is None else max(1, round(retry_after))
    if errors is None and headers is None:
        # Refusals repeat themselves (same type, detail and Retry-After): encoded once.
        return ProblemResponse(status, *_encoded(status, type_, detail, field, seconds))
    body, raw = _encode_problem(status, type_, detail, field, errors, seconds)
    raw.extend((k.lower().encode("latin-1"), v.encode("latin-1"))
               for k, v in (headers or {}).items())
    return ProblemResponse(status, body, raw)


@functools.lru_cache(maxsize=512)
def _encoded(status: int, type_: str, detail: str, field: str | None,
             seconds: int | None) -> tuple[bytes, tuple[tuple[bytes, bytes], ...]]:
    body, raw = _encode_problem(status, type_, detail, field, None, seconds)
    return body, tuple(raw)


def _encode_problem(status: int, type_: str, detail: str, field: str | None,
                    errors: list[dict[str, Any]] | None,
                    seconds: int | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body: dict[str, Any] = {
        "type": f"urn:roost:problem:{type_}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    if errors:
        body["errors"] = errors
    raw: list[tuple[bytes, bytes]] = []
    if seconds is not None:
        raw.append((b"retry-after", b"%d" % seconds))
        body["retry_after"] = seconds
    return msgspec.json.encode(body), raw


def roost_error_response(exc: RoostError) -> Response:
    retry_after = exc.retry_after if isinstance(exc, Overloaded) else exc.details.get("retry_after")
    field = exc.field if isinstance(exc, InvalidInput) else None
    run_id = exc.details.get("run_id") if exc.status >= 500 else None
    # An outage during a run names the run where clients look for it on every turn
    # response: its outcome can be fetched once the store answers.
    headers = {"X-Run-Id": run_id, "Location": f"/v1/runs/{run_id}"} if run_id else None
    guardrail = exc.details.get("guardrail")
    errors = None if guardrail is None else [  # which guardrail refused, and why
        {"field": field or "input", "type": exc.type, "guardrail": guardrail,
         "message": exc.details.get("reason", exc.message)}]
    return problem(exc.status, exc.type, exc.message, field=field, errors=errors,
                   retry_after=retry_after, headers=headers)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return ".".join(parts) or "body"


def error_response(exc: RoostError, method: str, path: str) -> Response:
    """A RoostError raised while serving `method path`; server-side failures are logged."""
    if exc.status >= 500 and not isinstance(exc, Overloaded):
        log.warning("%s %s: %s", method, path, exc.message)
    return roost_error_response(exc)


def malformed_json(reason: str, position: int | None) -> Response:
    """400: the body is not (strict) JSON; `reason` and `position` from the parser."""
    return problem(400, "malformed_json",
                   f"the request body is not valid JSON: {reason}".rstrip(": "),
                   field="body", errors=[{"field": "body", "message": str(reason),
                                         "type": "json_invalid", "position": position}])


def invalid_body(raw: list[Any]) -> Response:
    """422 from Pydantic's errors (`ValidationError.errors()`), naming the first field."""
    errors = [{"field": _location(e.get("loc", ())), "message": e.get("msg", "invalid"),
               "type": e.get("type", "invalid")} for e in raw]
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return problem(422, "invalid_input", f"{first['field']}: {first['message']}",
                   field=first["field"], errors=errors)


def internal_error() -> Response:
    """500 for a bug: the details go to the log, never to the client."""
    return problem(500, "internal_error", "an internal error occurred; it has been logged")


def install(app: FastAPI) -> None:
    @app.exception_handler(RoostError)
    async def _roost(request: Request, exc: RoostError) -> Response:
        return error_response(exc, request.method, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        raw = exc.errors()
        invalid_json = next((e for e in raw if e.get("type") == "json_invalid"), None)
        if invalid_json is not None:
            return malformed_json((invalid_json.get("ctx") or {}).get("error", ""),
                                  invalid_json.get("loc", ("body", None))[-1])
        return invalid_body(list(raw))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem(exc.status_code, type_, str(exc.detail),
                       headers=dict(exc.headers) if exc.headers else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:  # pragma: no cover
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return internal_error()
