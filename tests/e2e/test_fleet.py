"""A fleet: several `roost serve` processes on one PostgreSQL or Redis, requests for one
session arriving at any of them."""

from __future__ import annotations

import concurrent.futures
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
