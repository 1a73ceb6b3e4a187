"""`/v1/artifacts/{id}`: the full payload of a tool result that was offloaded, and
`/v1/sessions/{session_id}/artifacts/{id}`: the same, as an artifact of that session.

Artifacts are content-addressed per tenant, not per session: the session route is the one
that can be scoped to a user (`auth.user_scoped`: the auth edge checks the session is the
caller's, and the route that the artifact is referenced in that session's log). A
user-scoped user gets 404 from the tenant-wide route.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import APIRouter, Request
from starlette.responses import Response

from roost.errors import ArtifactNotFound
from roost.runtime.runtime import Runtime
from roost.server.requests import StrictJSONRoute
from roost.server.respond import runtime_of, tenant_of

router = APIRouter(tags=["artifacts"], route_class=StrictJSONRoute)

_BYTES: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {}}}}
_PAGE = 1000


def _artifact(data: bytes) -> Response:
    return Response(data, media_type="text/plain; charset=utf-8",
                    headers={"Cache-Control": "private, max-age=31536000, immutable"})


@router.get("/v1/artifacts/{artifact_id}", responses=_BYTES)
async def get_artifact(artifact_id: str, request: Request) -> Response:
    """The bytes a `tool.result` event's `artifact.id` refers to (tenant-scoped)."""
    return _artifact(await runtime_of(request).artifacts.get(tenant_of(request), artifact_id))


@router.get("/v1/sessions/{session_id}/artifacts/{artifact_id}", responses=_BYTES)
async def get_session_artifact(session_id: str, artifact_id: str, request: Request) -> Response:
    """The bytes of an artifact referenced in this session's log (404 otherwise)."""
    runtime, tenant = runtime_of(request), tenant_of(request)
    await runtime.get_session(tenant, session_id)  # 404 for an unknown session
    if not await _referenced(runtime, tenant, session_id, artifact_id):
        raise ArtifactNotFound(f"no artifact {artifact_id}", artifact_id=artifact_id)
    return _artifact(await runtime.artifacts.get(tenant, artifact_id))


async def _referenced(runtime: Runtime, tenant: str, session_id: str, artifact_id: str) -> bool:
    """The id appears in an event of the session (a tool result's `artifact.id`, or any
    other reference a later event kind carries): a page of the log at a time."""
    if len(artifact_id) != 64:
        return False
    needle = artifact_id.encode()
    after = 0
    while True:
        events = await runtime.read_events(tenant, session_id, after=after, limit=_PAGE)
        for event in events:
            if event.type != "message" and needle in msgspec.json.encode(event.data):
                return True
        if len(events) < _PAGE:
            return False
        after = events[-1].seq
