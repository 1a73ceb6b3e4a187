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
