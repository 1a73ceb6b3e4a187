"""Two Roost processes sharing one PostgreSQL (or Redis) store: a session continues across
instances, and concurrent turns to one session on both never interleave (store lease)."""

from __future__ import annotations

import concurrent.futures
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import POSTGRES_URL, REDIS_URL, require_service
from tests.e2e.conftest import ServerProcess, start_server

pytestmark = pytest.mark.e2e


def store_config(kind: str) -> str:
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return (f'[store]\nurl = "{POSTGRES_URL}"\n'
                f'options = {{ schema = "e2e_{uuid.uuid4().hex[:10]}" }}\n')
    require_service("Redis", "127.0.0.1", 6379)
    return f'[store]\nurl = "{REDIS_URL}"\noptions = {{ prefix = "e2e{uuid.uuid4().hex[:10]}:" }}\n'


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_two_instances_share_sessions_without_interleaving(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    config = store_config(kind) + "[agents.researcher]\npolicies = { double_texting = \"enqueue\" }\n"
    env = {"SLOW_TOOL_S": "0.2"}
    a = start_server(tmp_path, config, env=env, name="a")
    servers.append(a)
    b = start_server(tmp_path, config, env=env, name="b")
    servers.append(b)

    session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={"user_id": "u"}).json()
    first = httpx.post(f"{a.url}/v1/sessions/{session['id']}/turns",
                       json={"input": "research Penguins"}, timeout=30).json()
    assert first["status"] == "completed"
    # Continue on the other instance: it sees the session and its history.
    assert httpx.get(f"{b.url}/v1/sessions/{session['id']}").json()["last_seq"] == \
        first["events"][-1]["seq"]
    second = httpx.post(f"{b.url}/v1/sessions/{session['id']}/turns",
                        json={"input": "research Puffins"}, timeout=30).json()
    assert second["status"] == "completed"
    assert second["events"][0]["seq"] == first["events"][-1]["seq"] + 1

    # Concurrent turns to the one session through both instances.
    def turn(i: int) -> dict:  # type: ignore[type-arg]
        base = (a, b)[i % 2].url
        return httpx.post(f"{base}/v1/sessions/{session['id']}/turns",
                          json={"input": f"research Topic{i}"}, timeout=60).json()

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(turn, range(6)))
    assert [r["status"] for r in results] == ["completed"] * 6, results
    events = httpx.get(f"{a.url}/v1/sessions/{session['id']}/events",
                       params={"limit": 1000}).json()["items"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    blocks: list[str] = []
    for event in events:
        if not blocks or blocks[-1] != event["run_id"]:
            blocks.append(event["run_id"])
    assert len(blocks) == len(set(blocks)) == 8, "two runs interleaved in one session"
    assert a.terminate() == 0 and b.terminate() == 0
