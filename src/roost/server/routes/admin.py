"""`/v1/admin`: what the runtime is doing, from its primitives' own statistics.

Admins see everything; an operator (`stats:tenant`) sees the same document cut to their
tenant: their running and queued counts and quota, nothing that names another tenant."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from roost.auth.principal import PRINCIPAL
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of
from roost.tools.threads import TOOL_THREADS

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=StrictJSONRoute)


@router.get("/stats")
async def stats(request: Request) -> Response:
    runtime = runtime_of(request)
    admission = runtime.admission.statistics()
    limits = admission.limits
    body: dict[str, Any] = {
        "draining": runtime.draining,
        "running": admission.running,
        "queued": admission.queued,
        "queued_by_tenant": dict(admission.queued_by_tenant),
        "queued_by_priority": dict(admission.queued_by_priority),
        "running_by_tenant": dict(admission.running_by_tenant),
        "admitted": admission.admitted,
        "rejected": dict(admission.rejected),
        "limits": {
            "max_running": limits.max_running,
            "running_limit": admission.running_limit,
            "adaptive_limit": admission.adaptive_limit,
            "max_queued": limits.max_queued,
            "default_quota": asdict(limits.default_quota),
            "tenants": {name: asdict(q) for name, q in limits.tenants.items()},
        },
        "event_loop": {"busy": round(admission.loop_busy, 3),
                       "lag_s": round(admission.loop_lag_s, 4)},
        "runs_active": len(runtime.runs),
        "sessions_busy": len(runtime.lanes),
        "cache": asdict(runtime.cache.statistics()),
        "agents": {name: hosted.state for name, hosted in runtime.agents.items()},
        "fleet": runtime.fleet_statistics(),
        "tool_threads": {agent: asdict(s) for agent, s in TOOL_THREADS.statistics().items()},
    }
    principal = request.scope.get(PRINCIPAL)
    if principal is not None and not principal.is_admin:
        body = _for_tenant(body, principal.tenant)
    return json_response(body)


def _for_tenant(body: dict[str, Any], tenant: str) -> dict[str, Any]:
    def mine(counts: dict[str, Any]) -> dict[str, Any]:
        return {t: n for t, n in counts.items() if t == tenant}

    limits = body["limits"]
    return {
        "tenant": tenant,
        "draining": body["draining"],
        "running": sum(mine(body["running_by_tenant"]).values()),
        "queued": sum(mine(body["queued_by_tenant"]).values()),
        "running_by_tenant": mine(body["running_by_tenant"]),
        "queued_by_tenant": mine(body["queued_by_tenant"]),
        "limits": {"default_quota": limits["default_quota"],
                   "tenants": mine(limits["tenants"])},
        "agents": body["agents"],
    }
