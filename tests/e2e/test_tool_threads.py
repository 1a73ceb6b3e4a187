"""A real server: one agent's hung sync tools (more than its pool, more than the loop's default
executor) neither delay another agent's tools nor go unaccounted in /v1/admin/stats and
/metrics."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import HERE, ServerProcess, start_server

pytestmark = pytest.mark.e2e


def turn(url: str, agent: str, text: str) -> tuple[dict, float]:  # type: ignore[type-arg]
    session = httpx.post(f"{url}/v1/agents/{agent}/sessions", json={}, timeout=10).json()["id"]
    started = time.perf_counter()
    body = httpx.post(f"{url}/v1/sessions/{session}/turns", json={"input": text},
                      timeout=30).json()
    return body, time.perf_counter() - started


def test_hung_tools_of_one_agent_do_not_delay_another(tmp_path: Path,
                                                      servers: list[ServerProcess]) -> None:
    release = tmp_path / "release"
    server = start_server(tmp_path, "", env={"HUNG_TOOL_RELEASE": str(release)},
                          agents=str(HERE / "hung_tool_agents.py"))
    servers.append(server)
    try:
        # 12 hung calls: more than hanger's 2 threads and than the default executor's 6.
        with ThreadPoolExecutor(12) as pool:
            hung = list(pool.map(lambda i: turn(server.url, "hanger", f"topic {i}"), range(12)))
        for body, _ in hung:
            assert body["status"] == "completed", body
            assert "timed out" in str(body), body
        stats = httpx.get(f"{server.url}/v1/admin/stats").json()["tool_threads"]["hanger"]
        assert stats["size"] == 2
        assert stats["abandoned"] == 2 and stats["running"] == 2, stats
        assert stats["abandoned_total"] >= 2, stats
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'roost_tool_threads_abandoned{agent="hanger"} 2.0' in metrics, metrics[-3000:]

        # The other agent's sync tools answer at once, many in parallel.
        with ThreadPoolExecutor(8) as pool:
            quick = list(pool.map(lambda i: turn(server.url, "quick", f"topic {i}"), range(16)))
        for body, elapsed in quick:
            assert body["status"] == "completed", body
            assert "quick facts about" in str(body) and "timed out" not in str(body), body
            assert elapsed < 1.5, elapsed
    finally:
        release.touch()
    # Released, the abandoned threads finish and are accounted back.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stats = httpx.get(f"{server.url}/v1/admin/stats").json()["tool_threads"]["hanger"]
        if stats["running"] == 0:
            break
        time.sleep(0.05)
    assert stats["running"] == 0 and stats["abandoned"] == 0, stats
