"""Roost calling Roost over A2A across two `roost serve` processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import HERE, ServerProcess, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

EXAMPLES = HERE.parents[1] / "examples"


def test_an_agent_calls_a_remote_roost_agent_over_a2a(tmp_path: Path,
                                                      servers: list[ServerProcess]) -> None:

    remote = start_server(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path / "remote.db"}"\n',
                          agents=str(EXAMPLES / "weather.py"), name="remote")
    servers.append(remote)
    caller = start_server(tmp_path, f'[store]\nurl = "sqlite:///{tmp_path / "caller.db"}"\n',
                          env={"REMOTE_A2A_URL": f"{remote.url}/a2a/weather"},
                          agents=str(HERE / "a2a_caller.py"), name="caller")
    servers.append(caller)
    session = httpx.post(f"{caller.url}/v1/agents/caller/sessions", json={}).json()
    turn = httpx.post(f"{caller.url}/v1/sessions/{session['id']}/turns",
                      json={"input": "What is the weather in Paris?"}, timeout=60).json()
    assert turn["status"] == "completed", turn
    results = [e["data"] for e in turn["events"] if e["type"] == "tool.result"]
    assert results and results[0]["name"] == "ask_weather"
    assert not str(results[0]["content"]).startswith("Error"), results[0]
    # The remote side ran it as one of its own turns, in a session of its own.
    remote_sessions = httpx.get(f"{remote.url}/v1/sessions", params={"agent": "weather"}).json()
    assert [s["metadata"] for s in remote_sessions["items"]] == [{"protocol": "a2a"}]
    assert remote.terminate() == 0 and caller.terminate() == 0
