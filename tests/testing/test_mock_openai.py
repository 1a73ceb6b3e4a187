"""The mock OpenAI server and its fault plan: deterministic answers, faults, control API."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from roost.testing.faults import FAULT_MODES, FaultInjector, FaultPlan
from roost.testing.mock_openai import MockOpenAIServer, arguments_for, embed, pick_tool

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
async def server() -> AsyncIterator[MockOpenAIServer]:
    async with MockOpenAIServer() as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as response:
        raw = await response.read()
        return response.status, msgspec.json.decode(raw) if raw else None


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


# --- schema-valid arguments --------------------------------------------------------------


def test_arguments_take_required_fields_from_the_text() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "units": {"type": "string", "enum": ["metric", "imperial"]},
            "detailed": {"type": "boolean"},
            "ratio": {"type": "number"},
            "note": {"type": "string"},  # optional: left out
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "label": {"type": "string"}},
                "required": ["label"],
            },
        },
        "required": ["city", "days", "units", "detailed", "ratio", "where"],
    }
    args = arguments_for(schema, "What is the forecast in Lisbon for 30 days?")
    assert args == {
        "city": "Lisbon",
        "days": 14,  # 30 clamped to the maximum
        "units": "metric",
        "detailed": True,
        "ratio": 30.0,
        "where": {"label": "Lisbon"},
    }


def test_arguments_fall_back_to_the_text_and_one() -> None:
    schema = {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["query", "limit"],
    }
    assert arguments_for(schema, "search for cheap flights") == {
        "query": "search for cheap flights",
        "limit": 1,
    }


def test_arguments_follow_refs_unions_arrays_and_formats() -> None:
    # The shape pydantic produces for `def book(guest: Guest, dates: list[date], note: str | None)`.
    schema = {
        "$defs": {
            "Guest": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                "required": ["name", "age"],
            }
        },
        "type": "object",
        "properties": {
            "guest": {"$ref": "#/$defs/Guest"},
            "dates": {"type": "array", "items": {"type": "string", "format": "date"}},
            "note": {"anyOf": [{"type": "null"}, {"type": "string", "maxLength": 4}]},
            "kind": {"const": "hotel"},
            "score": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        },
        "required": ["guest", "dates", "note", "kind", "score"],
    }
    args = arguments_for(schema, "Book a room for Alice please")
    assert args == {
        "guest": {"name": "Alice", "age": 1},
        "dates": ["2024-01-01"],
        "note": "Alic",  # the name, cut to maxLength
        "kind": "hotel",
        "score": 0.5,
    }


def test_recursive_schema_terminates() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {"child": {"$ref": "#/$defs/Node"}},
                "required": ["child"],
            }
        },
        "$ref": "#/$defs/Node",
    }
    value = arguments_for(schema, "x")
    depth = 0
    while value:
        value = value["child"]
        depth += 1
    assert 0 < depth < 10


def test_pick_tool_by_words_with_first_as_fallback() -> None:
    tools = [
        ("get_time", "The current time in a timezone."),
        ("get_weather", "Current weather and forecast for a city."),
        ("search_docs", "Search the documentation."),
    ]
    assert pick_tool(tools, "Will it rain? Check the weather forecast in Oslo") == 1
    assert pick_tool(tools, "search the docs for install steps") == 2
    assert pick_tool(tools, "hello") == 0


# --- embeddings --------------------------------------------------------------------------


def test_embed_is_deterministic_unit_and_similarity_aware() -> None:
    a = embed("the cat sat on the mat")
    assert a == embed("the cat sat on the mat")
    assert len(a) == 64
    assert abs(cosine(a, a) - 1.0) < 1e-9
    similar = embed("a cat sat on a mat")
    different = embed("quarterly revenue grew strongly in europe")
    assert cosine(a, similar) > 0.6
    assert cosine(a, similar) > cosine(a, different) + 0.3
    assert abs(cosine(embed(""), embed("")) - 1.0) < 1e-9  # empty text: still a unit vector


async def test_embeddings_endpoint(server: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.base_url}/embeddings"
    status, body = await post(http, url, {"input": ["red apple", "green apple"], "model": "e"})
    assert status == 200
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][0]["embedding"] == embed("red apple")
    assert body["model"] == "e"
    assert body["usage"] == {"prompt_tokens": 4, "total_tokens": 4}

    status, body = await post(
        http, url, {"input": "red apple", "dimensions": 16, "encoding_format": "base64"}
    )
    assert status == 200
    packed = base64.b64decode(body["data"][0]["embedding"])
    decoded = struct.unpack("<16f", packed)
    assert decoded == pytest.approx(embed("red apple", 16), abs=1e-6)

    status, body = await post(http, url, {"input": "x", "dimensions": 0})
    assert status == 400
    status, body = await post(http, url, {"inputs": "typo"})
    assert status == 400 and "input" in body["error"]["message"]


# --- chat completions --------------------------------------------------------------------


async def test_chat_answers_tool_call_then_from_result(
    server: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    url = f"{server.base_url}/chat/completions"
    tools = [
        {"type": "function", "function": {"name": "lookup", "parameters": {}}},
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        },
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Rome?"}]
    status, body = await post(http, url, {"model": "m", "messages": messages, "tools": tools})
    assert status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert msgspec.json.decode(call["function"]["arguments"]) == {"city": "Rome"}

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "Hot"},
    ]
    status, body = await post(http, url, {"messages": messages, "tools": tools})
    assert body["choices"][0]["message"]["content"] == "Based on get_weather: Hot"
    assert body["model"] == "mock-gpt"

    # A new user message after the results: the tools are in play again.
    messages.append(
        {"role": "user", "content": [{"type": "text", "text": "And the weather in Oslo?"}]}
    )
    status, body = await post(http, url, {"messages": messages, "tools": tools})
    arguments = body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert msgspec.json.decode(arguments) == {"city": "Oslo"}


async def test_chat_stream_framing(server: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.base_url}/chat/completions"
    request = {
        "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with http.post(url, json=request) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        raw = await response.read()
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [msgspec.json.decode(e) for e in events[:-1]]
    fragments = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert len(fragments) >= 3  # the head (name, id, "") and 2+ argument fragments
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    request.pop("stream_options")
    async with http.post(url, json=request) as response:
        raw = await response.read()
    assert b'"usage"' not in raw


async def test_bad_requests_get_400(server: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    url = f"{server.base_url}/chat/completions"
    async with http.post(url, data=b"{not json") as response:
        assert response.status == 400
    status, body = await post(http, url, {"messages": []})
    assert status == 400
    status, body = await post(
        http, url, {"messages": [{"role": "user", "content": "hi"}]}, {"X-Mock-Fault": "bogus"}
    )
    assert status == 400 and "bogus" in body["error"]["message"]
    async with http.get(f"{server.url}/nowhere") as response:
        assert response.status == 404
    async with http.get(url) as response:
        assert response.status == 405


async def test_models_endpoint(server: MockOpenAIServer, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{server.base_url}/models") as response:
        body = await response.json()
    assert [m["id"] for m in body["data"]] == ["mock-gpt", "mock-embedding"]


async def test_latency_header_and_open_request_stats(
    server: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    url = f"{server.base_url}/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    calls = [
        asyncio.create_task(post(http, url, body, {"X-Mock-Latency-Ms": "100"})) for _ in range(5)
    ]
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_requests == 5)
        results = await asyncio.gather(*calls)
    assert all(status == 200 for status, _ in results)
    assert server.stats.open_requests == 0
    assert server.stats.max_open_requests == 5
    assert server.stats.chat_requests == 5


# --- faults ------------------------------------------------------------------------------


def test_fault_rate_is_seeded_and_roughly_right() -> None:
    def draws(seed: int) -> list[str]:
        injector = FaultInjector(FaultPlan("http_500", rate=0.3, seed=seed))
        return [injector.pick() for _ in range(2000)]

    first = draws(7)
    assert first == draws(7)
    assert first != draws(8)
    assert 0.25 < first.count("http_500") / 2000 < 0.35


def test_fault_count_covers_the_next_requests_only() -> None:
    injector = FaultInjector()
    injector.set(FaultPlan("http_503", count=2))
    assert injector.active
    assert [injector.pick() for _ in range(4)] == ["http_503", "http_503", "none", "none"]
    assert not injector.active and injector.remaining == 0
    assert injector.stats.to_dict() == {
        "requests": 4,
        "injected": 2,
        "by_mode": {"http_503": 2, "none": 2},
    }


def test_header_override_does_not_consume_the_plan() -> None:
    injector = FaultInjector(FaultPlan("http_500", count=1))
    assert injector.pick("timeout") == "timeout"
    assert injector.pick(None) == "http_500"
    assert injector.pick("") == "none"
    with pytest.raises(ValueError, match="unknown fault mode"):
        injector.pick("explode")
    injector.clear()
    assert injector.plan == FaultPlan()


@pytest.mark.parametrize(
    "data",
    [
        {"mode": "nope"},
        {"mode": "http_500", "rate": 1.5},
        {"mode": "http_500", "rate": "half"},
        {"mode": "http_500", "count": -1},
        {"mode": "http_500", "count": 1.5},
        {"mode": "http_500", "delay_s": -1},
        {"mode": "http_500", "seed": None},
        {"mode": "http_500", "colour": "red"},
        ["http_500"],
    ],
)
def test_fault_plan_from_dict_rejects_bad_input(data: object) -> None:
    with pytest.raises(ValueError):
        FaultPlan.from_dict(data)


def test_fault_plan_round_trips() -> None:
    plan = FaultPlan("http_429", rate=0.5, count=3, retry_after_s=2, seed=9)
    assert FaultPlan.from_dict(plan.to_dict()) == plan
    assert set(FAULT_MODES) >= {"none", "timeout", "truncated_sse"}


async def test_fault_control_endpoints(
    server: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    chat = f"{server.base_url}/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    status, plan = await post(
        http, f"{server.url}/_mock/faults", {"mode": "http_429", "count": 1, "retry_after_s": 3}
    )
    assert status == 200 and plan["mode"] == "http_429"
    async with http.post(chat, json=body) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "3"
    assert (await post(http, chat, body))[0] == 200

    status, _ = await post(http, f"{server.url}/_mock/faults", {"mode": "http_500", "rate": 2})
    assert status == 400

    await post(http, f"{server.url}/_mock/faults", {"mode": "http_503"})
    async with http.delete(f"{server.url}/_mock/faults") as response:
        assert response.status == 204
    assert (await post(http, chat, body))[0] == 200

    async with http.get(f"{server.url}/_mock/stats") as response:
        stats = await response.json()
    assert stats["requests_total"] == 3
    assert stats["faults"]["by_mode"] == {"http_429": 1, "none": 2}
    assert stats["open_requests"] == 0 and stats["open_connections"] >= 1

    async with http.post(f"{server.url}/_mock/reset") as response:
        assert response.status == 204
    assert server.stats.requests_total == 0
    assert server.faults.stats.requests == 0


async def test_timeout_fault_is_dropped_when_the_client_leaves(
    server: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.faults.set(FaultPlan("timeout", timeout_s=60))
    url = f"{server.base_url}/chat/completions"
    call = asyncio.create_task(post(http, url, {"messages": [{"role": "user", "content": "hi"}]}))
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_requests == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    async with asyncio.timeout(5):
        await server.stats.wait_for(lambda s: s.open_requests == 0)


async def test_timeout_fault_is_bounded(
    server: MockOpenAIServer, http: aiohttp.ClientSession
) -> None:
    server.faults.set(FaultPlan("timeout", timeout_s=0.1))
    url = f"{server.base_url}/chat/completions"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, url, {"messages": [{"role": "user", "content": "hi"}]})


# --- CLI ---------------------------------------------------------------------------------


async def test_cli_serves_until_terminated(http: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "roost.testing.mock_openai",
        "--port",
        "0",
        "--latency-ms",
        "1",
        stdout=subprocess.PIPE,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split("listening on ", 1)[1].strip()
        async with http.get(f"{url}/v1/models") as response:
            assert response.status == 200
    finally:
        process.terminate()
        async with asyncio.timeout(10):
            assert await process.wait() == 0
