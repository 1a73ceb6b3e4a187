"""Background and delayed turns, `GET /v1/runs`, and schedules over HTTP, on the memory and
SQLite stores (the fleet on PostgreSQL and Redis: tests/e2e/test_background.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.server.conftest import assert_problem, new_session, wait_until


def run_of(http: httpx.Client, run_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/runs/{run_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def completed(http: httpx.Client, run_id: str) -> bool:
    return run_of(http, run_id)["status"] == "completed"


def test_a_background_turn_answers_202_and_runs(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    response = http.post(f"/v1/sessions/{session}/turns",
                         json={"input": "Weather in Paris?", "background": True})
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["status"] in ("queued", "running", "completed")
    assert response.headers["Location"] == f"/v1/runs/{run['id']}"
    wait_until(lambda: completed(http, run["id"]), what="the background run to complete")
    assert "Paris" in run_of(http, run["id"])["output"]


def test_prefer_respond_async_and_idempotency_key(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    headers = {"Prefer": "respond-async, wait=10", "Idempotency-Key": f"k-{time.time()}"}
    first = http.post(f"/v1/sessions/{session}/turns", json={"input": "Weather in Oslo?"},
                      headers=headers)
    again = http.post(f"/v1/sessions/{session}/turns", json={"input": "Weather in Oslo?"},
                      headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    wait_until(lambda: completed(http, first.json()["id"]))
    runs = http.get("/v1/runs", params={"session_id": session}).json()["items"]
    assert [r["id"] for r in runs] == [first.json()["id"]]


def test_run_at_delays_the_run_and_a_queued_run_cancels(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    at = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    run = http.post(f"/v1/sessions/{session}/turns",
                    json={"input": "Weather in Rome?", "run_at": at}).json()
    assert run_of(http, run["id"])["status"] == "queued"
    wait_until(lambda: completed(http, run["id"]), what="the delayed run")
    assert run_of(http, run["id"])["updated_at"] >= datetime.fromisoformat(at).timestamp()
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    queued = http.post(f"/v1/sessions/{session}/turns",
                       json={"input": "Weather in Lima?", "run_at": later}).json()
    cancelled = http.post(f"/v1/runs/{queued['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"


def test_run_at_in_the_past_runs_now(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    run = http.post(f"/v1/sessions/{session}/turns",
                    json={"input": "Weather in Bern?", "run_at": "2001-01-01T00:00:00Z"}).json()
    wait_until(lambda: completed(http, run["id"]))


def test_bad_background_input_names_the_field(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    url = f"/v1/sessions/{session}/turns"
    far = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    assert_problem(http.post(url, json={"input": "x", "run_at": far}), 422, field="run_at")
    naive = http.post(url, json={"input": "x", "run_at": "2030-01-01T00:00:00"})
    assert naive.status_code == 422 and "run_at" in naive.text
    assert http.post(url, json={"input": "x", "run_at": "tomorrow"}).status_code == 422
    assert http.post("/v1/sessions/ses_nope/turns",
                     json={"input": "x", "background": True}).status_code == 404


def test_runs_list_pages_filters_and_refuses_bad_queries(http: httpx.Client) -> None:
    session = new_session(http, "calculator")["id"]
    ids = []
    for i in range(5):
        response = http.post(f"/v1/sessions/{session}/turns", json={"input": f"{i} + 1"})
        assert response.status_code == 200, response.text
        ids.append(response.json()["run_id"])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"session_id": session, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = http.get("/v1/runs", params=params).json()
        assert len(page["items"]) <= 2
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]  # newest first, each once
    done = http.get("/v1/runs", params={"session_id": session, "status": "completed",
                                        "agent": "calculator"}).json()["items"]
    assert len(done) == 5
    assert http.get("/v1/runs", params={"agent": "weather", "session_id": session}
                    ).json()["items"] == []
    assert_problem(http.get("/v1/runs", params={"cursor": "%%%"}), 422, field="cursor")
    assert http.get("/v1/runs", params={"limit": 0}).status_code == 422
    assert http.get("/v1/runs", params={"limit": 10_000}).status_code == 422
    assert http.get("/v1/runs", params={"status": "nope"}).status_code == 422


def test_schedule_create_fire_pause_delete(http: httpx.Client) -> None:
    url = "/v1/agents/weather/schedules"
    assert_problem(http.post(url, json={"cron": "not cron", "input": "x"}), 422, field="cron")
    assert_problem(http.post(url, json={"cron": "* * * * *", "input": "x",
                                        "timezone": "Mars/Olympus"}), 422, field="timezone")
    assert_problem(http.post(url, json={"cron": "* * * * *", "input": "x",
                                        "session_policy": "fixed"}), 422, field="session_id")
    assert http.post("/v1/agents/nope/schedules",
                     json={"cron": "* * * * *", "input": "x"}).status_code == 404
    session = new_session(http, "weather")["id"]
    created = http.post(url, json={"cron": "* * * * * *", "input": "Weather in Kyiv?",
                                   "session_policy": "fixed", "session_id": session,
                                   "timezone": "Europe/Kyiv"})
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert schedule["next_fire_at"] is not None and schedule["enabled"]

    def fired_twice() -> bool:
        runs = http.get("/v1/runs", params={"session_id": session, "status": "completed"})
        return len(runs.json()["items"]) >= 2

    wait_until(fired_twice, what="two ticks of the schedule")
    item = f"{url}/{schedule['id']}"
    paused = http.patch(item, json={"enabled": False})
    assert paused.status_code == 200 and paused.json()["next_fire_at"] is None
    assert http.get(item).json()["last_run_id"] is not None
    assert [s["id"] for s in http.get(url).json()["items"]] == [schedule["id"]]
    assert http.get(f"/v1/agents/calculator/schedules/{schedule['id']}").status_code == 404
    assert http.delete(item).status_code == 204
    assert http.get(item).status_code == 404


def test_a_cron_that_never_fires_is_refused(http: httpx.Client) -> None:
    assert_problem(http.post("/v1/agents/weather/schedules",
                             json={"cron": "0 0 31 2 *", "input": "x"}), 422, field="cron")
