"""One turn over HTTP: JSON when it ends, or server-sent events while it runs.

`respond` serves `POST /v1/sessions/{id}/turns` for both the hot path (`hotpath.py`) and the
FastAPI route (`routes/runs.py`, the OpenAPI entry).
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive

from roost.errors import StoreUnavailable
from roost.runtime.runtime import RunHandle, Runtime
from roost.server.respond import json_response, turn_body
from roost.server.schemas import TurnCreate
from roost.server.sse import RunEventStream
from roost.sessions.records import RunRecord


async def respond(runtime: Runtime, tenant: str, session_id: str, turn: TurnCreate,
                  wants_stream: bool, receive: Receive) -> Response:
    """Run one turn: JSON when it ends, or SSE with `"stream": true` or
    `Accept: text/event-stream`. Raises RoostError (→ problem+json)."""
    stream = turn.stream or wants_stream
    handle = await runtime.submit_turn(tenant, session_id, turn.input, stream=stream,
                                       timeout_s=turn.timeout_s, priority=turn.priority)
    if stream:
        return _event_stream(runtime, handle)
    run = await _wait_or_disconnect(runtime, handle, receive)
    if (run.error or {}).get("type") == "store_unavailable":
        # The run could not be recorded: say so as the outage it is, not as a run result.
        raise StoreUnavailable(f"the session store became unreachable during run {run.id}; "
                               "steps recorded before the outage are kept, and the run's "
                               "record is settled from its log when the store answers",
                               retry_after=runtime.settings.runtime.store_retry_s,
                               run_id=run.id)
    return json_response(turn_body(run, handle.events), headers=run_headers(run))


def run_headers(run: RunRecord) -> dict[str, str]:
    """Where a client finds its run again (re-attach, fetch the outcome) whatever happens
    to this connection."""
    return {"X-Run-Id": run.id, "Location": f"/v1/runs/{run.id}"}


def _event_stream(runtime: Runtime, handle: RunHandle) -> RunEventStream:
    policy = runtime.hosted(handle.run.agent).agent.policies.on_disconnect
    return RunEventStream(
        handle, runtime.replay_of(handle.run), heartbeat_s=runtime.settings.server.heartbeat_s,
        on_disconnect=(lambda h: h.cancel("disconnect")) if policy == "cancel" else None,
        headers=run_headers(handle.run))


async def _wait_or_disconnect(runtime: Runtime, handle: RunHandle,
                              receive: Receive) -> RunRecord:
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
