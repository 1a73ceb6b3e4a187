"""Text a model writes in a tool-calling step is not the answer: the OpenAI-compatible streams
(chat completions and Responses, read with the official `openai` client) carry the final
answer's text only, while the step's text stays in the session's log."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import httpx
import openai
import pytest

from roost import Agent
from roost.models.base import Message, ModelRequest, ModelResponse, StreamItem, TextDelta
from roost.sessions.records import Usage
from roost.testing.scripted import call
from tests.protocols.conftest import get_weather, serve

pytestmark = pytest.mark.timeout(30)

PREAMBLE = "Let me look up the weather first."
ANSWER = "It is sunny and 21 degrees in Oslo."


class ChattyModel:
    """Streams text in the step that calls a tool (as real models do), then the answer."""

    name = "chatty"

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        tool_step = not any(m.role == "tool" for m in request.messages)
        text = PREAMBLE if tool_step else ANSWER
        for word in text.split(" "):
            yield TextDelta(word + " ")
        message = Message(role="assistant", content=text,
                          tool_calls=[call("get_weather", city="Oslo")] if tool_step else None)
        yield ModelResponse(message=message, usage=Usage(input_tokens=3, output_tokens=7),
                            model=self.name,
                            finish_reason="tool_calls" if tool_step else "stop")


def chatty_agent() -> Agent:
    return Agent(name="chatty", model=ChattyModel(), tools=[get_weather])


def test_chat_stream_carries_only_the_final_answer(tmp_path: Path) -> None:
    with serve(tmp_path, chatty_agent()) as live, openai.OpenAI(
            base_url=f"{live.url}/v1", api_key="unused", max_retries=0) as client:
        stream = client.chat.completions.with_raw_response.create(
            model="chatty", messages=[{"role": "user", "content": "Weather in Oslo?"}],
            stream=True)
        session_id = stream.headers["x-roost-session-id"]
        chunks = list(stream.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.strip() == ANSWER
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        # Not streamed, the same answer.
        completion = client.chat.completions.create(
            model="chatty", messages=[{"role": "user", "content": "Weather in Oslo?"}])
        assert completion.choices[0].message.content == ANSWER
        # The tool step's text is not lost: it is in the session's log.
        events = httpx.get(f"{live.url}/v1/sessions/{session_id}/events").json()
        steps = [e["data"] for e in events["items"] if e["type"] == "message"
                 and e["data"]["role"] == "assistant"]
        assert steps[0]["content"] == PREAMBLE and steps[0]["tool_calls"]
        assert steps[-1]["content"] == ANSWER


def test_responses_stream_carries_only_the_final_answer(tmp_path: Path) -> None:
    with serve(tmp_path, chatty_agent()) as live, openai.OpenAI(
            base_url=f"{live.url}/v1", api_key="unused", max_retries=0) as client:
        events = list(client.responses.create(model="chatty", input="Weather in Oslo?",
                                              stream=True))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas.strip() == ANSWER
        done = [e for e in events if e.type == "response.output_text.done"]
        assert done[0].text.strip() == ANSWER
        assert events[-1].type == "response.completed"
        assert events[-1].response.output_text == ANSWER


async def test_an_agent_without_tools_still_streams_word_by_word(tmp_path: Path) -> None:
    class Plain(ChattyModel):
        async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
            for word in ANSWER.split(" "):
                yield TextDelta(word + " ")
            yield ModelResponse(message=Message(role="assistant", content=ANSWER),
                                usage=Usage(), model="plain", finish_reason="stop")

    with serve(tmp_path, Agent(name="plain", model=Plain())) as live:
        async with openai.AsyncOpenAI(base_url=f"{live.url}/v1", api_key="unused",
                                      max_retries=0) as client:
            stream = await client.chat.completions.create(
                model="plain", messages=[{"role": "user", "content": "hi"}], stream=True)
            deltas = [c.choices[0].delta.content async for c in stream
                      if c.choices and c.choices[0].delta.content]
        assert len(deltas) == len(ANSWER.split(" "))
