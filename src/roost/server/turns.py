"""One turn over HTTP: JSON when it ends, or server-sent events while it runs.

`respond` serves `POST /v1/sessions/{id}/turns` for both the hot path (`hotpath.py`) and the
FastAPI route (`routes/runs.py`, the OpenAPI entry).
"""

from __future__ import annotations

import asyncio

from starlette.responses import Response
from starlette.types import Receive

from roost.errors import Conflict, RunNotFound, SessionNotFound, StoreUnavailable
from roost.runtime.idempotency import Replay
from roost.runtime.runtime import RunHandle, Runtime
from roost.server.respond import json_response, turn_body
from roost.server.schemas import TurnCreate
from roost.server.sse import RunEventStream, follower_stream, wait_disconnect
from roost.sessions.records import TERMINAL_STATUSES, RunRecord, now


async def respond(runtime: Runtime, tenant: str, session_id: str, turn: TurnCreate,
                  wants_stream: bool, receive: Receive,
                  idempotency_key: str | None = None, respond_async: bool = False) -> Response:
    """Run one turn: JSON when it ends, or SSE with `"stream": true` or
    `Accept: text/event-stream`. With an `Idempotency-Key` seen before, the earlier run's
    outcome or stream instead. `"background": true`, `run_at` or `Prefer: respond-async`:
    queue it and answer 202 with the run. Raises RoostError (→ problem+json)."""
    if turn.background or turn.run_at is not None or respond_async:
        return await _queued(runtime, tenant, session_id, turn, idempotency_key)
    stream = turn.stream or wants_stream
    try:
        handle = await runtime.submit_turn(tenant, session_id, turn.input, stream=stream,
                                           timeout_s=turn.timeout_s, priority=turn.priority,
                                           idempotency_key=idempotency_key,
                                           budget=turn.budget())
    except Replay as replay:
        return await _replay(runtime, tenant, replay.run_id, stream, receive)
    if stream:
        return _event_stream(runtime, handle)
    # A client that sent an Idempotency-Key will come back for the answer: leaving does
    # not cancel its run.
    run = await _wait_or_disconnect(runtime, handle, receive,
                                    keep_on_disconnect=idempotency_key is not None)
    if (run.error or {}).get("type") == "session_not_found":
        # Deleted by another process before the run could write: nothing of it is stored.
        raise SessionNotFound(f"no session {session_id!r}", session_id=session_id)
    if (run.error or {}).get("type") == "store_unavailable":
        # The run could not be recorded: say so as the outage it is, not as a run result.
        raise StoreUnavailable(f"the session store became unreachable during run {run.id}; "
                               "steps recorded before the outage are kept, and the run's "
                               "record is settled from its log when the store answers",
                               retry_after=runtime.settings.runtime.store_retry_s,
                               run_id=run.id)
    return json_response(turn_body(run, handle.events), headers=run_headers(run))


async def _queued(runtime: Runtime, tenant: str, session_id: str, turn: TurnCreate,
                  idempotency_key: str | None) -> Response:
    """A background or delayed turn: 202 with its queued run (or, for a repeated
    Idempotency-Key, the run the first submission queued, as it stands)."""
    run_at = turn.run_at.timestamp() if turn.run_at is not None else None
    try:
        run = await runtime.background.submit(tenant, session_id, turn.input, run_at=run_at,
                                              idempotency_key=idempotency_key)
    except Replay as replay:
        try:
            run = await runtime.get_run(tenant, replay.run_id)
        except RunNotFound:
            raise Conflict("the earlier request with this Idempotency-Key has not queued its "
                           "run yet; retry shortly", retry_after=1) from None
    return json_response(run, status=202, headers=run_headers(run))


async def _replay(runtime: Runtime, tenant: str, run_id: str, stream: bool,
                  receive: Receive) -> Response:
    """Answer a repeated submission with the run the first one started, wherever it runs."""
    handle = runtime.live_run(tenant, run_id)
    if handle is not None:  # running here: join it (leaving does not cancel it)
        if stream:
            return RunEventStream(handle, runtime.replay_of(handle.run),
                                  heartbeat_s=runtime.settings.server.heartbeat_s,
                                  headers=run_headers(handle.run))
        run = await handle.wait()
        return json_response(turn_body(run, handle.events), headers=run_headers(run))
    try:
        run = await runtime.get_run(tenant, run_id)
    except RunNotFound:
        raise Conflict("the earlier request with this Idempotency-Key has not started its "
                       "run yet; retry shortly", retry_after=1) from None
    if stream:
        return follower_stream(runtime.follow(run, idle_s=runtime.settings.server.heartbeat_s),
                              headers=run_headers(run))
    if run.status not in TERMINAL_STATUSES:
        run = await runtime.wait_for_end(tenant, run_id, wait_s=max(
            1.0, (run.deadline or now()) - now()))
    events = await runtime.read_run_events(tenant, run)
    return json_response(turn_body(run, events), headers=run_headers(run))


def prefers_async(prefer: str) -> bool:
    """Whether a `Prefer` header asks for `respond-async` (RFC 7240: comma-separated
    preferences, each maybe with parameters)."""
    return any(p.split(";", 1)[0].strip().lower() == "respond-async" for p in prefer.split(","))


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


async def _wait_or_disconnect(runtime: Runtime, handle: RunHandle, receive: Receive, *,
                              keep_on_disconnect: bool = False) -> RunRecord:
    """Wait for the run; if the client leaves first and the agent's policy is `cancel`,
    cancel the run (a synchronous caller that left cannot read the answer)."""
    listener = asyncio.ensure_future(wait_disconnect(receive))
    try:
        await asyncio.wait((handle.done, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not listener.done():
            listener.cancel()
    if not handle.done.done():
        if not keep_on_disconnect and \
                runtime.hosted(handle.run.agent).agent.policies.on_disconnect == "cancel":
            handle.cancel("disconnect")
        return await handle.wait()
    return handle.done.result()

