"""Fast JSON responses and the request's runtime and tenant."""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import Request
from starlette.responses import Response

from roost.agent import Agent
from roost.auth.principal import PRINCIPAL
from roost.engine.approval import ApprovalPolicy
from roost.runtime.runtime import HostedAgent, Runtime
from roost.sessions.records import DEFAULT_TENANT, Event, RunRecord

_encoder = msgspec.json.Encoder()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """msgspec-encoded JSON: Structs and dicts alike, without FastAPI's jsonable_encoder."""
    return Response(_encoder.encode(body), status_code=status, media_type="application/json",
                    headers=headers)


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def tenant_of(request: Request) -> str:
    """The request's tenant: its principal's (decided by `roost.auth.edge.AuthEdge`, which
    honours the tenant header only from admins and trusted proxies). Routers mounted
    without that edge (tests) fall back to the configured header, else `default`."""
    principal = request.scope.get(PRINCIPAL)
    if principal is not None:
        return principal.tenant  # type: ignore[no-any-return]
    header = request.app.state.tenant_header
    if header:
        value = request.headers.get(header)
        if value:
            return value
    return DEFAULT_TENANT


def turn_body(run: RunRecord, events: list[Event]) -> dict[str, Any]:
    return {"run_id": run.id, "status": run.status, "output": run.output, "usage": run.usage,
            "error": run.error, "events": events}


def _describe(value: Any) -> Any:
    return value.describe() if isinstance(value, ApprovalPolicy) else value


def agent_body(hosted: HostedAgent) -> dict[str, Any]:
    agent: Agent = hosted.agent
    return {
        "name": agent.name,
        "description": agent.description,
        "model": agent.model_ref,
        "state": hosted.state,
        "tools": [{"name": s.name, "description": s.description, "parameters": s.parameters}
                  for s in hosted.tool_specs],
        "limits": {name: getattr(agent.limits, name) for name in agent.limits.__slots__},
        "policies": {name: _describe(getattr(agent.policies, name))
                     for name in agent.policies.__slots__},
    }
