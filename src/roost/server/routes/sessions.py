"""`/v1/sessions`: create, list, read, patch state (compare-and-set), delete, events."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from roost.errors import InvalidInput, PreconditionFailed, VersionConflict
from roost.runtime.runtime import Runtime
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of, tenant_of
from roost.server.schemas import EventPage, SessionCreate, SessionOut, SessionPage, SessionPatch

router = APIRouter(tags=["sessions"], route_class=StrictJSONRoute)


@router.post("/v1/agents/{name}/sessions", status_code=201, response_model=SessionOut)
async def create_session(name: str, request: Request,
                         body: SessionCreate | None = None) -> Response:
    """Create a session. `create_app` serves this path from its hot path (`hotpath.py`)
    through `created_session` too; this route is its OpenAPI entry."""
    return await created_session(runtime_of(request), tenant_of(request), name,
                                 body or SessionCreate(), request.headers.get("idempotency-key"))


async def created_session(runtime: Runtime, tenant: str, agent: str,
                          body: SessionCreate, idempotency_key: str | None = None) -> Response:
    """201 with the new session (or, for a repeated `Idempotency-Key`, the session the
    first request created), or raises RoostError (→ problem+json)."""
    limit = runtime.settings.sessions.max_state_bytes
    _check_json(body.state, "state", limit)
    _check_json(body.metadata, "metadata", limit)
    session = await runtime.create_session(tenant, agent, user_id=body.user_id,
                                           state=body.state, metadata=body.metadata,
                                           idempotency_key=idempotency_key)
    return json_response(session, status=201, headers={"Location": f"/v1/sessions/{session.id}"})


@router.get("/v1/sessions", response_model=SessionPage)
async def list_sessions(request: Request, agent: str | None = None, user_id: str | None = None,
                        cursor: str | None = None,
                        limit: int = Query(50, ge=1, le=1000)) -> Response:
    runtime = runtime_of(request)
    limit = min(limit, runtime.settings.server.max_list_limit)
    page = await runtime.list_sessions(tenant_of(request), agent=agent, user_id=user_id,
                                       cursor=cursor, limit=limit)
    return json_response(page)


@router.get("/v1/sessions/{session_id}", response_model=SessionOut,
            responses={304: {"description": "If-None-Match names the current version"}})
async def get_session(session_id: str, request: Request,
                      if_none_match: str | None = Header(None)) -> Response:
    """The session; its `ETag` is its version, so `If-None-Match` polls cheaply (304)."""
    session = await runtime_of(request).get_session(tenant_of(request), session_id)
    etag = f'"{session.version}"'
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    return json_response(session, headers={"ETag": etag})


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison: `*`, or any listed tag equal once `W/` is dropped."""
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


@router.patch("/v1/sessions/{session_id}", response_model=SessionOut)
async def patch_session(session_id: str, body: SessionPatch, request: Request,
                        if_match: str | None = Header(None)) -> Response:
    """Merge a state delta. `If-Match: <version>` makes it compare-and-set (412 on mismatch)."""
    expected = None
    if if_match is not None and if_match.strip() != "*":  # RFC 9110: * matches any version
        try:
            expected = int(if_match.strip().strip('"').removeprefix("W/").strip('"'))
        except ValueError:
            raise InvalidInput("If-Match must be a session version number",
                               field="If-Match") from None
    _check_json(body.state, "state", runtime_of(request).settings.sessions.max_state_bytes)
    try:
        session = await runtime_of(request).patch_session(tenant_of(request), session_id,
                                                          body.state, expected)
    except VersionConflict as exc:
        raise PreconditionFailed(f"the session is at version {exc.actual}, not {expected}",
                                 version=exc.actual) from None
    return json_response(session, headers={"ETag": f'"{session.version}"'})


@router.delete("/v1/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, request: Request) -> Response:
    await runtime_of(request).delete_session(tenant_of(request), session_id)
    return Response(status_code=204)


@router.get("/v1/sessions/{session_id}/events", response_model=EventPage)
async def list_events(session_id: str, request: Request,
                      after: int = Query(0, ge=0, le=2**63 - 1),
                      limit: int = Query(100, ge=1, le=1000)) -> Response:
    runtime = runtime_of(request)
    tenant = tenant_of(request)
    await runtime.get_session(tenant, session_id)  # 404 for an unknown session, not []
    events = await runtime.read_events(tenant, session_id, after=after, limit=limit)
    next_after = events[-1].seq if len(events) == limit else None
    return json_response({"items": events, "next_after": next_after})


def _check_json(value: dict[str, object], field: str, limit: int) -> None:
    """Storable JSON within the size limit, or a 422 naming the field."""
    if not value:
        return
    try:
        size = len(orjson.dumps(value))
    except TypeError as exc:  # e.g. integers beyond 64 bits
        raise InvalidInput(f"{field} is not storable JSON: {exc}", field=field) from None
    if size > limit:
        raise InvalidInput(f"{field} is larger than {limit} bytes", field=field)
