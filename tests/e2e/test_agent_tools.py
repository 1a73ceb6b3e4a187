"""Agents as tools over real processes: a child run admitted under its parent's slot at
max_running = 1, recorded with its parent, and cancelled with it."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import HERE, ServerProcess, start_server
from tests.e2e.test_fleet import _post_quietly, wait_for

pytestmark = pytest.mark.e2e

CONFIG = ('[admission]\nmax_running = 1\n'
          '[agents.boss]\nagent_tools = ["digger"]\nlimits = { tool_timeout_s = 60 }\n')


def serve(tmp_path: Path, servers: list[ServerProcess], env: dict[str, str]) -> ServerProcess:
    server = start_server(tmp_path, CONFIG, env=env, agents=str(HERE / "team_agents.py"))
    servers.append(server)
    return server


def child_of(url: str, parent_session: str) -> tuple[str, str]:
    """The child session and run of the parent's first tool call."""
    sessions = httpx.get(f"{url}/v1/sessions", params={"agent": "digger"}).json()["items"]
    [child] = [s for s in sessions if s["metadata"]["parent_session_id"] == parent_session]
    events = httpx.get(f"{url}/v1/sessions/{child['id']}/events").json()["items"]
    return child["id"], events[0]["run_id"]


def test_a_child_run_does_not_wait_for_its_parents_slot(
        tmp_path: Path, servers: list[ServerProcess]) -> None:
    server = serve(tmp_path, servers, {})
    session = httpx.post(f"{server.url}/v1/agents/boss/sessions", json={}).json()["id"]
    answer = httpx.post(f"{server.url}/v1/sessions/{session}/turns",
                        json={"input": "ask the digger about owls"}, timeout=20)
    assert answer.status_code == 200, answer.text
    parent = answer.json()
    assert parent["status"] == "completed" and "notes on" in parent["output"]
    _, child_run = child_of(server.url, session)
    child = httpx.get(f"{server.url}/v1/runs/{child_run}").json()
    assert child["status"] == "completed"
    assert child["parent_run_id"] == parent["run_id"]


def test_cancelling_a_parent_cancels_its_child(
        tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "digging.txt"
    server = serve(tmp_path, servers, {"SLOW_TOOL_S": "30", "SLOW_TOOL_MARKER": str(marker)})
    session = httpx.post(f"{server.url}/v1/agents/boss/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_post_quietly, f"{server.url}/v1/sessions/{session}/turns",
                    {"input": "ask the digger about owls"})
        wait_for(marker.exists, what="the child run inside its tool")
        events = httpx.get(f"{server.url}/v1/sessions/{session}/events").json()["items"]
        parent_run = events[0]["run_id"]
        _, child_run = child_of(server.url, session)
        cancelled = httpx.post(f"{server.url}/v1/runs/{parent_run}/cancel", timeout=20)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    wait_for(lambda: httpx.get(f"{server.url}/v1/runs/{child_run}").json()["status"]
             == "cancelled", what="the child cancelled")
