"""`GET /v1/usage` over real HTTP: live runs summed per agent (usage from `ScriptedModel`),
seeded runs at known times grouped by model and day within a window, tenant scoping, and
422 problems naming the bad parameter.

The server runs on a SQLite file seeded beforehand through the store API with runs of known
`created_at`, model and usage, so windows and model grouping are exact whether or not the
engine records `RunRecord.model` yet.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from roost import Agent, Runtime, Settings
from roost.models.base import Message, ModelRequest, ModelResponse
from roost.sessions import RunRecord, Session, Usage
from roost.sessions.sqlite import SQLiteStore
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel
from tests.server.conftest import WAIT_S, assert_problem, new_session

TENANT_HEADER = "X-Tenant"
NOV_14 = 1_699_920_000.0  # 2023-11-14T00:00:00Z
NOV_15 = NOV_14 + 86_400
TOTAL_KEYS = {"runs", "input_tokens", "output_tokens", "total_tokens", "cost"}


def answer(usage: Usage) -> ScriptedModel:
    """A model that answers every request with `usage` (a fresh response each time)."""

    def respond(request: ModelRequest) -> ModelResponse:
        return ModelResponse(message=Message(role="assistant", content="done"),
                             usage=Usage(input_tokens=usage.input_tokens,
                                         output_tokens=usage.output_tokens, cost=usage.cost),
                             finish_reason="stop")

    return ScriptedModel([respond], repeat_last=True, name="scripted")


async def seed(path: Path) -> None:
    """Runs of tenant `acme` (and one of `default`) at known times, models and usage."""
    store = SQLiteStore(str(path))
    await store.open()
    try:
        for tenant in ("acme", "default"):
            await store.create_session(Session(id="s-seed", tenant=tenant, agent="helper"))
        runs = [  # id, tenant, agent, model, created_at, usage
            ("r1", "acme", "helper", "openai:gpt-4o-mini", NOV_14 + 80_000, (100, 20, 0.5)),
            ("r2", "acme", "helper", "demo", NOV_14 + 82_800, (10, 2, 0.25)),
            ("r3", "acme", "writer", "openai:gpt-4o-mini", NOV_15 + 3_600, (1, 1, 0.125)),
            ("r4", "default", "helper", "demo", NOV_14 + 1, (5, 5, 0.0)),
        ]
        for run_id, tenant, agent, model, created_at, (i, o, c) in runs:
            await store.put_run(RunRecord(
                id=run_id, session_id="s-seed", tenant=tenant, agent=agent, model=model,
                status="completed", created_at=created_at, updated_at=created_at,
                usage=Usage(input_tokens=i, output_tokens=o, cost=c)))
    finally:
        await store.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("usage") / "roost.db"
    asyncio.run(seed(path))
    agents = [
        Agent(name="helper", model=answer(Usage(input_tokens=10, output_tokens=5, cost=0.25))),
        Agent(name="writer", model=answer(Usage(input_tokens=3, output_tokens=7, cost=0.5))),
    ]
    settings = Settings(store={"url": f"sqlite:///{path}"},
                        server={"shutdown_grace_s": 0.0, "tenant_header": TENANT_HEADER})
    live = LiveServer(Runtime(settings, agents))
    with live:
        yield live


def client_for(server: LiveServer, tenant: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=WAIT_S, headers={TENANT_HEADER: tenant})


def usage(http: httpx.Client, **params: Any) -> dict[str, Any]:
    response = http.get("/v1/usage", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def turn(http: httpx.Client, session_id: str) -> dict[str, Any]:
    response = http.post(f"/v1/sessions/{session_id}/turns", json={"input": "go"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    assert result["status"] == "completed", result
    return result


def test_live_runs_are_summed_per_agent(server: LiveServer) -> None:
    started = time.time()
    with client_for(server, "t-live") as http:
        helper, writer = new_session(http, "helper"), new_session(http, "writer")
        results = [turn(http, helper["id"]), turn(http, helper["id"]), turn(http, writer["id"])]
        body = usage(http, group_by="agent")
        assert body == {
            "items": [
                {"tenant": "t-live", "agent": "helper", "runs": 2, "input_tokens": 20,
                 "output_tokens": 10, "total_tokens": 30, "cost": 0.5},
                {"tenant": "t-live", "agent": "writer", "runs": 1, "input_tokens": 3,
                 "output_tokens": 7, "total_tokens": 10, "cost": 0.5},
            ],
            "group_by": ["agent"], "since": None, "until": None,
        }
        # The same numbers the turns reported.
        assert sum(r["usage"]["input_tokens"] for r in results) == 23
        assert sum(r["usage"]["cost"] for r in results) == 1.0

        # By the default (agent, model): the model is one value per agent, whether the engine
        # records it ("scripted") or not yet ("").
        items = usage(http)["items"]
        assert [(i["agent"], i["runs"]) for i in items] == [("helper", 2), ("writer", 1)]
        assert {i["model"] for i in items} == {"scripted"}
        assert all(set(i) == {"tenant", "agent", "model"} | TOTAL_KEYS for i in items)

        # A window that starts after the runs holds none of them.
        assert usage(http, since=time.time() + 60)["items"] == []
        [total] = usage(http, group_by="", since=started - 1)["items"]
        assert (total["runs"], total["cost"]) == (3, 1.0)


def test_windows_group_by_model_and_day(server: LiveServer) -> None:
    with client_for(server, "acme") as http:
        body = usage(http, group_by="agent,model", since="2023-11-14", until="2023-11-15")
        assert body["since"] == NOV_14 and body["until"] == NOV_15
        assert body["items"] == [
            {"tenant": "acme", "agent": "helper", "model": "demo", "runs": 1,
             "input_tokens": 10, "output_tokens": 2, "total_tokens": 12, "cost": 0.25},
            {"tenant": "acme", "agent": "helper", "model": "openai:gpt-4o-mini", "runs": 1,
             "input_tokens": 100, "output_tokens": 20, "total_tokens": 120, "cost": 0.5},
        ]
        by_day = usage(http, group_by="day,model", since=str(int(NOV_14)))["items"]
        assert [(i["day"], i["model"], i["runs"]) for i in by_day] == [
            ("2023-11-14", "demo", 1),
            ("2023-11-14", "openai:gpt-4o-mini", 1),
            ("2023-11-15", "openai:gpt-4o-mini", 1),
        ]
        # An offset is honoured: 23:00+01:00 is 22:00Z, so the window [22:00Z, 23:30Z) holds
        # r1 (22:13:20Z) and r2 (23:00Z); read as 23:00Z it would hold r2 alone.
        body = usage(http, group_by="tenant,model", since="2023-11-14T23:00:00+01:00",
                     until="2023-11-14T23:30:00Z")
        assert body["since"] == NOV_14 + 79_200
        assert [(i["tenant"], i["model"]) for i in body["items"]] == [
            ("acme", "demo"), ("acme", "openai:gpt-4o-mini")]
        assert body["group_by"] == ["model"]
        [grand] = usage(http, group_by="")["items"]
        assert grand == {"tenant": "acme", "runs": 3, "input_tokens": 111, "output_tokens": 23,
                         "total_tokens": 134, "cost": 0.875}
    # Tenant-scoped: the default tenant sees only its own run.
    with httpx.Client(base_url=server.url, timeout=WAIT_S) as http:
        [only] = usage(http, group_by="model", until=NOV_15)["items"]
        assert (only["tenant"], only["model"], only["runs"]) == ("default", "demo", 1)


@pytest.mark.parametrize(("params", "field"), [
    ({"since": "yesterday"}, "since"),
    ({"until": "2023-13-01"}, "until"),
    ({"since": "nan"}, "since"),
    ({"since": "1" * 400}, "since"),  # a number past float range
    ({"until": "-5"}, "until"),
    ({"since": "2023-11-15", "until": "2023-11-14"}, "until"),
    ({"since": "100", "until": "100"}, "until"),
    ({"group_by": "agent,prompt"}, "group_by"),
    ({"group_by": "model,model"}, "group_by"),
    ({"group_by": "tenant,tenant"}, "group_by"),
])
def test_bad_parameters_are_422_naming_the_field(server: LiveServer, params: dict[str, str],
                                                 field: str) -> None:
    with client_for(server, "acme") as http:
        assert_problem(http.get("/v1/usage", params=params), 422, "invalid_input", field=field)
