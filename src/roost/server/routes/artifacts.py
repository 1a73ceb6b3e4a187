"""`/v1/artifacts/{id}`: the full payload of a tool result that was offloaded."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from roost.server.requests import StrictJSONRoute
from roost.server.respond import runtime_of, tenant_of

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"], route_class=StrictJSONRoute)


@router.get("/{artifact_id}", responses={200: {"content": {"application/octet-stream": {}}}})
async def get_artifact(artifact_id: str, request: Request) -> Response:
    """The bytes a `tool.result` event's `artifact.id` refers to (tenant-scoped)."""
    data = await runtime_of(request).artifacts.get(tenant_of(request), artifact_id)
    return Response(data, media_type="text/plain; charset=utf-8",
                    headers={"Cache-Control": "private, max-age=31536000, immutable"})
