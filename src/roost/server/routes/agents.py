"""`/v1/agents`: what is served, and its lifecycle (pause, resume, stop)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from roost.server.requests import StrictJSONRoute
from roost.server.respond import agent_body, json_response, runtime_of
from roost.server.schemas import AgentOut

router = APIRouter(prefix="/v1/agents", tags=["agents"], route_class=StrictJSONRoute)


@router.get("", response_model=dict[str, list[AgentOut]])
async def list_agents(request: Request) -> Response:
    runtime = runtime_of(request)
    return json_response({"items": [agent_body(h) for h in runtime.agents.values()]})


@router.get("/{name}", response_model=AgentOut)
async def get_agent(name: str, request: Request) -> Response:
    return json_response(agent_body(runtime_of(request).hosted(name)))


@router.post("/{name}/pause", response_model=AgentOut)
async def pause_agent(name: str, request: Request) -> Response:
    """Admit no new runs (queue or reject them per the agent's `when_paused` policy); running
    runs finish and sessions are kept."""
    return json_response(agent_body(await runtime_of(request).change_agent_state(name, "pause")))


@router.post("/{name}/resume", response_model=AgentOut)
async def resume_agent(name: str, request: Request) -> Response:
    """Back to running; turns queued while paused start in order."""
    return json_response(agent_body(await runtime_of(request).change_agent_state(name, "resume")))


@router.post("/{name}/stop", response_model=AgentOut)
async def stop_agent(name: str, request: Request) -> Response:
    """Stop for good (until restart): new turns get 503."""
    return json_response(agent_body(await runtime_of(request).change_agent_state(name, "stop")))
