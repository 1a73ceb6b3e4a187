"""Background runs and schedules across a fleet of `roost serve` processes on PostgreSQL and
Redis: a background run survives SIGKILL of its instance; a schedule ticking every second on
three instances fires each tick exactly once."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.test_fleet import KINDS, fleet, kill9, wait_for
from tests.e2e.test_shared_store import store_config

pytestmark = pytest.mark.e2e

FAST = "[runtime]\nlease_ttl_s = 2\ntakeover_interval_s = 0.2\n"


@pytest.mark.parametrize("kind", KINDS)
def test_background_runs_survive_sigkill_of_their_instance(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    """Runs claimed from the queue by `a`, inside their tool when `a` is killed, complete
    on `b`; a delayed run queued through `a` runs on `b` when due."""
    marker = tmp_path / "calls.txt"
    # On `a` the tool outlasts the test, so the runs are surely mid-tool when `a` dies
    # (a short tool raced `b`'s start-up and sometimes finished on `a`); on `b` it is quick.
    config = store_config(kind) + FAST
    a = start_server(tmp_path, config, env={"SLOW_TOOL_S": "60", "SLOW_TOOL_MARKER": str(marker)},
                     name="a")
    servers.append(a)
    sessions = [httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
                for _ in range(3)]
    runs = []
    for i, session in enumerate(sessions):
        response = httpx.post(f"{a.url}/v1/sessions/{session}/turns",
                              json={"input": f"research Topic{i}", "background": True})
        assert response.status_code == 202, response.text
        runs.append(response.json()["id"])
    wait_for(lambda: marker.exists() and len(marker.read_text().splitlines()) >= 3,
             what="every background run inside its tool on a")
    at = (datetime.now(UTC) + timedelta(seconds=8)).isoformat()  # due after `a` is gone
    delayed = httpx.post(f"{a.url}/v1/sessions/{sessions[0]}/turns",
                         json={"input": "research Later", "run_at": at}).json()["id"]
    b = start_server(tmp_path, config, env={"SLOW_TOOL_S": "0.2"}, name="b")
    servers.append(b)
    kill9(a)

    def status(run_id: str) -> str:
        return str(httpx.get(f"{b.url}/v1/runs/{run_id}").json()["status"])

    wait_for(lambda: all(status(r) == "completed" for r in [*runs, delayed]), timeout=40,
             what="the background runs to complete on b")
    for run_id in runs:
        assert httpx.get(f"{b.url}/v1/runs/{run_id}").json()["attempt"] == 2
    listed = httpx.get(f"{b.url}/v1/runs", params={"agent": "researcher", "limit": 2}).json()
    assert len(listed["items"]) == 2 and listed["next_cursor"]
    # b claimed the delayed run from the queue; a's runs it took over, not from the queue.
    metrics = httpx.get(f"{b.url}/metrics").text
    assert "roost_background_claimed_total 1.0" in metrics, metrics[-2000:]


def _sessions_of(url: str, agent: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"agent": agent, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        page = httpx.get(f"{url}/v1/sessions", params=params).json()
        found += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


@pytest.mark.parametrize("kind", KINDS)
def test_a_schedule_fires_each_tick_once_across_three_instances(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    duration = float(os.environ.get("ROOST_TEST_SCHEDULE_S", "30"))
    a, b, c = fleet(tmp_path, servers, kind, FAST, n=3, env={"SLOW_TOOL_S": "0"})
    created = httpx.post(f"{b.url}/v1/agents/researcher/schedules",
                         json={"cron": "* * * * * *", "input": "research Ticks"})
    assert created.status_code == 201, created.text
    schedule = created.json()["id"]
    time.sleep(duration)  # the test's subject is time itself: ticks over `duration` s
    paused = httpx.patch(f"{c.url}/v1/agents/researcher/schedules/{schedule}",
                         json={"enabled": False})
    assert paused.status_code == 200
    ticks = sorted(s["metadata"]["tick"] for s in _sessions_of(a.url, "researcher")
                   if s["metadata"].get("schedule_id") == schedule)
    assert len(ticks) == len(set(ticks)), "a tick fired twice"
    assert len(ticks) >= duration - 3, f"only {len(ticks)} ticks in {duration} s"
    # Every second between the first and the last tick fired: none lost either.
    assert ticks == [ticks[0] + i for i in range(len(ticks))]
    wait_for(lambda: all(r["status"] == "completed" for r in httpx.get(
        f"{a.url}/v1/runs", params={"agent": "researcher", "limit": 200}).json()["items"]),
        timeout=30, what="the scheduled runs to complete")
