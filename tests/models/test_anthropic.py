"""`AnthropicModel` over real HTTP against the in-process mock Anthropic server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from roost.errors import ModelError
from roost.models.anthropic import AnthropicModel, wire_request
from roost.models.base import (
    Message,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    ToolSpec,
    complete,
)
from roost.testing.faults import FaultPlan
from roost.testing.mock_anthropic import MockAnthropicServer

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1}}, "required": ["city", "days"]},
)
CLOCK = ToolSpec(
    name="get_time",
    description="The current time in a timezone.",
    parameters={"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
)


@pytest.fixture
async def server() -> AsyncIterator[MockAnthropicServer]:
    async with MockAnthropicServer(api_key="sk-test") as mock:
        yield mock


@pytest.fixture
async def model(server: MockAnthropicServer) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel("mock-claude", base_url=server.url, api_key="sk-test", max_tokens=256)
    yield model
    await model.aclose()


def ask(text: str, *, stream: bool = False, tools: list[ToolSpec] | None = None,
        **settings: object) -> ModelRequest:
    return ModelRequest(
        messages=[Message(role="system", content="Be brief."), Message(role="user", content=text)],
        tools=tools or [], stream=stream, settings=dict(settings),
    )


async def items_of(model: AnthropicModel, request: ModelRequest) -> list[StreamItem]:
    stream = model.stream(request)
    try:
        return [item async for item in stream]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_text_answer_and_usage(model: AnthropicModel, server: MockAnthropicServer) -> None:
    response = await complete(model, ask("hello there"))
    assert response.message.content == "You said: hello there"
    assert response.finish_reason == "stop"
    assert response.model == "mock-claude"
    assert response.usage.input_tokens > 0 and response.usage.output_tokens == 4
    headers, body = server.last_request  # type: ignore[misc]
    assert headers["x-api-key"] == "sk-test" and headers["anthropic-version"] == "2023-06-01"
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 256
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]


async def test_streamed_text(model: AnthropicModel) -> None:
    items = await items_of(model, ask("stream this please", stream=True))
    deltas = [i.text for i in items if isinstance(i, TextDelta)]
    assert len(deltas) > 1
    final = items[-1]
    assert isinstance(final, ModelResponse)
    assert "".join(deltas) == final.message.content == "You said: stream this please"
    assert final.usage.output_tokens == 5 and final.usage.input_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_use_then_answer_from_the_result(model: AnthropicModel, server: MockAnthropicServer,
                                                    stream: bool) -> None:
    first = await complete(model, ask("weather in Paris for 3 days", stream=stream,
                                      tools=[CLOCK, WEATHER]))
    assert first.finish_reason == "tool_calls"
    [call] = first.message.tool_calls or []
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    assert msgspec.json.decode(call.arguments) == {"city": "Paris", "days": 3}
    _, body = server.last_request  # type: ignore[misc]
    assert body["tools"][1] == {"name": "get_weather", "description": WEATHER.description,
                                "input_schema": WEATHER.parameters}

    history = [
        Message(role="user", content="weather in Paris for 3 days"),
        first.message,
        Message(role="tool", tool_call_id=call.id, name=call.name, content="sunny, 21C"),
    ]
    second = await complete(model, ModelRequest(messages=history, tools=[CLOCK, WEATHER], stream=stream))
    assert second.message.content == "Based on get_weather: sunny, 21C"
    assert second.finish_reason == "stop"
    _, body = server.last_request  # type: ignore[misc]
    assert body["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris", "days": 3}}]}
    assert body["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21C"}]}


def test_wire_request_merges_turns_and_maps_settings() -> None:
    calls = [ToolCall(id="a", name="f", arguments='{"x": 1}'), ToolCall(id="b", name="g", arguments="oops")]
    system, messages, tools = wire_request([
        Message(role="system", content="one"),
        Message(role="user", content="hi"),
        Message(role="assistant", content="let me check", tool_calls=calls),
        Message(role="tool", tool_call_id="a", content="1"),
        Message(role="tool", tool_call_id="b", content="2"),
        Message(role="user", content="and?"),
        Message(role="system", content="two"),
    ], [])
    assert system == "one\n\ntwo"
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"][2]["input"] == {"_raw": "oops"}
    # Both results and the next user text share one user turn.
    assert [b["type"] for b in messages[2]["content"]] == ["tool_result", "tool_result", "text"]
    assert tools == []


async def test_settings_are_translated(model: AnthropicModel, server: MockAnthropicServer) -> None:
    await complete(model, ask("hi", temperature=0.1, stop="END", max_completion_tokens=50,
                              tool_choice="required", seed=3))
    _, body = server.last_request  # type: ignore[misc]
    assert body["temperature"] == 0.1 and body["stop_sequences"] == ["END"]
    assert body["max_tokens"] == 50 and body["tool_choice"] == {"type": "any"}
    assert "seed" not in body and "stream" not in body


@pytest.mark.parametrize(
    ("mode", "status", "kind"),
    [("http_500", 500, "overloaded"), ("http_503", 529, "overloaded"),
     ("http_429", 429, "rate_limited")],
)
async def test_http_faults_are_retryable_model_errors(model: AnthropicModel, server: MockAnthropicServer,
                                                      mode: str, status: int, kind: str) -> None:
    server.faults.set(FaultPlan(mode, count=1, retry_after_s=2))  # type: ignore[arg-type]
    with pytest.raises(ModelError) as raised:
        await complete(model, ask("hi"))
    error = raised.value
    assert (error.status_code, error.kind, error.retryable) == (status, kind, True)
    assert error.provider == "anthropic"
    assert error.retry_after == (2.0 if mode == "http_429" else None)
    assert (await complete(model, ask("hi"))).message.content == "You said: hi"  # plan spent


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("mode", "kinds"),
    [("malformed_json", {"malformed"}), ("truncated_sse", {"malformed"}),
     ("reset_mid_stream", {"connection", "malformed"})],
)
async def test_broken_bodies_are_retryable(model: AnthropicModel, server: MockAnthropicServer,
                                           mode: str, kinds: set[str], stream: bool) -> None:
    server.faults.set(FaultPlan(mode, count=1))  # type: ignore[arg-type]
    with pytest.raises(ModelError) as raised:
        await items_of(model, ask("tell me a long story please", stream=stream))
    assert raised.value.kind in kinds and raised.value.retryable


async def test_streamed_text_before_a_reset_reaches_the_consumer(model: AnthropicModel,
                                                                 server: MockAnthropicServer) -> None:
    server.token_delay_s = 0.001  # events in separate writes, so the first ones arrive
    server.faults.set(FaultPlan("reset_mid_stream", count=1))
    seen: list[str] = []
    with pytest.raises(ModelError):
        async for item in model.stream(ask("one two three four five six seven eight", stream=True)):
            if isinstance(item, TextDelta):
                seen.append(item.text)
    assert seen  # partial output was streamed, then the error


async def test_auth_and_bad_request(server: MockAnthropicServer) -> None:
    bad_key = AnthropicModel("mock-claude", base_url=server.url, api_key="wrong")
    try:
        with pytest.raises(ModelError) as raised:
            await complete(bad_key, ask("hi"))
        assert (raised.value.kind, raised.value.status_code, raised.value.retryable) == ("auth", 401, False)
    finally:
        await bad_key.aclose()


async def test_deadline_becomes_a_timeout_and_closes_the_request(model: AnthropicModel,
                                                                 server: MockAnthropicServer) -> None:
    server.faults.set(FaultPlan("timeout", timeout_s=30))
    loop = asyncio.get_running_loop()
    request = ask("hi")
    request.deadline = loop.time() + 0.2
    with pytest.raises(ModelError) as raised:
        await complete(model, request)
    assert raised.value.kind == "deadline" and not raised.value.retryable
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_requests == 0)
    request.deadline = loop.time() - 1
    with pytest.raises(ModelError, match="deadline passed"):
        await complete(model, request)


async def test_cancelled_consumer_closes_the_stream(model: AnthropicModel, server: MockAnthropicServer) -> None:
    server.token_delay_s = 0.05
    stream = model.stream(ask("one two three four five six seven eight nine ten", stream=True))
    first = await anext(stream)  # type: ignore[call-overload]
    assert isinstance(first, TextDelta)
    await stream.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_requests == 0)


async def test_unreachable_server_is_a_connection_error() -> None:
    model = AnthropicModel("x", base_url="http://127.0.0.1:9", api_key="k")
    try:
        with pytest.raises(ModelError) as raised:
            await complete(model, ask("hi"))
        assert raised.value.kind == "connection" and raised.value.retryable
    finally:
        await model.aclose()


def _error_body(kind: str, message: str) -> bytes:
    return msgspec.json.encode({"type": "error", "error": {"type": kind, "message": message}})


@pytest.mark.parametrize(
    ("status", "body", "stream", "expected"),
    [
        (200, b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
              b'"message": "Overloaded"}}\n\n', True, ("overloaded", 529, True)),
        (400, _error_body("invalid_request_error", "prompt is too long: 300000 tokens > 200000"),
         False, ("context_overflow", 400, False)),
        (400, _error_body("invalid_request_error", "messages: roles must alternate"), False,
         ("bad_request", 400, False)),
        (403, _error_body("permission_error", "no access"), False, ("auth", 403, False)),
        (502, b"<html>bad gateway</html>", False, ("overloaded", 502, True)),
    ],
)
async def test_canned_responses_map_to_kinds(status: int, body: bytes, stream: bool,
                                             expected: tuple[str, int, bool]) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        if status != 200:
            return web.Response(status=status, body=body, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(body)
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    # A base URL given with its /v1 suffix works too.
    model = AnthropicModel("x", base_url=f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(ModelError) as raised:
            await items_of(model, ask("hi", stream=stream))
        error = raised.value
        assert (error.kind, error.status_code, error.retryable) == expected
    finally:
        await model.aclose()
        await runner.cleanup()
