"""`/healthz` (the process is alive) and `/readyz` (send it traffic)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from roost.errors import RoostError
from roost.server.problems import problem
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of

router = APIRouter(tags=["health"], route_class=StrictJSONRoute)

READY_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    if runtime.draining:
        return problem(503, "draining", "the server is shutting down", retry_after=1)
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await runtime.ready()
    except TimeoutError:
        return problem(503, "store_unavailable", f"the store did not answer in {READY_TIMEOUT_S} s",
                       retry_after=1)
    except RoostError as exc:
        return problem(503, exc.type, exc.message, retry_after=1)
    return json_response({"status": "ready", "store": runtime.store.backend})
