"""OpenAI's Responses API over the runtime: `POST /v1/responses`, `GET /v1/responses/{id}`.

    first = client.responses.create(model="weather", input="Weather in Oslo?")
    again = client.responses.create(model="weather", input="And Rome?",
                                    previous_response_id=first.id)

A response is a Roost run: its id is the run id, and `GET /v1/responses/{id}` reads the run
record. `previous_response_id` continues that run's session (the Roost session *is* the
conversation, so nothing is replayed from the client); without it a new session starts,
seeded with the input's earlier messages when `input` is a list. `X-Roost-Session-Id`
continues a session too. `instructions` and client `tools` are refused (400): the agent has
its own. Streaming sends the events the SDK parses, each with a `sequence_number`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.types import Receive

from roost.models.base import Message
from roost.protocols.conversation import answer_deltas, start_turn
from roost.protocols.wire import (
    JSONResponse,
    ProtocolError,
    Request,
    decode,
    event_frame,
    run_failure,
    wait_or_disconnect,
)
from roost.runtime.runtime import RunHandle, Runtime
from roost.server.sse import FrameStream
from roost.sessions.records import RunRecord

SESSION_HEADER = "X-Roost-Session-Id"

_STATUS = {"completed": "completed", "failed": "failed", "cancelled": "cancelled",
           "timed_out": "failed", "interrupted": "incomplete", "queued": "queued",
           "running": "in_progress", "waiting": "in_progress"}


class ResponseRequest(msgspec.Struct):
    model: str
    input: str | list[dict[str, Any]]
    previous_response_id: str | None = None
    stream: bool = False
    instructions: str | None = None
    tools: list[Any] | None = None
    store: bool | None = None


def input_messages(body: ResponseRequest) -> list[Message]:
    if body.tools:
        raise ProtocolError("client-side tools are not supported: a Roost agent runs its own "
                            "tools server-side", param="tools", code="tools_not_supported")
    if body.instructions:
        raise ProtocolError("`instructions` are not supported: the agent has its own",
                            param="instructions")
    if isinstance(body.input, str):
        return [Message(role="user", content=body.input)]
    messages = []
    for index, item in enumerate(body.input):
        kind = item.get("type", "message")
        role = item.get("role")
        if kind != "message" or role not in ("user", "assistant", "system", "developer"):
            raise ProtocolError(f"input items of type {kind!r} are not supported (messages "
                                "only)", param=f"input.{index}")
        content = item.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") not in ("input_text", "output_text", "text"):
                    raise ProtocolError(f"content of type {part.get('type')!r} is not "
                                        "supported (text only)", param=f"input.{index}.content")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        messages.append(Message(role="system" if role == "developer" else str(role),
                                content=content if isinstance(content, str) else None))
    return messages


async def create(runtime: Runtime, request: Request, receive: Receive, *,
                 session_header: bytes) -> JSONResponse | FrameStream:
    body: ResponseRequest = decode(request.body, ResponseRequest)
    messages = input_messages(body)
    header = request.headers.get(session_header)
    session_id = header.decode() if header else None
    if body.previous_response_id:
        previous = await runtime.get_run(request.tenant, body.previous_response_id)
        session_id = previous.session_id
    handle = await start_turn(runtime, request.tenant, body.model, messages,
                              session_id=session_id, stream=body.stream,
                              protocol="openai.responses")
    headers = {SESSION_HEADER: handle.run.session_id, "X-Run-Id": handle.run.id}
    previous_id = body.previous_response_id
    if body.stream:
        cancel_on_leave = runtime.hosted(body.model).agent.policies.on_disconnect == "cancel"
        return FrameStream(_events(handle, previous_id,
                                   hold_steps=bool(runtime.hosted(body.model).tool_specs)), headers=headers,
                           on_disconnect=(lambda: handle.cancel("disconnect"))
                           if cancel_on_leave else None)
    if not await wait_or_disconnect(handle.done, receive):
        if runtime.hosted(body.model).agent.policies.on_disconnect == "cancel":
            handle.cancel("disconnect")
        await handle.wait()
    run = handle.done.result()
    if run.status not in ("completed",):
        return run_failure(run, headers)
    return JSONResponse(response_object(run, previous_id), headers=headers)


async def retrieve(runtime: Runtime, tenant: str, response_id: str) -> JSONResponse:
    run = await runtime.get_run(tenant, response_id)
    return JSONResponse(response_object(run, None),
                        headers={SESSION_HEADER: run.session_id, "X-Run-Id": run.id})


def _message_item(run: RunRecord, text: str, status: str) -> dict[str, Any]:
    return {"id": "msg_" + run.id.removeprefix("run_"), "type": "message", "role": "assistant",
            "status": status,
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": []}] if text or status == "completed" else []}


def response_object(run: RunRecord, previous_id: str | None, *,
                    status: str | None = None) -> dict[str, Any]:
    state = status or _STATUS.get(run.status, "in_progress")
    usage = run.usage
    error = None
    if run.error and state in ("failed", "cancelled", "incomplete"):
        error = {"code": "server_error", "message": str(run.error.get("message", run.status))}
    done = state == "completed"
    return {
        "id": run.id, "object": "response", "created_at": run.created_at,
        "model": run.agent, "status": state, "error": error, "incomplete_details": None,
        "instructions": None, "metadata": {"roost_session_id": run.session_id},
        "output": [_message_item(run, run.output or "", "completed")] if done else [],
        "parallel_tool_calls": False, "tool_choice": "auto", "tools": [],
        "temperature": None, "top_p": None, "previous_response_id": previous_id,
        "completed_at": run.updated_at if done else None,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                  "total_tokens": usage.input_tokens + usage.output_tokens,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}} if done else None,
    }


async def _events(handle: RunHandle, previous_id: str | None, *,
                  hold_steps: bool) -> AsyncIterator[bytes]:
    """The Responses stream: created, in_progress, the message item and its text part
    opening, text deltas, their closing, and completed (or failed)."""
    run = handle.run
    seq = 0

    def frame(kind: str, **payload: Any) -> bytes:
        nonlocal seq
        seq += 1
        return event_frame(kind, {"type": kind, "sequence_number": seq, **payload})

    item_id = "msg_" + run.id.removeprefix("run_")
    place = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield frame("response.created", response=response_object(run, previous_id,
                                                             status="in_progress"))
    yield frame("response.in_progress", response=response_object(run, previous_id,
                                                                 status="in_progress"))
    yield frame("response.output_item.added", output_index=0,
                item=_message_item(run, "", "in_progress"))
    yield frame("response.content_part.added", **place,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    parts = []
    async for text in answer_deltas(handle, hold_steps=hold_steps):
        parts.append(text)
        yield frame("response.output_text.delta", **place, delta=text, logprobs=[])
    run = handle.done.result()
    if run.status != "completed":
        yield frame("response.failed", response=response_object(run, previous_id))
        return
    text = "".join(parts)
    yield frame("response.output_text.done", **place, text=text, logprobs=[])
    yield frame("response.content_part.done", **place,
                part={"type": "output_text", "text": text, "annotations": [], "logprobs": []})
    yield frame("response.output_item.done", output_index=0,
                item=_message_item(run, text, "completed"))
    yield frame("response.completed", response=response_object(run, previous_id))
