"""Idempotency-Key on turns and session creation: the same key and body return the same
run or session; the same key with another body is a 422; a race has one winner."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from roost import Runtime, Settings
from roost.testing.live import LiveServer
from tests.server.conftest import assert_problem, example_agents


@pytest.fixture
def http(demo: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo.url, timeout=30) as client:
        yield client


def new_session(http: httpx.Client) -> str:
    return str(http.post("/v1/agents/weather/sessions", json={}).json()["id"])


def test_a_repeated_turn_returns_the_same_run_and_runs_once(http: httpx.Client) -> None:
    session = new_session(http)
    body = {"input": "weather in Oslo?"}
    first = http.post(f"/v1/sessions/{session}/turns", json=body,
                      headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 200
    again = http.post(f"/v1/sessions/{session}/turns", json=body,
                      headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 200
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.json()["output"] == first.json()["output"]
    assert again.headers["X-Run-Id"] == first.json()["run_id"]
    events = http.get(f"/v1/sessions/{session}/events", params={"limit": 1000}).json()["items"]
    assert {e["run_id"] for e in events} == {first.json()["run_id"]}
    # A streamed retry replays the run's events.
    with http.stream("POST", f"/v1/sessions/{session}/turns", json={**body, "stream": True},
                     headers={"Idempotency-Key": "k-1"}) as stream:
        text = stream.read().decode()
    assert "event: run.completed" in text and first.json()["run_id"] in text


def test_the_same_key_with_another_body_is_422(http: httpx.Client) -> None:
    session = new_session(http)
    http.post(f"/v1/sessions/{session}/turns", json={"input": "weather in Rome?"},
              headers={"Idempotency-Key": "k-2"})
    other = http.post(f"/v1/sessions/{session}/turns", json={"input": "weather in Lima?"},
                      headers={"Idempotency-Key": "k-2"})
    assert_problem(other, 422, field="Idempotency-Key")
    events = http.get(f"/v1/sessions/{session}/events", params={"limit": 1000}).json()["items"]
    assert len({e["run_id"] for e in events}) == 1


def test_concurrent_submissions_with_one_key_start_one_run(http: httpx.Client) -> None:
    session = new_session(http)

    def submit(_: int) -> httpx.Response:
        return http.post(f"/v1/sessions/{session}/turns", json={"input": "weather in Nice?"},
                         headers={"Idempotency-Key": "k-3"})

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(submit, range(5)))
    ok = [a for a in answers if a.status_code == 200]
    assert ok and {a.json()["run_id"] for a in ok} == {ok[0].json()["run_id"]}
    assert all(a.status_code in (200, 409) for a in answers)
    events = http.get(f"/v1/sessions/{session}/events", params={"limit": 1000}).json()["items"]
    assert len({e["run_id"] for e in events}) == 1


def test_a_repeated_session_creation_returns_the_same_session(http: httpx.Client) -> None:
    body = {"user_id": "ada", "state": {"plan": "free"}}
    first = http.post("/v1/agents/weather/sessions", json=body, headers={"Idempotency-Key": "s-1"})
    again = http.post("/v1/agents/weather/sessions", json=body, headers={"Idempotency-Key": "s-1"})
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    other = http.post("/v1/agents/weather/sessions", json={"user_id": "bob"},
                      headers={"Idempotency-Key": "s-1"})
    assert_problem(other, 422, field="Idempotency-Key")
    assert http.post("/v1/agents/weather/sessions", json=body).json()["id"] != first.json()["id"]


def test_a_turn_on_a_session_deleted_by_another_process_is_404(tmp_path: Path) -> None:
    """Two processes share one SQLite file; the session is cached by one and deleted
    through the other: the next turn on the first is a 404, as for any unknown session."""
    url = f"sqlite:///{tmp_path}/shared.db"
    with LiveServer(Runtime(Settings(store={"url": url}), example_agents())) as one, \
            LiveServer(Runtime(Settings(store={"url": url}), example_agents())) as other, \
            httpx.Client(timeout=30) as http:
        session = http.post(f"{one.url}/v1/agents/weather/sessions", json={}).json()["id"]
        turns = f"{one.url}/v1/sessions/{session}/turns"
        assert http.post(turns, json={"input": "hi"}).status_code == 200
        assert http.delete(f"{other.url}/v1/sessions/{session}").status_code == 204
        assert_problem(http.post(turns, json={"input": "hi again"}), 404, "session_not_found")
        assert_problem(http.post(turns, json={"input": "and again"}), 404, "session_not_found")
