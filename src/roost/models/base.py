"""The `Model` protocol: a request in, a stream of deltas and one final response out.

Providers (openai-compatible, anthropic, demo) implement it; wrappers (retry, breaker,
fallback, rate limit, router) take a `Model` and are one. The engine only sees this file.

    async for item in model.stream(request):
        if isinstance(item, TextDelta): show(item.text)
        else: response = item          # ModelResponse, always last

`complete(model, request)` drains a stream into its response.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Protocol, runtime_checkable

import msgspec

from roost.sessions.records import Usage


class ToolCall(msgspec.Struct, kw_only=True):
    """A tool call the model asked for: `ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}')`."""

    id: str
    name: str
    # JSON text, as the model produced it: it is parsed and validated by the tool.
    arguments: str = "{}"


class Message(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One chat message: `Message(role="user", content="Hi")`; tool results have role "tool"."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # on role "tool": which call this answers
    name: str | None = None  # on role "tool": the tool's name


class ToolSpec(msgspec.Struct, kw_only=True):
    """What a model is told about a tool."""

    name: str
    description: str
    parameters: dict[str, Any]


class ModelRequest(msgspec.Struct, kw_only=True):
    """What the engine asks a model: messages, tools, settings, deadline, streaming wish."""

    messages: list[Message]
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    # Provider settings passed through: temperature, max_tokens, top_p, ...
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    # Absolute deadline on the event loop clock (loop.time()); None = no deadline.
    deadline: float | None = None
    # True when the caller shows tokens as they come; providers may then stream.
    stream: bool = False
    # Correlation for logs, traces and idempotency: run_id, tenant, agent, session_id.
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class TextDelta(msgspec.Struct):
    """A piece of streamed answer text: `TextDelta("Hel")`."""

    text: str


class ModelResponse(msgspec.Struct, kw_only=True):
    """A model's final answer for one call: the assistant message, usage, and who answered."""

    message: Message
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""  # the model that actually answered (fallbacks and routers set it)
    finish_reason: str | None = None


StreamItem = TextDelta | ModelResponse


@runtime_checkable
class Model(Protocol):
    """A model provider or wrapper: `async for item in model.stream(request)`."""

    #: "provider:model", e.g. "openai:gpt-4o-mini", "demo"
    name: str

    def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield zero or more `TextDelta`, then exactly one `ModelResponse`.

        Raises `ModelError` (never a driver exception). Must honour `request.deadline` and
        cancellation: a cancelled consumer closes the upstream connection. An async generator,
        so a consumer that stops early can `aclose()` it and free the connection at once.
        """
        ...


async def complete(model: Model, request: ModelRequest) -> ModelResponse:
    """Drain `model.stream(request)` and return its final response."""
    from roost.errors import ModelError

    response: ModelResponse | None = None
    async for item in model.stream(request):
        if isinstance(item, ModelResponse):
            response = item
    if response is None:
        raise ModelError(f"{model.name}: stream ended without a response")
    return response
