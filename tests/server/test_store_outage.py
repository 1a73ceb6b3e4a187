"""A store outage over real HTTP: /readyz 503, turns fail fast with a clear 503 problem,
nothing corrupted, and service recovers by itself when the store returns."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from roost import Runtime, Settings
from roost.loader import bundled_examples, load_agents
from roost.testing.live import LiveServer
from tests.conftest import require_service
from tests.sessions.tcp_proxy import TcpProxy


def store_settings(kind: str, port: int) -> dict[str, object]:
    if kind == "postgres":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return {"url": f"postgresql://postgres@127.0.0.1:{port}/test",
                "options": {"schema": f"outage_{uuid.uuid4().hex[:10]}", "drop_schema_on_close": True,
                            "command_timeout_s": 2.0, "connect_timeout_s": 1.0}}
    require_service("Redis", "127.0.0.1", 6379)
    return {"url": f"redis://127.0.0.1:{port}/15",
            "options": {"prefix": f"outage{uuid.uuid4().hex[:10]}:", "clear_prefix_on_close": True,
                        "socket_timeout_s": 1.0}}


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_store_outage_is_503_and_recovers(kind: str) -> None:
    target = 5432 if kind == "postgres" else 6379
    async with TcpProxy("127.0.0.1", target) as proxy:
        settings = Settings(store=store_settings(kind, proxy.port))
        runtime = Runtime(settings, load_agents([str(p) for p in bundled_examples()]))
        async with LiveServer(runtime) as server, \
                httpx.AsyncClient(base_url=server.url, timeout=15) as http:
            session = (await http.post("/v1/agents/weather/sessions", json={})).json()
            turn = f"/v1/sessions/{session['id']}/turns"
            ok = await http.post(turn, json={"input": "weather in Paris"})
            assert ok.json()["status"] == "completed"
            before = (await http.get(f"/v1/sessions/{session['id']}/events")).json()["items"]

            await proxy.cut()
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"] == "application/problem+json"
            for _ in range(3):
                started = time.monotonic()
                failed = await http.post(turn, json={"input": "weather in Rome"})
                assert failed.status_code == 503, failed.text
                assert failed.json()["type"].endswith("store_unavailable")
                assert "Retry-After" in failed.headers
                assert time.monotonic() - started < 5
            new = await http.post("/v1/agents/weather/sessions", json={})
            assert new.status_code == 503

            await proxy.restore()
            deadline = time.monotonic() + 20
            while (await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "the store never came back"
                await asyncio.sleep(0.1)
            await asyncio.sleep(settings.runtime.store_retry_s)  # the fail-fast window passes
            again = await http.post(turn, json={"input": "weather in Oslo"})
            assert again.status_code == 200 and again.json()["status"] == "completed"
            after = (await http.get(f"/v1/sessions/{session['id']}/events",
                                    params={"limit": 1000})).json()["items"]
            # Nothing lost or corrupted: the old log is intact and the seqs contiguous.
            assert after[:len(before)] == before
            assert [e["seq"] for e in after] == list(range(1, len(after) + 1))


@pytest.mark.parametrize("kind", ["postgres", "redis"])
async def test_a_lost_acknowledgement_is_settled_from_the_log(kind: str) -> None:
    """The store commits a run's last step but its reply is lost (a black hole after the
    write): the turn cannot say how it ended (503), and once the store answers again the
    run is recorded completed — as its log says — not failed; nothing stays running."""
    from roost import Agent
    from roost.testing.scripted import ScriptedModel

    target = 5432 if kind == "postgres" else 6379
    async with TcpProxy("127.0.0.1", target) as proxy:
        options = store_settings(kind, proxy.port)
        settings = Settings(store=options, runtime={"store_retry_s": 0.2})
        # The final answer comes a moment after the run started: time to lose the replies.
        model = ScriptedModel(["first answer", "the answer"], delay_s=1.0)
        runtime = Runtime(settings, [Agent(name="slow", model=model)])
        async with LiveServer(runtime) as server, \
                httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            session = (await http.post("/v1/agents/slow/sessions", json={})).json()["id"]
            turn = f"/v1/sessions/{session}/turns"
            assert (await http.post(turn, json={"input": "one"})).json()["status"] == "completed"
            pending = asyncio.ensure_future(http.post(turn, json={"input": "two"}))
            deadline = time.monotonic() + 10
            while len((await http.get(f"/v1/sessions/{session}/events")).json()["items"]) < 6:
                assert time.monotonic() < deadline, "the second run never started"
                await asyncio.sleep(0.02)
            await proxy.lose_replies()
            answered = await pending
            assert answered.status_code == 503, answered.text
            run_id = answered.headers["X-Run-Id"]
            await proxy.cut()
            await proxy.restore()
            deadline = time.monotonic() + 20
            while True:
                response = await http.get(f"/v1/runs/{run_id}")
                if response.status_code == 200 and response.json()["status"] != "running" \
                        and runtime.recovery.unsettled() == 0:
                    break
                assert time.monotonic() < deadline, response.text
                await asyncio.sleep(0.1)
            run = response.json()
            assert run["status"] == "completed" and run["output"] == "the answer"
            events = (await http.get(f"/v1/sessions/{session}/events",
                                     params={"limit": 1000})).json()["items"]
            mine = [e["type"] for e in events if e["run_id"] == run_id]
            assert mine.count("run.completed") == 1 and "run.failed" not in mine
            assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
