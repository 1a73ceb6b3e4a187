"""The Responses API with the official `openai` client over real HTTP."""

from __future__ import annotations

import openai
import pytest

from roost.testing.live import LiveServer

pytestmark = pytest.mark.timeout(30)


def client_for(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_create_continue_and_retrieve(server: LiveServer) -> None:
    client = client_for(server)
    first = client.responses.create(model="echo", input="hello")
    assert first.status == "completed"
    assert first.output_text == "you said: hello (1 messages)"
    assert first.usage is not None and first.usage.total_tokens > 0
    # previous_response_id continues the Roost session: its log is the history.
    second = client.responses.create(model="echo", input="again",
                                     previous_response_id=first.id)
    assert second.output_text == "you said: again (3 messages)"
    assert second.previous_response_id == first.id
    assert second.metadata == first.metadata  # the same roost_session_id
    fetched = client.responses.retrieve(second.id)
    assert fetched.id == second.id and fetched.output_text == second.output_text


def test_input_list_seeds_a_fresh_session(server: LiveServer) -> None:
    client = client_for(server)
    response = client.responses.create(model="echo", input=[
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "two"},
        {"role": "user", "content": [{"type": "input_text", "text": "three"}]}])
    assert response.output_text == "you said: three (3 messages)"


def test_stream_events_as_the_sdk_parses_them(server: LiveServer) -> None:
    client = client_for(server)
    events = list(client.responses.create(model="weather", input="Weather in Lima?",
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert "Lima" in text
    completed = events[-1].response  # type: ignore[union-attr]
    assert completed.output_text == text and completed.status == "completed"
    with client.responses.stream(model="echo", input="helper") as stream:
        final = stream.get_final_response()
    assert final.output_text.strip() == "you said: helper (1 messages)"


def test_errors(server: LiveServer) -> None:
    client = client_for(server)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("run_missing")
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="echo", input="x", previous_response_id="run_missing")
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="echo", input="x", instructions="be nice")
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="failing", input="x")
    events = list(client.responses.create(model="failing", input="x", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"  # type: ignore[union-attr]
