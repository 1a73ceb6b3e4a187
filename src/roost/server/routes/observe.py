"""`/metrics` (Prometheus) and `/v1/admin/profile` (a CPU profile of the live server)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from roost.observability import Observability
from roost.server.requests import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute)

_MEDIA = {"text": "text/plain; charset=utf-8", "speedscope": "application/json",
          "html": "text/html; charset=utf-8"}


def _observability(request: Request) -> Observability:
    return request.app.state.observability  # type: ignore[no-any-return]


@router.get("/metrics", tags=["observability"], include_in_schema=False)
async def metrics(request: Request) -> Response:
    # On the loop, not a thread: the stats providers read runtime state that is not
    # thread-safe.
    body, content_type = _observability(request).metrics_response()
    return Response(body, media_type=content_type)


@router.get("/v1/admin/profile", tags=["admin"])
async def profile(request: Request, seconds: float = Query(5, ge=1, le=60),
                  format: Literal["text", "speedscope", "html"] = "text") -> Response:
    """Sample the live event loop for `seconds` and return a pyinstrument profile.
    One profile at a time (409 otherwise). Admin-only once API keys exist."""
    report = await _observability(request).profile(seconds, format=format)
    return Response(report, media_type=_MEDIA[format])
