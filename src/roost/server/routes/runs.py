"""Turns and runs: `POST /v1/sessions/{id}/turns`, `GET /v1/runs/{id}`, cancel, resume."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive

from roost.errors import InvalidInput, StoreUnavailable
from roost.runtime.runtime import RunHandle, Runtime
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of, tenant_of, turn_body
from roost.server.schemas import RunOut, TurnCreate, TurnOut
from roost.server.sse import RunEventStream

router = APIRouter(tags=["runs"], route_class=StrictJSONRoute)


@router.post("/v1/sessions/{session_id}/turns", response_model=TurnOut,
             responses={200: {"content": {"text/event-stream": {}}}})
async def create_turn(session_id: str, body: TurnCreate, request: Request) -> Response:
    """Run one turn. JSON by default; SSE with `"stream": true` or `Accept: text/event-stream`."""
    runtime = runtime_of(request)
    stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    handle = await runtime.submit_turn(tenant_of(request), session_id, body.input, stream=stream,
                                       timeout_s=body.timeout_s, priority=body.priority)
    if stream:
        return _event_stream(runtime, handle)
    run = await _wait_or_disconnect(runtime, handle, request.receive)
    if (run.error or {}).get("type") == "store_unavailable":
        # The run could not be recorded: say so as the outage it is, not as a run result.
        raise StoreUnavailable(f"the session store became unreachable during run {run.id}; "
                               "steps recorded before the outage are kept",
                               retry_after=runtime.settings.runtime.store_retry_s)
    return json_response(turn_body(run, handle.events))


def _event_stream(runtime: Runtime, handle: RunHandle) -> RunEventStream:
    policy = runtime.hosted(handle.run.agent).agent.policies.on_disconnect
    return RunEventStream(
        handle, runtime.store, heartbeat_s=runtime.settings.server.heartbeat_s,
        on_disconnect=(lambda h: h.cancel("disconnect")) if policy == "cancel" else None,
        headers={"X-Run-Id": handle.run.id})


async def _wait_or_disconnect(runtime: Runtime, handle: RunHandle, receive: Receive):  # type: ignore[no-untyped-def]
    """Wait for the run; if the client leaves first and the agent's policy is `cancel`,
    cancel the run (a synchronous caller that left cannot read the answer)."""
    listener = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((handle.done, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not listener.done():
            listener.cancel()
    if not handle.done.done():
        if runtime.hosted(handle.run.agent).agent.policies.on_disconnect == "cancel":
            handle.cancel("disconnect")
        return await handle.wait()
    return handle.done.result()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/runs/{run_id}", response_model=RunOut)
async def get_run(run_id: str, request: Request) -> Response:
    return json_response(await runtime_of(request).get_run(tenant_of(request), run_id))


@router.get("/v1/runs/{run_id}/events", responses={200: {"content": {"text/event-stream": {}}}})
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
    handle = runtime.runs.get(run_id)
    if handle is None or handle.run.tenant != tenant:
        run = await runtime.get_run(tenant, run_id)
        events = await runtime.store.read_events(tenant, run.session_id, after=after, limit=1000)
        from roost.server.sse import frame

        body = b"".join(frame(e) for e in events if e.run_id == run_id)
        return Response(body, media_type="text/event-stream")
    return RunEventStream(handle, runtime.store, heartbeat_s=runtime.settings.server.heartbeat_s,
                          after_seq=after)


@router.post("/v1/runs/{run_id}/cancel", response_model=RunOut)
async def cancel_run(run_id: str, request: Request) -> Response:
    return json_response(await runtime_of(request).cancel_run(tenant_of(request), run_id))


@router.post("/v1/runs/{run_id}/resume", response_model=RunOut, status_code=202)
async def resume_run(run_id: str, request: Request) -> Response:
    """Continue an interrupted run from its log (tool calls already recorded are not re-run)."""
    handle = await runtime_of(request).resume_run(tenant_of(request), run_id)
    return json_response(handle.run, status=202)
