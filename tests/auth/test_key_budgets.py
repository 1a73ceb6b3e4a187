"""Per-key budgets: the ledger on every backend, the budget stored with the key, and
admission over real HTTP — a key whose day is spent gets 429 `budget_exceeded` with
Retry-After on every instance sharing the store, through the native and protocol routes,
while other keys of the tenant go on."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from roost import Agent, Runtime, Settings
from roost.auth.budgets import Budget
from roost.auth.chain import Auth
from roost.auth.keybudgets import CHARGE_TO, KeyBudgets, MemoryKeySpend, open_key_spend, periods
from roost.auth.keys import KeyStore, key_id_of, new_key, open_key_store
from roost.auth.keystores.sqlite import SQLiteKeyStore
from roost.cli import app as cli
from roost.server.app import create_app
from roost.sessions.records import RunRecord, Usage
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel
from tests.auth.conftest import BACKENDS, drop, store_settings
from tests.server.conftest import WAIT_S, assert_problem

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_ledger_adds_across_instances(backend: str, tmp_path: Path) -> None:
    settings = store_settings(backend, tmp_path)
    shared = MemoryKeySpend()
    one, two = ((shared, shared) if backend == "memory" else
                (open_key_spend(settings["url"], **settings.get("options", {})),
                 open_key_spend(settings["url"], **settings.get("options", {}))))
    await one.open()
    await two.open()
    try:
        day, month = periods(time.time())
        await asyncio.gather(one.add({("k1", day): (10, 0.5), ("k1", month): (10, 0.5)}),
                             two.add({("k1", day): (5, 0.25), ("k2", day): (1, 0.0)}))
        assert await one.get("k1", (day, month)) == {day: (15, 0.75), month: (10, 0.5)}
        assert await two.get("k2", (day, month)) == {day: (1, 0.0)}
        assert await two.get("nobody", (day, month)) == {}
    finally:
        await one.close()
        await two.close()
        await drop(backend, settings)


async def test_budget_is_stored_with_the_key(key_store: KeyStore) -> None:
    budgeted, _ = new_key("acme", "user", "app", budget={"day_cost": 2.5, "month_tokens": 1000})
    plain, _ = new_key("acme", "user", "plain")
    await key_store.add(budgeted)
    await key_store.add(plain)
    got = await key_store.get(budgeted.id)
    assert got is not None and got.budget == {"day_cost": 2.5, "month_tokens": 1000}
    assert got.principal().budget == Budget(day_cost=2.5, month_tokens=1000)
    again = await key_store.get(plain.id)
    assert again is not None and again.budget is None and again.principal().budget is None


async def test_an_sqlite_file_from_before_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE api_keys (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, "
                     "role TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL, user_id TEXT, "
                     "created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, "
                     "last_used_at REAL)")
        conn.execute("INSERT INTO api_keys VALUES ('aaaaaaaaaaaa', 'acme', 'user', 'old', 'h',"
                     " NULL, 1.0, NULL, NULL, NULL)")
    conn.close()
    store = SQLiteKeyStore(str(path))
    try:
        old = await store.get("aaaaaaaaaaaa")
        assert old is not None and old.budget is None
        key, _ = new_key("acme", "user", "new", budget={"day_tokens": 5})
        await store.add(key)
        assert (await store.get(key.id)).budget == {"day_tokens": 5}  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_gate_counts_pending_spend_and_names_the_window() -> None:
    clock = [1_796_400_000.0]
    gate = KeyBudgets(MemoryKeySpend(), refresh_s=60, clock=lambda: clock[0])
    budget = Budget(day_tokens=100, month_cost=1.0)
    assert await gate.check("k", budget) is None
    run = RunRecord(id="r", session_id="s", agent="a",
                    usage=Usage(input_tokens=60, output_tokens=40, cost=0.1))
    gate.charge(run)  # no key in the context: nothing
    token = CHARGE_TO.set("k")
    try:
        gate.charge(run)
    finally:
        CHARGE_TO.reset(token)
    what, retry_after = await gate.check("k", budget)  # type: ignore[misc]
    assert what == "day_tokens"
    assert retry_after == pytest.approx(86400 - clock[0] % 86400)
    await gate.flush()
    assert await gate.store.get("k", periods(clock[0])) != {}
    clock[0] += 86400  # a new day: the day's tokens are free again, the month's cost not
    assert await gate.check("k", budget) is None


# -- over HTTP -----------------------------------------------------------------------------------
@asynccontextmanager
async def fleet(backend: str, tmp_path: Path, instances: int
                ) -> AsyncIterator[tuple[list[str], dict[str, str]]]:
    """`instances` live servers on one store with auth on; keys: `capped` (10 tokens a day)
    and `free`, both users of tenant acme."""
    store = store_settings(backend, tmp_path)
    settings = Settings.model_validate({
        "store": store, "server": {"shutdown_grace_s": 0},
        "auth": {"enabled": True, "budgets": {"refresh_s": 0, "key_flush_s": 0.05}}})
    keys = open_key_store(store["url"], **store.get("options", {}))
    await keys.open()
    capped, capped_token = new_key("acme", "user", "capped", budget={"day_tokens": 10})
    free, free_token = new_key("acme", "user", "free")
    ops, ops_token = new_key("acme", "operator", "ops", budget={"day_cost": 5})
    await keys.add(capped)
    await keys.add(free)
    await keys.add(ops)
    await keys.close()
    try:
        async with AsyncExitStack() as stack:
            urls = []
            for _ in range(instances):
                runtime = Runtime(settings, [Agent(name="echo", model=ScriptedModel(
                    ["one two three four five six seven eight"], repeat_last=True))])
                live = LiveServer(runtime, app=create_app(runtime,
                                                          auth=Auth.from_settings(settings)))
                await stack.enter_async_context(live)
                urls.append(live.url)
            yield urls, {"capped": capped_token, "free": free_token, "ops": ops_token}
    finally:
        await drop(backend, store)


async def spend_and_wait_for_refusal(http: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    """Turns until the key is refused (its spend reaches the store within the flush)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        sid = (await http.post("/v1/agents/echo/sessions", json={}, headers=headers)).json()["id"]
        response = await http.post(f"/v1/sessions/{sid}/turns", json={"input": "go"},
                                   headers=headers)
        if response.status_code == 429:
            return response
        assert response.status_code == 200, response.text
        await asyncio.sleep(0.05)  # lets the flusher write; the loop is bounded by WAIT_S
    raise AssertionError("the key was never refused")


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "redis"])
async def test_a_spent_key_is_refused_on_every_instance(backend: str, tmp_path: Path) -> None:
    instances = 1 if backend == "sqlite" else 2
    async with fleet(backend, tmp_path, instances) as (urls, tokens):
        capped = {"Authorization": f"Bearer {tokens['capped']}"}
        free = {"Authorization": f"Bearer {tokens['free']}"}
        async with httpx.AsyncClient(base_url=urls[0], timeout=WAIT_S) as first:
            refused = await spend_and_wait_for_refusal(first, capped)
        body = assert_problem(refused, 429, "budget_exceeded")
        assert "API key" in body["detail"] and "day tokens" in body["detail"]
        assert 0 < int(refused.headers["retry-after"]) <= 86400
        async with httpx.AsyncClient(base_url=urls[-1], timeout=WAIT_S) as last:
            sid = (await last.post("/v1/agents/echo/sessions", json={}, headers=free)).json()["id"]
            # The other instance refuses it too (the ledger is in the shared store) …
            again = await last.post(f"/v1/sessions/{sid}/turns", json={"input": "x"},
                                    headers=capped)
            assert_problem(again, 429, "budget_exceeded")
            # … through the protocol adapters as well, while another key goes on.
            chat = await last.post("/v1/chat/completions", headers=capped, json={
                "model": "echo", "messages": [{"role": "user", "content": "hi"}]})
            assert chat.status_code == 429
            ok = await last.post(f"/v1/sessions/{sid}/turns", json={"input": "x"}, headers=free)
            assert ok.status_code == 200, ok.text
            # /v1/usage shows the calling key's own budget beside its tenant's.
            ops = {"Authorization": f"Bearer {tokens['ops']}"}
            usage = (await last.get("/v1/usage", headers=ops)).json()
            assert usage["key_budget"]["limits"] == {"day_cost": 5}
            assert usage["key_budget"]["day"] is not None


