"""`OpenAICompatModel` over real HTTP against the in-process mock OpenAI server."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import msgspec
import pytest

from roost.errors import ModelError
from roost.models.base import (
    Message,
    Model,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    ToolSpec,
    complete,
)
from roost.models.openai_compat import OpenAICompatModel, _retry_after, _SSEParser
from roost.testing.faults import FaultMode, FaultPlan
from roost.testing.mock_openai import MockOpenAIServer

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
CLOCK = ToolSpec(
    name="get_time",
    description="The current time in a timezone.",
    parameters={"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]},
)


def user(text: str) -> list[Message]:
    return [Message(role="system", content="Be brief."), Message(role="user", content=text)]


async def collect(model: OpenAICompatModel, request: ModelRequest) -> list[StreamItem]:
    async with aclosing(model.stream(request)) as stream:
        return [item async for item in stream]


@pytest.fixture
async def server() -> AsyncIterator[MockOpenAIServer]:
    async with MockOpenAIServer() as mock:
        yield mock


@pytest.fixture
async def model(server: MockOpenAIServer) -> AsyncIterator[OpenAICompatModel]:
    client = OpenAICompatModel("mock-gpt", base_url=server.base_url, api_key="sk-test")
    yield client
    await client.aclose()


# --- answers -----------------------------------------------------------------------------


async def test_non_streamed_text(model: OpenAICompatModel) -> None:
    items = await collect(model, ModelRequest(messages=user("hello there friend")))

    assert len(items) == 1  # no deltas when the request does not stream
    response = items[0]
    assert isinstance(response, ModelResponse)
    assert response.message.role == "assistant"
    assert response.message.content == "You said: hello there friend"
    assert response.message.tool_calls is None
    assert response.finish_reason == "stop"
    assert response.model == "mock-gpt"
    assert response.usage.input_tokens > 0
    assert response.usage.output_tokens == 5
    assert model.name == "openai:mock-gpt"
    assert isinstance(model, Model)


async def test_streamed_text(model: OpenAICompatModel) -> None:
    items = await collect(model, ModelRequest(messages=user("one two three four"), stream=True))

    *deltas, response = items
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert len(deltas) == 6  # "You", " said:", " one", " two", ...
    assert isinstance(response, ModelResponse)
    text = "".join(d.text for d in deltas if isinstance(d, TextDelta))
    assert text == response.message.content == "You said: one two three four"
    assert response.finish_reason == "stop"
    assert response.usage.output_tokens == 6
    assert response.usage.input_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call(model: OpenAICompatModel, server: MockOpenAIServer, stream: bool) -> None:
    request = ModelRequest(
        messages=user("What's the weather in Paris for 3 days?"),
        tools=[CLOCK, WEATHER],
        stream=stream,
    )
    items = await collect(model, request)

    assert len(items) == 1  # a tool call streams no text
    response = items[0]
    assert isinstance(response, ModelResponse)
    assert response.finish_reason == "tool_calls"
    assert response.message.content is None
    calls = response.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].name == "get_weather"
    assert calls[0].id
    # Streamed, the mock sends the arguments in two fragments: they must be rejoined.
    assert msgspec.json.decode(calls[0].arguments) == {"city": "Paris"}
    assert response.usage.output_tokens > 0

    assert server.last_request is not None
    _, body = server.last_request
    assert body["tools"][1] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": WEATHER.description,
            "parameters": WEATHER.parameters,
        },
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_result_round_trip(
    model: OpenAICompatModel, server: MockOpenAIServer, stream: bool
) -> None:
    first = await complete(model, ModelRequest(messages=user("Weather in Paris?"), tools=[WEATHER]))
    assert first.message.tool_calls
    call = first.message.tool_calls[0]
    history = [
        *user("Weather in Paris?"),
        first.message,
        Message(role="tool", tool_call_id=call.id, name=call.name, content="Sunny, 21 C"),
    ]

    second = await complete(model, ModelRequest(messages=history, tools=[WEATHER], stream=stream))

    assert second.message.content == "Based on get_weather: Sunny, 21 C"
    assert server.last_request is not None
    _, body = server.last_request
    assert body["messages"][2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments},
            }
        ],
    }
    assert body["messages"][3] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": "Sunny, 21 C",
    }


async def test_settings_merge_and_stream_options(server: MockOpenAIServer) -> None:
    model = OpenAICompatModel(
        "mock-gpt",
        base_url=server.base_url,
        settings={"temperature": 0.1, "max_tokens": 50},
    )
    try:
        await complete(model, ModelRequest(messages=user("hi"), settings={"temperature": 0.7}))
        assert server.last_request is not None
        _, body = server.last_request
        assert body["temperature"] == 0.7
        assert body["max_tokens"] == 50
        assert body["model"] == "mock-gpt"
        assert "stream" not in body

        await complete(model, ModelRequest(messages=user("hi"), stream=True))
        _, body = server.last_request
        assert body["stream"] is True
        assert body["stream_options"] == {"include_usage": True}
        assert body["temperature"] == 0.1
    finally:
        await model.aclose()


async def test_headers_auth_and_trace_context(server: MockOpenAIServer) -> None:
    model = OpenAICompatModel(
        "mock-gpt", base_url=server.base_url, api_key="sk-1", headers={"X-Team": "roost"}
    )
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    try:
        request = ModelRequest(
            messages=user("hi"),
            metadata={"traceparent": traceparent, "tracestate": "roost=1", "run_id": "r1"},
        )
        await complete(model, request)
        assert server.last_request is not None
        headers, _ = server.last_request
        assert headers["Authorization"] == "Bearer sk-1"
        assert headers["traceparent"] == traceparent
        assert headers["tracestate"] == "roost=1"
        assert headers["X-Team"] == "roost"
        assert headers["Content-Type"] == "application/json"

        await complete(model, ModelRequest(messages=user("hi")))
        headers, _ = server.last_request
        assert "traceparent" not in headers
    finally:
        await model.aclose()


async def test_connections_are_reused(model: OpenAICompatModel, server: MockOpenAIServer) -> None:
    for stream in (False, True, False, True):
        await complete(model, ModelRequest(messages=user("hi"), stream=stream))
        # A consumer that stops at the response, without asking for the end of the stream.
        async with aclosing(model.stream(ModelRequest(messages=user("hi"), stream=stream))) as s:
            async for item in s:
                if isinstance(item, ModelResponse):
                    break
    assert server.stats.requests_total == 8
    assert server.stats.max_open_connections == 1


async def test_aclose_releases_connections_and_model_is_reusable(
    model: OpenAICompatModel, server: MockOpenAIServer
) -> None:
    await complete(model, ModelRequest(messages=user("hi")))
    await model.aclose()
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_connections == 0)

    response = await complete(model, ModelRequest(messages=user("again")))
    assert response.message.content == "You said: again"


# --- errors ------------------------------------------------------------------------------

FAULTS: list[tuple[FaultMode, int | None, str]] = [
    ("http_500", 500, "HTTP 500"),
    ("http_503", 503, "HTTP 503"),
    ("http_429", 429, "HTTP 429"),
    ("malformed_json", None, "invalid"),
    ("truncated_sse", None, ""),
    ("reset_mid_stream", None, "cut short"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize(("mode", "status", "words"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_fault_becomes_retryable_model_error(
    model: OpenAICompatModel,
    server: MockOpenAIServer,
    mode: FaultMode,
    status: int | None,
    words: str,
    stream: bool,
) -> None:
    server.faults.set(FaultPlan(mode, count=1, retry_after_s=2))
    request = ModelRequest(messages=user("hello there"), stream=stream)

    with pytest.raises(ModelError) as caught:
        await complete(model, request)

    error = caught.value
    assert error.status_code == status
    assert error.retryable is True
    assert error.provider == "openai"
    assert words in str(error)
    assert error.retry_after == (2.0 if mode == "http_429" else None)
    if mode == "truncated_sse" and stream:
        assert "truncated" in str(error)
    # The plan is spent and the pool recovered: the next call succeeds.
    assert (await complete(model, request)).message.content == "You said: hello there"


async def test_http_429_with_fractional_retry_after(
    model: OpenAICompatModel, server: MockOpenAIServer
) -> None:
    server.faults.set(FaultPlan("http_429", retry_after_s=0.25))
    with pytest.raises(ModelError) as caught:
        await complete(model, ModelRequest(messages=user("hi")))
    assert caught.value.retry_after == 0.25


async def test_unauthorized_is_not_retryable() -> None:
    async with MockOpenAIServer(api_key="right") as server:
        model = OpenAICompatModel("mock-gpt", base_url=server.base_url, api_key="wrong")
        try:
            with pytest.raises(ModelError) as caught:
                await complete(model, ModelRequest(messages=user("hi")))
        finally:
            await model.aclose()
    assert caught.value.status_code == 401
    assert caught.value.retryable is False
    assert "invalid API key" in str(caught.value)


async def test_context_overflow_is_named() -> None:
    async with MockOpenAIServer(context_window=20) as server:
        model = OpenAICompatModel("mock-gpt", base_url=server.base_url)
        try:
            with pytest.raises(ModelError) as caught:
                await complete(model, ModelRequest(messages=user("word " * 100)))
            # Within the window the same model answers.
            await complete(model, ModelRequest(messages=user("short")))
        finally:
            await model.aclose()
    error = caught.value
    assert error.status_code == 400
    assert error.retryable is False
    assert "context_length_exceeded" in str(error)
    assert error.kind == "context_overflow"
    assert error.details["code"] == "context_length_exceeded"


async def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        model = OpenAICompatModel("m", base_url=f"http://127.0.0.1:{port}/v1", provider="local")
        try:
            with pytest.raises(ModelError) as caught:
                await complete(model, ModelRequest(messages=user("hi")))
        finally:
            await model.aclose()
    assert caught.value.retryable is True
    assert caught.value.status_code is None
    assert caught.value.provider == "local"
    assert "connection failed" in str(caught.value)


async def test_read_timeout_without_deadline_is_retryable(server: MockOpenAIServer) -> None:
    server.faults.set(FaultPlan("timeout"))
    model = OpenAICompatModel("mock-gpt", base_url=server.base_url, read_timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ModelError) as caught:
            await complete(model, ModelRequest(messages=user("hi")))
        elapsed = time.monotonic() - started
    finally:
        await model.aclose()
    assert caught.value.retryable is True
    assert "timed out" in str(caught.value)
    assert 0.15 < elapsed < 2.0
    # The client hung up, so the mock dropped the held request well before its 60 s.
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_requests == 0)


async def test_error_body_in_200_is_a_model_error(model: OpenAICompatModel) -> None:
    body = b'{"error": {"message": "upstream overloaded", "code": 502}}'
    with pytest.raises(ModelError) as caught:
        model._parse_completion(body)
    assert caught.value.retryable is True
    assert caught.value.status_code == 502
    assert "upstream overloaded" in str(caught.value)

    with pytest.raises(ModelError, match="no choices"):
        model._parse_completion(b'{"choices": []}')


# --- deadlines and cancellation ----------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_deadline_cuts_a_slow_call(server: MockOpenAIServer, stream: bool) -> None:
    server.latency_s = 2.0
    model = OpenAICompatModel("mock-gpt", base_url=server.base_url)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        request = ModelRequest(messages=user("hi"), deadline=started + 0.2, stream=stream)
        with pytest.raises(ModelError) as caught:
            await complete(model, request)
        elapsed = loop.time() - started
    finally:
        await model.aclose()
    assert caught.value.retryable is False
    assert "deadline" in str(caught.value)
    assert 0.19 <= elapsed < 1.0  # the mock would answer after 2 s


async def test_deadline_already_passed_sends_nothing(
    model: OpenAICompatModel, server: MockOpenAIServer
) -> None:
    deadline = asyncio.get_running_loop().time() - 0.001
    with pytest.raises(ModelError) as caught:
        await complete(model, ModelRequest(messages=user("hi"), deadline=deadline))
    assert caught.value.retryable is False
    assert server.stats.requests_total == 0


async def test_slow_first_token_within_deadline(
    model: OpenAICompatModel, server: MockOpenAIServer
) -> None:
    server.faults.set(FaultPlan("slow_first_token", delay_s=0.2))
    loop = asyncio.get_running_loop()
    started = loop.time()
    request = ModelRequest(messages=user("hi"), stream=True, deadline=started + 5)
    response = await complete(model, request)
    assert response.message.content == "You said: hi"
    assert loop.time() - started >= 0.2


async def test_cancelled_consumer_closes_the_connection() -> None:
    async with MockOpenAIServer(token_delay_s=0.05) as server:
        model = OpenAICompatModel("mock-gpt", base_url=server.base_url)
        first_delta = asyncio.Event()

        async def consume() -> None:
            async with aclosing(
                model.stream(ModelRequest(messages=user("x " * 200), stream=True))
            ) as s:
                async for item in s:
                    if isinstance(item, TextDelta):
                        first_delta.set()

        try:
            task = asyncio.create_task(consume())
            async with asyncio.timeout(5):
                await first_delta.wait()
            assert server.stats.open_requests == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # Closed, not pooled: the server sees the connection go, and its handler end.
            async with asyncio.timeout(5):
                await server.stats.wait_for(
                    lambda s: s.open_connections == 0 and s.open_requests == 0
                )
        finally:
            await model.aclose()


async def test_abandoned_stream_closes_the_connection() -> None:
    async with MockOpenAIServer(token_delay_s=0.05) as server:
        model = OpenAICompatModel("mock-gpt", base_url=server.base_url)
        try:
            request = ModelRequest(messages=user("x " * 200), stream=True)
            async with aclosing(model.stream(request)) as stream:
                async for item in stream:
                    assert isinstance(item, TextDelta)
                    break  # the consumer has seen enough
            async with asyncio.timeout(5):
                await server.stats.wait_for(lambda s: s.open_connections == 0)
        finally:
            await model.aclose()


# --- parsing units -----------------------------------------------------------------------


def test_sse_parser_handles_any_split() -> None:
    stream = (
        b": keep-alive\r\n\r\n"
        b'data: {"a": 1}\r\n\r\n'
        b"event: message\nid: 7\ndata: line one\ndata: line two\n\n"
        b"data:nospace\n\n"
        b"data: [DONE]\n\n"
    )
    expected = [b'{"a": 1}', b"line one\nline two", b"nospace", b"[DONE]"]
    for size in (1, 2, 3, 7, len(stream)):
        parser = _SSEParser()
        events: list[bytes] = []
        for start in range(0, len(stream), size):
            events.extend(parser.feed(stream[start : start + size]))
        assert events == expected, size
        assert parser.flush() == []


def test_sse_parser_flushes_an_unterminated_event() -> None:
    parser = _SSEParser()
    assert parser.feed(b"data: last") == []
    assert parser.flush() == [b"last"]


def test_retry_after_forms() -> None:
    assert _retry_after({"Retry-After": "3"}) == 3.0
    assert _retry_after({"Retry-After": "1.5"}) == 1.5
    assert _retry_after({"retry-after-ms": "250", "Retry-After": "1"}) == 0.25
    assert _retry_after({"Retry-After": "soon"}) is None
    assert _retry_after({}) is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    seconds = _retry_after({"Retry-After": date})
    assert seconds is not None and 28 <= seconds <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert _retry_after({"Retry-After": past}) == 0.0


async def test_tool_call_arguments_given_as_object(model: OpenAICompatModel) -> None:
    # Some servers send function arguments as a JSON object rather than JSON text.
    body = (
        b'{"model": "m", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": '
        b'{"content": null, "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]}}]}'
    )
    response = model._parse_completion(body)
    assert response.message.tool_calls is not None
    call = response.message.tool_calls[0]
    assert isinstance(call, ToolCall)
    assert (call.name, call.arguments) == ("f", '{"x":1}')
    assert call.id.startswith("call_")
    assert response.usage.input_tokens == 0
