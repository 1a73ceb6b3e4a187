"""Turns and runs: `POST /v1/sessions/{id}/turns`, `GET /v1/runs/{id}`, cancel, resume."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from roost.background.listing import MAX_PAGE
from roost.errors import InvalidInput
from roost.runtime.approvals import DecisionRequest
from roost.server import turns
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of, tenant_of
from roost.server.schemas import ApprovalCreate, RunOut, RunPage, TurnCreate, TurnOut
from roost.server.sse import RunEventStream, follower_stream, frame
from roost.sessions.records import TERMINAL_STATUSES, RunStatus

router = APIRouter(tags=["runs"], route_class=StrictJSONRoute)

# The SSE body as OpenAPI can say it: frames of `id: <seq>` (persisted events), `event:
# <type>`, `data: <JSON event>`, and `: heartbeat` comments; the stream ends after the run's
# end event (run.completed, run.failed, run.cancelled, run.interrupted, or run.waiting when
# the run waits for a person: follow it again to see it continue after the decision).
_SSE_EXAMPLE = (
    "id: 1\nevent: run.started\ndata: {\"seq\": 1, \"type\": \"run.started\", "
    "\"run_id\": \"run_…\", \"data\": {\"input\": \"Weather in Paris?\"}, \"ts\": 1.7e9}\n\n"
    "event: message.delta\ndata: {\"seq\": 0, \"type\": \"message.delta\", \"run_id\": "
    "\"run_…\", \"data\": {\"text\": \"It is \"}, \"ts\": 1.7e9}\n\n"
    ": heartbeat\n\n"
    "id: 6\nevent: run.completed\ndata: {\"seq\": 6, \"type\": \"run.completed\", "
    "\"run_id\": \"run_…\", \"data\": {\"output\": \"It is 21 °C.\"}, \"ts\": 1.7e9}\n\n")
SSE_RESPONSE = {"content": {"text/event-stream": {
    "schema": {"type": "string", "description": "server-sent events, one per run event"},
    "example": _SSE_EXAMPLE}},
    "headers": {"X-Run-Id": {"schema": {"type": "string"}, "description": "the run's id"},
                "Location": {"schema": {"type": "string"}, "description": "/v1/runs/{id}"}}}


@router.post("/v1/sessions/{session_id}/turns", response_model=TurnOut,
             responses={200: SSE_RESPONSE, 202: {
                 "model": RunOut, "description": "queued: `background`, `run_at` or "
                 "`Prefer: respond-async`; the run is at `Location`"}})
async def create_turn(session_id: str, body: TurnCreate, request: Request) -> Response:
    """Run one turn. JSON by default; SSE with `"stream": true` or `Accept: text/event-stream`.

    `create_app` serves this path with `HotPath` before routing (`hotpath.py`); the
    route is its OpenAPI entry and serves it when the routers are mounted without that."""
    return await turns.respond(runtime_of(request), tenant_of(request), session_id, body,
                               "text/event-stream" in request.headers.get("accept", ""),
                               request.receive, request.headers.get("idempotency-key"),
                               turns.prefers_async(request.headers.get("prefer", "")))


@router.get("/v1/runs", response_model=RunPage)
async def list_runs(request: Request, status: RunStatus | None = None, agent: str | None = None,
                    session_id: str | None = None, cursor: str | None = None,
                    limit: int = Query(50, ge=1, le=MAX_PAGE)) -> Response:
    """The tenant's runs, newest first; `next_cursor` fetches the next page."""
    runtime = runtime_of(request)
    page = await runtime.list_runs(tenant_of(request), status=status, agent=agent,
                                   session_id=session_id, cursor=cursor,
                                   limit=min(limit, runtime.settings.server.max_list_limit))
    return json_response(page)


@router.get("/v1/runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, request: Request) -> Response:
    return json_response(await runtime_of(request).get_run(tenant_of(request), run_id))


@router.get("/v1/runs/{run_id}/events", responses={200: SSE_RESPONSE})
async def follow_run(run_id: str, request: Request) -> Response:
    """SSE of a run: persisted events after `Last-Event-ID` (a session seq), then the live tail."""
    runtime = runtime_of(request)
    tenant = tenant_of(request)
    try:
        after = int(request.headers.get("last-event-id", "0") or 0)
    except ValueError:
        raise InvalidInput("Last-Event-ID must be an event seq (an integer)",
                           field="Last-Event-ID") from None
    if not 0 <= after < 2**63:
        raise InvalidInput("Last-Event-ID is out of range", field="Last-Event-ID")
    handle = runtime.live_run(tenant, run_id)
    if handle is None:
        # Driven by another instance, or ended: the log, then the live tail from the bus.
        run = await runtime.get_run(tenant, run_id)
        if run.status in TERMINAL_STATUSES:
            events = await runtime.read_run_events(tenant, run, after=after)
            return Response(b"".join(frame(e) for e in events), media_type="text/event-stream")
        return follower_stream(runtime.follow(run, after_seq=after,
                                             idle_s=runtime.settings.server.heartbeat_s),
                              headers={"X-Run-Id": run.id})
    return RunEventStream(handle, runtime.replay_of(handle.run),
                          heartbeat_s=runtime.settings.server.heartbeat_s, after_seq=after)


@router.post("/v1/runs/{run_id}/cancel", response_model=RunOut)
async def cancel_run(run_id: str, request: Request) -> Response:
    return json_response(await runtime_of(request).cancel_run(tenant_of(request), run_id))


@router.post("/v1/runs/{run_id}/resume", response_model=RunOut, status_code=202)
async def resume_run(run_id: str, request: Request) -> Response:
    """Continue an interrupted run from its log (tool calls already recorded are not re-run)."""
    handle = await runtime_of(request).resume_run(tenant_of(request), run_id)
    return json_response(handle.run, status=202)


@router.post("/v1/runs/{run_id}/approvals", response_model=RunOut, status_code=202)
async def decide_run(run_id: str, body: ApprovalCreate, request: Request) -> Response:
    """Decide the calls a waiting run waits on — approve (optionally with edited
    arguments), reject with a reason the model reads, or answer an `ask_user` question —
    and resume it on this instance. 409 when the run is not waiting or another decision
    won; 422 naming the field when a decision does not fit (unknown call, arguments the
    tool's schema refuses). Follow `GET /v1/runs/{id}/events` for what happens next."""
    items = body.decisions if body.decisions is not None else [body]
    if body.decisions is not None and (body.decision or body.call_id or body.answer
                                       or body.arguments is not None or body.reason):
        raise InvalidInput("send one decision at the top level or several in `decisions`, "
                           "not both", field="decisions")
    decisions = [DecisionRequest(decision=d.decision, call_id=d.call_id, reason=d.reason,
                                 arguments=d.arguments, answer=d.answer) for d in items]
    handle = await runtime_of(request).decide_run(tenant_of(request), run_id, decisions)
    return json_response(handle.run, status=202,
                         headers={"Location": f"/v1/runs/{handle.run.id}"})
