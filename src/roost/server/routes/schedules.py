"""Schedules: `POST/GET /v1/agents/{name}/schedules`, `GET/PATCH/DELETE …/schedules/{id}`
(see `roost.background.scheduler`)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from roost.auth.edge import principal_of
from roost.background.records import Schedule
from roost.runtime.runtime import Runtime
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of, tenant_of

router = APIRouter(tags=["schedules"], route_class=StrictJSONRoute)


class ScheduleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str = Field(..., min_length=1, max_length=200,
                      description="croniter: five fields, or six with seconds last")
    timezone: str = Field("UTC", min_length=1, max_length=64, description="IANA time zone")
    input: str = Field(..., min_length=1, description="the message each run starts with")
    session_policy: Literal["new", "fixed"] = "new"
    session_id: str | None = None
    enabled: bool = True
    catch_up: Literal["skip", "run_once"] = "skip"


class SchedulePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = None
    cron: str | None = Field(None, min_length=1, max_length=200)
    timezone: str | None = Field(None, min_length=1, max_length=64)
    input: str | None = Field(None, min_length=1)
    catch_up: Literal["skip", "run_once"] | None = None


class ScheduleOut(BaseModel):
    id: str
    agent: str
    cron: str
    timezone: str
    input: str
    session_policy: str
    session_id: str | None
    enabled: bool
    catch_up: str
    created_at: float
    updated_at: float
    last_tick: float | None
    last_run_id: str | None
    next_fire_at: float | None


class SchedulePage(BaseModel):
    items: list[ScheduleOut]


def _out(runtime: Runtime, schedule: Schedule) -> dict[str, Any]:
    return {"id": schedule.id, "agent": schedule.agent, "cron": schedule.cron,
            "timezone": schedule.timezone, "input": schedule.input,
            "session_policy": schedule.session_policy, "session_id": schedule.session_id,
            "enabled": schedule.enabled, "catch_up": schedule.catch_up,
            "created_at": schedule.created_at, "updated_at": schedule.updated_at,
            "last_tick": schedule.last_tick, "last_run_id": schedule.last_run_id,
            "next_fire_at": runtime.scheduler.next_fire(schedule)}


@router.post("/v1/agents/{name}/schedules", response_model=ScheduleOut, status_code=201)
async def create_schedule(name: str, body: ScheduleCreate, request: Request) -> Response:
    runtime = runtime_of(request)
    schedule = await runtime.scheduler.create(
        tenant_of(request), name, cron=body.cron, input=body.input, timezone=body.timezone,
        session_policy=body.session_policy, session_id=body.session_id, enabled=body.enabled,
        catch_up=body.catch_up, user_id=principal_of(request.scope).user_id)
    return json_response(_out(runtime, schedule), status=201,
                         headers={"Location": f"/v1/agents/{name}/schedules/{schedule.id}"})


@router.get("/v1/agents/{name}/schedules", response_model=SchedulePage)
async def list_schedules(name: str, request: Request) -> Response:
    runtime = runtime_of(request)
    runtime.hosted(name)  # an unknown agent: 404
    found = await runtime.scheduler.list(tenant_of(request), name)
    return json_response({"items": [_out(runtime, s) for s in found]})


@router.get("/v1/agents/{name}/schedules/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(name: str, schedule_id: str, request: Request) -> Response:
    runtime = runtime_of(request)
    schedule = await runtime.scheduler.get(tenant_of(request), schedule_id, name)
    return json_response(_out(runtime, schedule))


@router.patch("/v1/agents/{name}/schedules/{schedule_id}", response_model=ScheduleOut)
async def update_schedule(name: str, schedule_id: str, body: SchedulePatch,
                          request: Request) -> Response:
    """Pause (`{"enabled": false}`), enable, or change the cron, time zone, input."""
    runtime = runtime_of(request)
    changes = body.model_dump(exclude_none=True)
    schedule = await runtime.scheduler.update(tenant_of(request), schedule_id, name, **changes)
    return json_response(_out(runtime, schedule))


@router.delete("/v1/agents/{name}/schedules/{schedule_id}", status_code=204)
async def delete_schedule(name: str, schedule_id: str, request: Request) -> Response:
    await runtime_of(request).scheduler.delete(tenant_of(request), schedule_id, name)
    return Response(status_code=204)