async def test_admin_route_and_cli_set_a_budget(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/roost.db"
    created = await asyncio.to_thread(CliRunner().invoke, cli, ["keys", "create", "--tenant", "acme", "--role", "user",
                                       "--name", "app", "--day-cost", "2.5", "--month-tokens",
                                       "1000", "--store", store])
    assert created.exit_code == 0, created.output
    key_id = key_id_of(created.stdout.strip().splitlines()[-1])
    keys = SQLiteKeyStore(f"{tmp_path}/roost.db")
    try:
        key = await keys.get(key_id or "")
        assert key is not None and key.budget == {"day_cost": 2.5, "month_tokens": 1000}
        admin, admin_token = new_key("acme", "admin", "root")
        await keys.add(admin)
    finally:
        await keys.close()
    settings = Settings.model_validate({"store": {"url": store},
                                        "server": {"shutdown_grace_s": 0},
                                        "auth": {"enabled": True}})
    runtime = Runtime(settings, [Agent(name="echo", model=ScriptedModel(["x"]))])
    async with LiveServer(runtime, app=create_app(runtime, auth=Auth.from_settings(settings))
                          ) as live, httpx.AsyncClient(
            base_url=live.url, headers={"Authorization": f"Bearer {admin_token}"}) as http:
        made = await http.post("/v1/admin/keys", json={
            "tenant": "acme", "role": "user", "name": "b", "budget": {"day_tokens": 7}})
        assert made.status_code == 201 and made.json()["budget"] == {"day_tokens": 7}
        bad = await http.post("/v1/admin/keys", json={
            "tenant": "acme", "role": "user", "name": "c", "budget": {"day_tokens": -1}})
        assert_problem(bad, 422, field="budget.day_tokens")
        listed = (await http.get("/v1/admin/keys", params={"tenant": "acme"})).json()["items"]
        assert {k["name"]: k["budget"] for k in listed}["app"] == {"day_cost": 2.5,
                                                                     "month_tokens": 1000}
