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


async def test_a2a_resubscribe_follows_a_task_driven_by_another_instance(
        tmp_path: Path, servers: list[ServerProcess]) -> None:
    """`SubscribeToTask` at instance B for a task instance A is running: B follows it from
    the shared log and the fleet bus to its end (it used to answer the record as it was)."""
    import asyncio

    from a2a.client import ClientConfig, create_client
    from a2a.types import a2a_pb2 as pb

    from tests.e2e.test_fleet import wait_for
    from tests.e2e.test_shared_store import store_config

    marker = tmp_path / "calls.txt"
    env = {"SLOW_TOOL_S": "1.5", "SLOW_TOOL_MARKER": str(marker)}
    config = store_config("postgres")
    a = start_server(tmp_path, config, env=env, name="a")
    servers.append(a)
    b = start_server(tmp_path, config, env=env, name="b")
    servers.append(b)
    async with httpx.AsyncClient(timeout=30) as http:
        session = (await http.post(f"{a.url}/v1/agents/researcher/sessions", json={})).json()
        turn = asyncio.ensure_future(http.post(f"{a.url}/v1/sessions/{session['id']}/turns",
                                               json={"input": "research Terns"}))
        # The run is inside its slow tool, on A.
        await asyncio.to_thread(wait_for, marker.exists, what="the run inside its tool")
        log = (await http.get(f"{b.url}/v1/sessions/{session['id']}/events")).json()["items"]
        task_id = log[0]["run_id"]
        client = await create_client(f"{b.url}/a2a/researcher", ClientConfig(streaming=True))
        try:
            events = [e async for e in client.subscribe(pb.SubscribeToTaskRequest(id=task_id))]
        finally:
            await client.close()
        done = (await turn).json()
    assert done["status"] == "completed"
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states[0] == pb.TASK_STATE_WORKING and states[-1] == pb.TASK_STATE_COMPLETED
    answer = "".join(p.text for e in events if e.HasField("artifact_update")
                     for p in e.artifact_update.artifact.parts)
    assert answer == done["output"] and "Terns" in answer
