"""Webhooks: a run's deliveries, and the tenant's signing secret (see docs/webhooks.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import Response

from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of, tenant_of

router = APIRouter(tags=["webhooks"], route_class=StrictJSONRoute)


class AttemptOut(BaseModel):
    at: float
    duration_ms: float
    status_code: int | None
    error: str | None


class DeliveryOut(BaseModel):
    id: str
    url: str
    events: list[str]
    state: str
    event: str | None
    created_at: float
    next_attempt_at: float | None
    attempts: list[AttemptOut]


class DeliveryPage(BaseModel):
    """The run's deliveries (a run has one webhook: none or one item)."""

    items: list[DeliveryOut]


class SecretOut(BaseModel):
    tenant: str
    secret: str


@router.get("/v1/runs/{run_id}/deliveries", response_model=DeliveryPage)
async def run_deliveries(run_id: str, request: Request) -> Response:
    """The webhook deliveries of a run and their attempts: status code, error, duration,
    and when the next attempt is due."""
    runtime = runtime_of(request)
    tenant = tenant_of(request)
    run = await runtime.get_run(tenant, run_id)  # another tenant's run: 404
    delivery = await runtime.webhooks.deliveries(tenant, run.id)
    items: list[dict[str, Any]] = []
    if delivery is not None:
        items.append({
            "id": delivery.id, "url": delivery.url, "events": delivery.events,
            "state": delivery.state, "event": delivery.event,
            "created_at": delivery.created_at,
            "next_attempt_at": delivery.next_at if delivery.state == "pending" else None,
            "attempts": [{"at": a.at, "duration_ms": a.duration_ms,
                          "status_code": a.status_code, "error": a.error}
                         for a in delivery.attempts]})
    return json_response({"items": items})


@router.get("/v1/admin/webhooks/secret", response_model=SecretOut)
async def get_secret(request: Request) -> Response:
    """The caller's tenant's signing secret (created on first use)."""
    tenant = tenant_of(request)
    return json_response({"tenant": tenant,
                          "secret": await runtime_of(request).webhooks.secret(tenant)})


@router.post("/v1/admin/webhooks/secret", response_model=SecretOut)
async def rotate_secret(request: Request) -> Response:
    """Replace the caller's tenant's signing secret; attempts from now on use the new one."""
    tenant = tenant_of(request)
    return json_response({"tenant": tenant,
                          "secret": await runtime_of(request).webhooks.rotate_secret(tenant)})
