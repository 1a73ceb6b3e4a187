"""A fleet: several `roost serve` processes on one PostgreSQL or Redis, requests for one
session arriving at any of them."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.test_shared_store import store_config

pytestmark = pytest.mark.e2e

KINDS = ["postgres", "redis"]


def wait_for(condition: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def fleet(tmp_path: Path, servers: list[ServerProcess], kind: str, extra: str = "",
          n: int = 2, env: dict[str, str] | None = None) -> list[ServerProcess]:
    config = store_config(kind) + extra
    for i in range(n):
        servers.append(start_server(tmp_path, config, env=env, name=f"i{i}"))
    return servers[-n:]


@pytest.mark.parametrize("kind", KINDS)
def test_reject_across_instances_is_409_and_stores_nothing(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "calls.txt"
    a, b = fleet(tmp_path, servers, kind,
                 '[agents.researcher]\npolicies = { double_texting = "reject" }\n',
                 env={"SLOW_TOOL_S": "3", "SLOW_TOOL_MARKER": str(marker)})
    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{a.url}/v1/sessions/{session}/turns",
                            json={"input": "research Penguins"}, timeout=30)
        wait_for(marker.exists, what="the first run's tool")
        refused = httpx.post(f"{b.url}/v1/sessions/{session}/turns",
                             json={"input": "research Puffins"}, timeout=30)
        assert refused.status_code == 409, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert refused.json()["type"].endswith("session_busy")
        response = first.result()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "completed"
    # The run id is in the headers of every turn response.
    assert response.headers["X-Run-Id"] == body["run_id"]
    assert response.headers["Location"] == f"/v1/runs/{body['run_id']}"
    events = httpx.get(f"{b.url}/v1/sessions/{session}/events",
                       params={"limit": 1000}).json()["items"]
    assert {e["run_id"] for e in events} == {body["run_id"]}, "the refused turn left a trace"


def kill9(server: ServerProcess) -> None:
    server.process.kill()  # SIGKILL: no drain, no goodbye
    server.process.wait(timeout=10)


@pytest.mark.parametrize("kind", KINDS)
def test_runs_of_a_killed_instance_are_taken_over_and_tools_run_once_per_key(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    """SIGKILL an instance mid-tool: another instance claims its runs when their lease
    expires and resumes them from the log; every run ends, none stays running, and each
    tool call is recorded exactly once."""
    marker = tmp_path / "calls.txt"
    config = "[runtime]\nlease_ttl_s = 2\ntakeover_interval_s = 0.2\n"
    a, b = fleet(tmp_path, servers, kind, config,
                 env={"SLOW_TOOL_S": "1.5", "SLOW_TOOL_MARKER": str(marker)})
    sessions = [httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
                for _ in range(4)]
    run_ids: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(len(sessions)) as pool:
        for i, session in enumerate(sessions):
            pool.submit(_post_quietly, f"{a.url}/v1/sessions/{session}/turns",
                        {"input": f"research Topic{i}"})
        wait_for(lambda: marker.exists() and len(marker.read_text().splitlines()) >= 4,
                 what="every run inside its tool")
        for session in sessions:
            events = httpx.get(f"{b.url}/v1/sessions/{session}/events").json()["items"]
            run_ids.append(events[0]["run_id"])
        kill9(a)

    def all_ended() -> bool:
        return all(httpx.get(f"{b.url}/v1/runs/{r}").json()["status"] == "completed"
                   for r in run_ids)

    wait_for(all_ended, timeout=30, what="the runs taken over to complete")
    for session, run_id in zip(sessions, run_ids, strict=True):
        events = httpx.get(f"{b.url}/v1/sessions/{session}/events",
                           params={"limit": 1000}).json()["items"]
        assert {e["run_id"] for e in events} == {run_id}
        results = [e for e in events if e["type"] == "tool.result"]
        calls = [e for e in events if e["type"] == "tool.call"]
        assert len(results) == len(calls) == len({c["data"]["id"] for c in calls})
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert events[-1]["type"] == "run.completed"
        run = httpx.get(f"{b.url}/v1/runs/{run_id}").json()
        assert run["attempt"] == 2


def _post_quietly(url: str, body: dict[str, str]) -> None:
    # The instance is killed under this request: its connection breaks, as a client's would.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=30)


@pytest.mark.parametrize("kind", KINDS)
def test_two_racing_resumes_run_once(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "calls.txt"
    config = "[runtime]\nlease_ttl_s = 1\ntakeover = false\n"
    env = {"SLOW_TOOL_S": "1", "SLOW_TOOL_MARKER": str(marker)}
    a, b, c = fleet(tmp_path, servers, kind, config, n=3, env=env)
    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        pool.submit(_post_quietly, f"{a.url}/v1/sessions/{session}/turns",
                    {"input": "research Gannets"})
        wait_for(marker.exists, what="the run inside its tool")
        run_id = httpx.get(f"{b.url}/v1/sessions/{session}/events").json()["items"][0]["run_id"]
        kill9(a)
        # Until the dead owner's lease lapses both resumes get 409; then two race through
        # two instances, and exactly one wins.
        responses: list[httpx.Response] = []
        deadline = time.monotonic() + 15
        while not any(r.status_code == 202 for r in responses):
            assert time.monotonic() < deadline, [r.text for r in responses]
            futures = [pool.submit(httpx.post, f"{s.url}/v1/runs/{run_id}/resume")
                       for s in (b, c)]
            responses = [f.result() for f in futures]
        assert sorted(r.status_code for r in responses) == [202, 409]

    def ended() -> bool:
        return httpx.get(f"{b.url}/v1/runs/{run_id}").json()["status"] == "completed"

    wait_for(ended, timeout=20, what="the resumed run")
    events = httpx.get(f"{b.url}/v1/sessions/{session}/events",
                       params={"limit": 1000}).json()["items"]
    results = [e for e in events if e["type"] == "tool.result"]
    assert len(results) == len({e["data"]["call_id"] for e in results})
    assert [e["type"] for e in events].count("run.started") == 1


def sse_events(response: httpx.Response) -> list[dict]:  # type: ignore[type-arg]
    import json

    events = []
    for block in response.iter_text():
        for frame in block.split("\n\n"):
            data = [line[6:] for line in frame.splitlines() if line.startswith("data: ")]
            if data:
                events.append(json.loads("".join(data)))
    return events


@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_followed_through_another_instance_is_exact_and_live(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "calls.txt"
    a, b = fleet(tmp_path, servers, kind,
                 env={"SLOW_TOOL_S": "1.5", "SLOW_TOOL_MARKER": str(marker)})
    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        turn = pool.submit(httpx.post, f"{a.url}/v1/sessions/{session}/turns",
                           json={"input": "research Terns"}, timeout=30)
        wait_for(marker.exists, what="the run inside its tool")
        log = httpx.get(f"{b.url}/v1/sessions/{session}/events").json()["items"]
        run_id = log[0]["run_id"]
        # Reconnect through the other instance after the first two events.
        with httpx.stream("GET", f"{b.url}/v1/runs/{run_id}/events",
                          headers={"Last-Event-ID": str(log[1]["seq"])}, timeout=30) as stream:
            assert stream.status_code == 200
            followed = sse_events(stream)
        done = turn.result().json()
    assert done["status"] == "completed"
    persisted = [e for e in done["events"] if e["seq"] > log[1]["seq"]]
    # Exactly the run's persisted events after Last-Event-ID, live, ending with its end.
    assert [(e["seq"], e["type"]) for e in followed] == [(e["seq"], e["type"]) for e in persisted]
    assert followed[-1]["type"] == "run.completed"


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_and_pause_reach_every_instance(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "calls.txt"
    a, b = fleet(tmp_path, servers, kind,
                 env={"SLOW_TOOL_S": "30", "SLOW_TOOL_MARKER": str(marker)})
    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        turn = pool.submit(httpx.post, f"{a.url}/v1/sessions/{session}/turns",
                           json={"input": "research Auks"}, timeout=30)
        wait_for(marker.exists, what="the run inside its tool")
        run_id = httpx.get(f"{b.url}/v1/sessions/{session}/events").json()["items"][0]["run_id"]
        cancelled = httpx.post(f"{b.url}/v1/runs/{run_id}/cancel", timeout=15)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert turn.result().json()["status"] == "cancelled"
    # Pause through one instance: the other refuses new turns within a second.
    assert httpx.post(f"{b.url}/v1/agents/researcher/pause").status_code == 200

    def refused_on_a() -> bool:
        return httpx.get(f"{a.url}/v1/agents/researcher").json()["state"] == "paused"

    wait_for(refused_on_a, timeout=1.0, what="the pause to reach the other instance")
    assert httpx.post(f"{b.url}/v1/agents/researcher/resume").status_code == 200
    wait_for(lambda: httpx.get(f"{a.url}/v1/agents/researcher").json()["state"] == "running",
             timeout=1.0, what="the resume to reach the other instance")


@pytest.mark.parametrize("kind", KINDS)
def test_pause_survives_a_restart_and_refuses_turns_everywhere(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    config = store_config(kind) + '[agents.researcher]\npolicies = { when_paused = "reject" }\n'
    a = start_server(tmp_path, config, name="a")
    b = start_server(tmp_path, config, name="b")
    servers.extend([a, b])
    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    assert httpx.post(f"{a.url}/v1/agents/researcher/pause").status_code == 200
    wait_for(lambda: httpx.post(f"{b.url}/v1/sessions/{session}/turns",
                                json={"input": "research Shags"}).status_code == 503,
             timeout=1.0, what="the other instance to refuse turns")
    assert b.terminate() == 0
    b = start_server(tmp_path, config, name="b2")
    servers.append(b)
    assert httpx.get(f"{b.url}/v1/agents/researcher").json()["state"] == "paused"
    refused = httpx.post(f"{b.url}/v1/sessions/{session}/turns", json={"input": "research Shags"})
    assert refused.status_code == 503 and refused.json()["type"].endswith("agent_unavailable")


@pytest.mark.parametrize("kind", KINDS)
def test_interrupt_across_instances_stops_the_active_run(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "calls.txt"
    config = store_config(kind) + \
        '[agents.researcher]\npolicies = { double_texting = "interrupt" }\n'
    # The run to interrupt takes 30 s on A; the turn that interrupts it is quick on B.
    a = start_server(tmp_path, config, env={"SLOW_TOOL_S": "30", "SLOW_TOOL_MARKER": str(marker)},
                     name="a")
    b = start_server(tmp_path, config, env={"SLOW_TOOL_S": "0"}, name="b")
    servers.extend([a, b])
    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{a.url}/v1/sessions/{session}/turns",
                            json={"input": "research Skuas"}, timeout=30)
        wait_for(marker.exists, what="the first run inside its tool")
        started = time.monotonic()
        second = httpx.post(f"{b.url}/v1/sessions/{session}/turns",
                            json={"input": "weather instead"}, timeout=30)
        assert second.status_code == 200
        assert time.monotonic() - started < 10  # not the 30 s the first run would take
        assert first.result().json()["status"] == "cancelled"
    events = httpx.get(f"{a.url}/v1/sessions/{session}/events",
                       params={"limit": 1000}).json()["items"]
    runs = list(dict.fromkeys(e["run_id"] for e in events))
    assert len(runs) == 2 and events[-1]["type"] == "run.completed"
