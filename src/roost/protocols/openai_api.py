"""An OpenAI-compatible API over the same runtime: `GET /v1/models`, `POST
/v1/chat/completions` (and the Responses API, `responses.py`).

    client = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="weather", messages=[{"role": "user", "content": "Oslo?"}])

- **Models are agents.** `model` names an agent; the agent runs its own model, instructions
  and tools server-side, and the answer is its final message. Sampling parameters
  (`temperature`, `max_tokens`, …) are the agent's business and are ignored.
- **Sessions** (`conversation.py`): stateless by default (the client's messages are the
  history of a fresh session); `X-Roost-Session-Id: ses_…` continues that Roost session
  instead (only the last user message is read). Every answer names its session and run in
  `X-Roost-Session-Id` and `X-Run-Id`.
- **Client-side tools are refused** (`tools`, `functions`, tool messages: 400). An agent's
  tools are its own; a client that wants to run tools itself should call a model, not an
  agent.
- **Errors** in OpenAI's shape with Roost's status codes (`wire.py`); a run that fails
  answers 5xx naming the run (`X-Run-Id`).

Plain ASGI in front of FastAPI, like the native turn route (`server/hotpath.py`): the same
admission, deadlines, persistence and tenancy, for about the same CPU.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.types import ASGIApp, Receive, Scope, Send

from roost.errors import RoostError
from roost.models.base import Message
from roost.protocols import responses
from roost.protocols.conversation import answer_deltas, start_turn
from roost.protocols.wire import (
    JSONResponse,
    ProtocolError,
    Request,
    data_frame,
    decode,
    error_response,
    protocol_error,
    read_request,
    roost_error,
    run_failure,
    wait_or_disconnect,
)
from roost.runtime.runtime import RunHandle, Runtime
from roost.server.sse import FrameStream
from roost.sessions.records import RunRecord

log = logging.getLogger("roost.protocols")

SESSION_HEADER = "X-Roost-Session-Id"
_SESSION_HEADER = SESSION_HEADER.lower().encode()
_MODEL = re.compile(r"/v1/models/([^/]+)")
_RESPONSE = re.compile(r"/v1/responses/([^/]+)")


# -- request ------------------------------------------------------------------------------
class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None
    tool_call_id: str | None = None


class ChatRequest(msgspec.Struct):
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    n: int | None = None


def text_of(content: str | list[dict[str, Any]] | None, param: str) -> str | None:
    """A message's text: a string, or the text parts of a content list (others refused)."""
    if content is None or isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") not in ("text", "input_text", "output_text"):
            raise ProtocolError(f"content parts of type {part.get('type')!r} are not supported "
                                "(text only)", param=param)
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def chat_messages(request: ChatRequest) -> list[Message]:
    if request.tools or request.functions:
        raise ProtocolError("client-side tools are not supported: a Roost agent runs its own "
                            "tools server-side; call it without `tools`", param="tools",
                            code="tools_not_supported")
    if request.n not in (None, 1):
        raise ProtocolError("only n=1 is supported", param="n")
    messages = []
    for index, message in enumerate(request.messages):
        param = f"messages.{index}"
        if message.role == "developer":
            message.role = "system"
        if message.role not in ("system", "user", "assistant"):
            raise ProtocolError(f"messages with role {message.role!r} are not supported "
                                "(client-side tools are not)", param=f"{param}.role")
        if message.tool_calls:
            raise ProtocolError("assistant tool calls are not supported (client-side tools "
                                "are not)", param=f"{param}.tool_calls")
        messages.append(Message(role=message.role,
                                content=text_of(message.content, f"{param}.content")))
    return messages


# -- the router ------------------------------------------------------------------------------
class OpenAIRoutes:
    """ASGI middleware: answers `/v1/models`, `/v1/chat/completions` and `/v1/responses`,
    passes everything else to `app`."""

    def __init__(self, app: ASGIApp, runtime: Runtime, tenant_header: str | None) -> None:
        self.app = app
        self.runtime = runtime
        self.tenant_header = tenant_header.lower().encode("latin-1") if tenant_header else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/v1/chat/", "/v1/models",
                                                                     "/v1/responses")):
            await self.app(scope, receive, send)
            return
        route = _route(scope["method"], scope["path"])
        if route is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = route
        request = await read_request(scope, receive, self.tenant_header)
        if request is None:
            return
        try:
            response = await self._answer(route, scope, request, receive)
        except ProtocolError as exc:
            response = protocol_error(exc)
        except RoostError as exc:
            if exc.status >= 500:
                log.warning("%s %s: %s", scope["method"], scope["path"], exc.message)
            response = roost_error(exc)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = error_response(500, "an internal error occurred; it has been logged")
        await response(scope, receive, send)

    async def _answer(self, route: Route, scope: Scope, request: Request,
                      receive: Receive) -> JSONResponse | FrameStream:
        rt = self.runtime
        if route is CHAT:
            return await chat_completion(rt, request, receive)
        if route is MODELS:
            return JSONResponse({"object": "list",
                                 "data": [model_object(name, rt) for name in rt.agents]})
        if route is MODEL:
            name = _MODEL.fullmatch(scope["path"])[1]  # type: ignore[index]
            if name not in rt.agents:
                return error_response(404, f"no model (agent) named {name!r}",
                                      param="model", code="model_not_found")
            return JSONResponse(model_object(name, rt))
        if route is RESPONSES:
            return await responses.create(rt, request, receive,
                                          session_header=_SESSION_HEADER)
        run_id = _RESPONSE.fullmatch(scope["path"])[1]  # type: ignore[index]
        return await responses.retrieve(rt, request.tenant, run_id)


