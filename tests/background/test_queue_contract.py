"""The `BackgroundStore` contract on every backend (memory, SQLite, PostgreSQL, Redis): each
queued run is claimed once however many claim at once, in fair order between tenants, not
before it is due; cancelled runs drop out; tick claims fire once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.background.records import Schedule
from roost.background.store import BackgroundStore, open_background_store
from roost.sessions import Store
from roost.sessions.records import RunRecord, Session, now
from tests.sessions.conftest import BACKENDS, make_store


@pytest.fixture(params=BACKENDS)
async def stores(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[tuple[Store, BackgroundStore]]:
    store = await make_store(request.param, tmp_path)
    await store.open()
    options: dict[str, object] = {}
    if request.param == "postgres":
        options["schema"] = store._schema  # type: ignore[attr-defined]
    elif request.param == "redis":
        options["prefix"] = store._prefix  # type: ignore[attr-defined]
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path}/roost.db",
           "postgres": "postgresql://postgres@127.0.0.1:5432/test",
           "redis": "redis://127.0.0.1:6379/15"}[request.param]
    if request.param in ("postgres", "redis"):
        url = getattr(store, "_url", None) or getattr(store, "url", None) or url
    queue = open_background_store(url, store, **options)
    await queue.open()
    try:
        yield store, queue
    finally:
        await queue.close()
        await store.close()


async def queued(store: Store, queue: BackgroundStore, tenant: str, n: int,
                 not_before: float = 0.0) -> list[RunRecord]:
    session = Session(id=f"ses_{tenant}_{now()}", tenant=tenant, agent="a")
    await store.create_session(session)
    runs = []
    for i in range(n):
        run = RunRecord(id=f"run_{tenant}_{i:04d}_{now()}", session_id=session.id,
                        tenant=tenant, agent="a", status="queued", input="x", attempt=0)
        await store.put_run(run)
        await queue.enqueue(run, not_before)
        runs.append(run)
    return runs


async def test_concurrent_claimers_take_each_run_once(
        stores: tuple[Store, BackgroundStore]) -> None:
    store, queue = stores
    runs = await queued(store, queue, "acme", 60)
    taken: list[RunRecord] = []

    async def claimer(owner: str) -> None:
        while got := await queue.claim(owner, 30.0, 7):
            taken.extend(got)

    await asyncio.gather(*(claimer(f"i{k}") for k in range(4)))
    assert sorted(r.id for r in taken) == sorted(r.id for r in runs)
    for run in taken:
        stored = await store.get_run("acme", run.id)
        assert stored.status == "running" and stored.owner == run.owner and stored.attempt == 1
        assert stored.lease_expires_at is not None and stored.lease_expires_at > now()
    assert await queue.depth() == 0 and await queue.next_due() is None


async def test_a_late_tenant_is_not_held_behind_a_backlog(
        stores: tuple[Store, BackgroundStore]) -> None:
    store, queue = stores
    await queued(store, queue, "big", 20)
    first = await queue.claim("i", 30.0, 2)
    assert {r.tenant for r in first} == {"big"}
    small = await queued(store, queue, "small", 2)
    next_four = await queue.claim("i", 30.0, 4)
    assert {r.id for r in small} <= {r.id for r in next_four}, [r.id for r in next_four]


async def test_a_delayed_run_waits_and_a_removed_one_is_never_claimed(
        stores: tuple[Store, BackgroundStore]) -> None:
    store, queue = stores
    later = now() + 3600
    (delayed,) = await queued(store, queue, "acme", 1, not_before=later)
    gone, cancelled = await queued(store, queue, "acme", 2)
    assert await queue.remove("acme", gone.id)
    assert not await queue.remove("acme", gone.id)
    cancelled.status = "cancelled"
    await store.put_run(cancelled)
    assert await queue.claim("i", 30.0, 10) == []
    due = await queue.next_due()
    assert due is not None and abs(due - later) < 1
    assert (await store.get_run("acme", delayed.id)).status == "queued"


async def test_a_tick_is_claimed_once(stores: tuple[Store, BackgroundStore]) -> None:
    _, queue = stores
    schedule = Schedule(id="sch_1", tenant="acme", agent="a", cron="* * * * * *", input="x")
    await queue.put_schedule(schedule)
    tick = float(int(now()))
    wins = await asyncio.gather(*(queue.claim_tick("acme", "sch_1", tick, f"run_{k}")
                                  for k in range(5)))
    assert sorted(wins) == [False] * 4 + [True]
    stored = await queue.get_schedule("acme", "sch_1")
    assert stored is not None and stored.last_tick == tick
    assert stored.last_run_id == f"run_{wins.index(True)}"
    assert await queue.get_schedule("other", "sch_1") is None
    assert [s.id for s in await queue.list_schedules("acme")] == ["sch_1"]
    assert await queue.list_schedules("other") == []
    assert await queue.delete_schedule("acme", "sch_1")
    assert not await queue.delete_schedule("acme", "sch_1")
