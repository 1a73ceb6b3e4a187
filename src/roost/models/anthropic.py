"""`AnthropicModel`: Anthropic's Messages API, streamed or not, with tools.

    model = AnthropicModel("claude-3-5-haiku-latest", api_key=os.environ["ANTHROPIC_API_KEY"])
    response = await complete(model, ModelRequest(messages=[Message(role="user", content="hi")]))
    await model.aclose()

Like the OpenAI-compatible provider it is a lean HTTP + msgspec client (one pooled
session per instance, typed decoding, an incremental SSE parser), because it sits on the hot
path of every turn. The session, deadline and transport-error plumbing both share is
`roost.models.http.HTTPModel`.

What differs from chat completions, and how Roost's records map onto it:

* system messages go to the top-level `system` field;
* an assistant's tool calls are `tool_use` content blocks (`input` is a JSON object);
* tool results are `tool_result` blocks in a *user* message — consecutive results (and any
  consecutive same-role messages) are merged, as the API wants turns to alternate;
* `max_tokens` is required (the request's setting, else the instance's);
* usage: input = input + cache creation + cache read tokens; stop reasons map to the
  chat-completions names the engine knows ("stop", "tool_calls", "length").

Errors become `ModelError` with a `kind`:

    429 rate_limit_error            rate_limited   retryable, Retry-After honoured
    529 overloaded_error, 5xx       overloaded     retryable
    408 / timeout before deadline   timeout        retryable
    connection refused / reset      connection     retryable
    bad JSON, stream cut short      malformed      retryable
    400 "prompt is too long"        context_overflow
    other 400 / 404 / 413 / 422     bad_request
    401 / 403                       auth
    deadline reached                deadline       (no time is left to try again)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Final

import msgspec
from yarl import URL

from roost.errors import ModelError
from roost.models.base import (
    Message,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from roost.models.http import HTTPModel, SSEParser, read_error_body, retry_after
from roost.models.transport import Response
from roost.sessions.records import Usage

__all__ = ["AnthropicModel", "wire_request"]

_STOP_REASONS: Final = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "pause_turn": "stop",
    "refusal": "content_filter",
}
# Chat-completions settings with no Messages API equivalent: sending them is a 400.
_UNSUPPORTED_SETTINGS: Final = frozenset(
    {"frequency_penalty", "presence_penalty", "seed", "response_format", "n", "logprobs",
     "top_logprobs", "parallel_tool_calls", "user", "stream_options", "logit_bias"}
)  # fmt: skip
_OVERFLOW_MARKERS: Final = ("prompt is too long", "context window", "context length", "too many tokens")
# The HTTP status each error type comes with, for errors that arrive inside a stream.
_STATUS_OF_TYPE: Final = {
    "invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "overloaded_error": 529,
}  # fmt: skip

# --- wire shapes ---------------------------------------------------------------------------


class _Block(msgspec.Struct):
    type: str = ""
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    # content_block_delta payloads
    partial_json: str | None = None
    stop_reason: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Error(msgspec.Struct):
    type: str = ""
    message: str = ""


class _Message(msgspec.Struct):
    model: str = ""
    content: list[_Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    """A response body or any stream event: each uses a subset of these fields."""

    type: str = ""
    # a non-streamed message (type "message")
    model: str = ""
    content: list[_Block] | None = None
    stop_reason: str | None = None
    # stream events
    message: _Message | None = None
    index: int = 0
    content_block: _Block | None = None
    delta: _Block | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_decode_event: Final = msgspec.json.Decoder(_Event).decode
_encode: Final = msgspec.json.Encoder().encode


def _parse_arguments(arguments: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        # The API needs an object; keep the model's text so nothing is silently lost.
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def wire_request(
    messages: list[Message], tools: list[ToolSpec]
) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """Roost messages and tools as (system, messages, tools) of the Messages API."""
    system: list[str] = []
    out: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if not blocks:
            return
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})

    for message in messages:
        role = message.role
        if role == "system":
            if message.content:
                system.append(message.content)
        elif role == "tool":
            add("user", [{
                "type": "tool_result",
                "tool_use_id": message.tool_call_id or "",
                "content": message.content or "",
            }])
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for call in message.tool_calls or ():
                blocks.append({"type": "tool_use", "id": call.id, "name": call.name,
                               "input": _parse_arguments(call.arguments)})
            add("assistant", blocks)
        else:
            # The API rejects empty text blocks; an empty user turn still needs a block.
            add("user", [{"type": "text", "text": message.content or "(empty)"}])
    wire_tools = [
        {"name": t.name, "description": t.description, "input_schema": t.parameters or {"type": "object"}}
        for t in tools
    ]
    return ("\n\n".join(system) or None), out, wire_tools


def _settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _UNSUPPORTED_SETTINGS:
            continue
        if key == "max_completion_tokens":
            key = "max_tokens"
        elif key == "stop":
            key, value = "stop_sequences", [value] if isinstance(value, str) else value
        elif key == "tool_choice" and isinstance(value, str):
            value = {"auto": {"type": "auto"}, "required": {"type": "any"},
                     "any": {"type": "any"}, "none": {"type": "none"}}.get(value, {"type": value})
        out[key] = value
    return out


def _usage(wire: _Usage | None, into: Usage | None = None) -> Usage:
    usage = into or Usage()
    if wire is None:
        return usage
    if wire.input_tokens is not None:
        usage.input_tokens = (
            wire.input_tokens
            + (wire.cache_creation_input_tokens or 0)
            + (wire.cache_read_input_tokens or 0)
        )
    if wire.output_tokens is not None:
        usage.output_tokens = wire.output_tokens
    return usage


def _error_detail(body: bytes) -> tuple[str, str]:
    """(message, error type) from an Anthropic error body, or whatever the body says."""
    try:
        event = _decode_event(body)
    except msgspec.DecodeError:
        return body[:500].decode("utf-8", "replace").strip() or "(empty body)", ""
    if event.error is not None:
        return event.error.message[:500], event.error.type
    return body[:500].decode("utf-8", "replace"), ""


class AnthropicModel(HTTPModel):
    """A `Model` over Anthropic's `/v1/messages`.

        model = AnthropicModel("claude-3-5-haiku-latest", api_key=key, max_tokens=2048)
        model.name  # "anthropic:claude-3-5-haiku-latest"

    `settings` are defaults merged under `request.settings` (temperature, top_p, top_k,
    stop_sequences, tool_choice, …; chat-completions names such as `stop` and
    `max_completion_tokens` are translated, OpenAI-only ones dropped). The HTTP session is
    created on first use inside the running loop; `aclose()` releases its connections.
    """

    _INVALID_URL_KIND = "bad_request"
    _UNEXPECTED_KIND = "error"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.anthropic.com",
        api_key: str | None = None,
        api_version: str = "2023-06-01",
        max_tokens: int = 1024,
        provider: str = "anthropic",
        connect_timeout_s: float = 10,
        read_timeout_s: float = 300,
        max_connections: int = 1000,
        headers: dict[str, str] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        provider_headers = {"anthropic-version": api_version}
        if api_key:
            provider_headers["x-api-key"] = api_key
        super().__init__(
            model, base_url=base_url, provider=provider, provider_headers=provider_headers,
            connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s,
            max_connections=max_connections, headers=headers, settings=settings,
        )
        self.max_tokens = max_tokens
        # Accept a base URL given with or without the API version path.
        path = "/messages" if self.base_url.endswith("/v1") else "/v1/messages"
        self._url = URL(self.base_url + path)

    def __repr__(self) -> str:
        return f"AnthropicModel({self.model!r}, base_url={self.base_url!r})"

    # --- one call --------------------------------------------------------------------------

    def _body(self, request: ModelRequest) -> bytes:
        settings = {**self.settings, **request.settings} if request.settings else self.settings
        system, messages, tools = wire_request(request.messages, request.tools)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens}
        body.update(_settings(settings))
        body["messages"] = messages
        if system:
            body["system"] = system
        if tools:
            body["tools"] = tools
        if request.stream:
            body["stream"] = True
        else:
            body.pop("stream", None)
        return _encode(body)

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield `TextDelta`s (streamed requests only), then one `ModelResponse`."""
        loop = asyncio.get_running_loop()
        response = await self._post(request, loop)
        finished = False
        try:
            if response.status >= 300:
                raise await self._http_error(response)
            if request.stream:
                async for item in self._read_stream(response):
                    yield item
            else:
                yield self._parse_message(await response.read())
            finished = True
        except ModelError:
            raise
        except Exception as exc:
            raise self._transport_error(exc, request, loop) from exc
        finally:
            # A clean end returns the connection to the pool; anything else (an error, a
            # consumer that cancelled or walked away) closes it: its unread rest is garbage.
            if finished:
                response.release()
            else:
                response.close()

    async def _read_stream(self, response: Response) -> AsyncGenerator[StreamItem, None]:
        parser = SSEParser()
        text_parts: list[str] = []
        # block index -> [id, name, json fragments]; text blocks are not kept here
        calls: dict[int, tuple[str, str, list[str]]] = {}
        usage = Usage()
        model = ""
        stop_reason: str | None = None
        stopped = False
        while not stopped:
            chunk = await response.readany()
            payloads = parser.feed(chunk) if chunk else parser.flush()
            for payload in payloads:
                try:
                    event = _decode_event(payload)
                except msgspec.DecodeError as exc:
                    raise self._error(f"invalid stream event ({exc}): {payload[:200]!r}",
                                      kind="malformed", retryable=True) from exc
                kind = event.type
                if kind == "content_block_delta" and event.delta is not None:
                    delta = event.delta
                    if delta.type == "text_delta" and delta.text:
                        text_parts.append(delta.text)
                        yield TextDelta(delta.text)
                    elif delta.type == "input_json_delta" and delta.partial_json:
                        call = calls.get(event.index)
                        if call is not None:
                            call[2].append(delta.partial_json)
                elif kind == "content_block_start" and event.content_block is not None:
                    block = event.content_block
                    if block.type == "tool_use":
                        calls[event.index] = (block.id or _new_call_id(), block.name or "", [])
                    elif block.type == "text" and block.text:
                        text_parts.append(block.text)
                        yield TextDelta(block.text)
                elif kind == "message_start" and event.message is not None:
                    model = event.message.model
                    _usage(event.message.usage, usage)
                elif kind == "message_delta":
                    if event.delta is not None and event.delta.stop_reason:
                        stop_reason = event.delta.stop_reason
                    _usage(event.usage, usage)
                elif kind == "message_stop":
                    stopped = True
                    break
                elif kind == "error":
                    raise self._event_error(event.error)
            if not chunk:
                break
        if not stopped:
            raise self._error("stream ended before message_stop (truncated)", kind="malformed",
                              retryable=True)
        tool_calls = [
            ToolCall(id=ident, name=name, arguments="".join(fragments) or "{}")
            for ident, name, fragments in calls.values()
        ]
        yield ModelResponse(
            message=Message(role="assistant", content="".join(text_parts) or None,
                            tool_calls=tool_calls or None),
            usage=usage,
            model=model,
            finish_reason=_STOP_REASONS.get(stop_reason or "", stop_reason),
        )

    def _parse_message(self, body: bytes) -> ModelResponse:
        try:
            message = _decode_event(body)
        except msgspec.DecodeError as exc:
            raise self._error(f"invalid JSON in response ({exc}): {body[:200]!r}",
                              kind="malformed", retryable=True) from exc
        if message.type == "error":
            raise self._event_error(message.error)
        if message.content is None:
            raise self._error("response has no content", kind="malformed", retryable=True)
        texts: list[str] = []
        tool_calls: list[ToolCall] = []
        for block in message.content:
            if block.type == "text" and block.text:
                texts.append(block.text)
            elif block.type == "tool_use":
                arguments = _encode(block.input if block.input is not None else {}).decode()
                tool_calls.append(ToolCall(id=block.id or _new_call_id(), name=block.name or "",
                                           arguments=arguments))
        return ModelResponse(
            message=Message(role="assistant", content="".join(texts) or None,
                            tool_calls=tool_calls or None),
            usage=_usage(message.usage),
            model=message.model,
            finish_reason=_STOP_REASONS.get(message.stop_reason or "", message.stop_reason),
        )

    # --- errors ----------------------------------------------------------------------------

    def _event_error(self, error: _Error | None) -> ModelError:
        """An error reported inside a 200 (a stream's `error` event)."""
        type_ = error.type if error else ""
        message = error.message if error else "unknown error"
        status = _STATUS_OF_TYPE.get(type_, 500)
        kind, retryable = _classify(status, type_, message)
        return self._error(f"stream error ({type_ or 'unknown'}): {message[:500]}", kind=kind,
                           retryable=retryable, status_code=status)

    async def _http_error(self, response: Response) -> ModelError:
        status = response.status
        message, type_ = _error_detail(await read_error_body(response))
        kind, retryable = _classify(status, type_, message)
        error = self._error(
            f"HTTP {status}{f' {type_}' if type_ else ''}: {message}", kind=kind,
            retryable=retryable, status_code=status,
            retry_after=retry_after(response.headers) if retryable else None,
        )
        if type_:
            error.details["code"] = type_
        return error

def _classify(status: int, type_: str, message: str) -> tuple[str, bool]:
    """(kind, retryable) for an HTTP status and Anthropic error type."""
    if status == 429 or type_ == "rate_limit_error":
        return "rate_limited", True
    if status == 529 or type_ == "overloaded_error" or status >= 500:
        return "overloaded", True
    if status == 408:
        return "timeout", True
    if status == 409:
        return "error", True
    if status in (401, 403):
        return "auth", False
    lowered = message.lower()
    if status in (400, 413) and any(marker in lowered for marker in _OVERFLOW_MARKERS):
        return "context_overflow", False
    return "bad_request", False


def _new_call_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"