class Route(msgspec.Struct, frozen=True):
    """What `scope["route"]` holds: the template observability labels requests by."""

    path: str


CHAT = Route("/v1/chat/completions")
MODELS = Route("/v1/models")
MODEL = Route("/v1/models/{model}")
RESPONSES = Route("/v1/responses")
RESPONSE = Route("/v1/responses/{response_id}")


def _route(method: str, path: str) -> Route | None:
    if method == "POST":
        return CHAT if path == CHAT.path else RESPONSES if path == RESPONSES.path else None
    if method != "GET":
        return None
    if path == MODELS.path:
        return MODELS
    if _MODEL.fullmatch(path):
        return MODEL
    if _RESPONSE.fullmatch(path):
        return RESPONSE
    return None


def model_object(name: str, runtime: Runtime) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "roost"}


# -- chat completions ----------------------------------------------------------------------
async def chat_completion(runtime: Runtime, request: Request,
                          receive: Receive) -> JSONResponse | FrameStream:
    body: ChatRequest = decode(request.body, ChatRequest)
    messages = chat_messages(body)
    session_header = request.headers.get(_SESSION_HEADER)
    handle = await start_turn(runtime, request.tenant, body.model, messages,
                              session_id=session_header.decode() if session_header else None,
                              stream=body.stream, protocol="openai.chat")
    run = handle.run
    headers = {SESSION_HEADER: run.session_id, "X-Run-Id": run.id}
    completion_id = "chatcmpl-" + run.id.removeprefix("run_")
    created = int(time.time())
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        cancel_on_leave = runtime.hosted(body.model).agent.policies.on_disconnect == "cancel"
        return FrameStream(
            _chunks(handle, completion_id, created, body.model, include_usage,
                    hold_steps=bool(runtime.hosted(body.model).tool_specs)),
            headers=headers,
            on_disconnect=(lambda: handle.cancel("disconnect")) if cancel_on_leave else None)
    if not await wait_or_disconnect(handle.done, receive):
        if runtime.hosted(body.model).agent.policies.on_disconnect == "cancel":
            handle.cancel("disconnect")
        await handle.wait()
    run = handle.done.result()
    if run.status != "completed":
        return run_failure(run, headers)
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created,
        "model": body.model, "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": run.output or "",
                                 "refusal": None}}],
        "usage": usage_of(run),
    }, headers=headers)


def usage_of(run: RunRecord) -> dict[str, int]:
    usage = run.usage
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens}


async def _chunks(handle: RunHandle, completion_id: str, created: int, model: str,
                  include_usage: bool, *, hold_steps: bool) -> AsyncIterator[bytes]:
    """OpenAI's chunks: the role, content deltas, the finish reason, the usage (when asked
    for), `[DONE]`; a run that fails ends with an error chunk (the SDK raises it). The
    content is the final answer only: tool steps (their text included) are not shown, as
    the agent's tools run server-side (see `answer_deltas`)."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return data_frame({"id": completion_id, "object": "chat.completion.chunk",
                           "created": created, "model": model, "system_fingerprint": None,
                           "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    async for text in answer_deltas(handle, hold_steps=hold_steps):
        yield chunk({"content": text})
    run = handle.done.result()
    if run.status != "completed":
        error = run.error or {}
        yield data_frame({"error": {"message": str(error.get("message") or run.status),
                                    "type": "server_error", "param": None,
                                    "code": str(error.get("type") or run.status)}})
        return
    yield chunk({}, "stop")
    if include_usage:
        yield data_frame({"id": completion_id, "object": "chat.completion.chunk",
                          "created": created, "model": model, "system_fingerprint": None,
                          "choices": [], "usage": usage_of(run)})
    yield b"data: [DONE]\n\n"
