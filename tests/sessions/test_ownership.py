"""Run ownership on every backend: one claimant wins, leases renew in one batch, runs whose
owner died are found across tenants."""

from __future__ import annotations

import asyncio
import time

import pytest

from roost.errors import RunNotFound
from roost.sessions import RunRecord, Session, Store


async def make_run(store: Store, tenant: str = "default", *, status: str = "running",
                   owner: str | None = "dead", lease_in: float = -1.0) -> RunRecord:
    session = await store.create_session(Session(id=f"s_{time.monotonic_ns()}", agent="a",
                                                 tenant=tenant))
    run = RunRecord(id=f"r_{time.monotonic_ns()}", session_id=session.id, tenant=tenant,
                    agent="a", status=status, owner=owner,
                    lease_expires_at=None if owner is None else time.time() + lease_in)
    await store.put_run(run)
    return run


async def test_exactly_one_of_many_concurrent_claims_wins(store: Store) -> None:
    run = await make_run(store)
    results = await asyncio.gather(*(store.claim_run("default", run.id, f"i{n}", 30)
                                     for n in range(20)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    claimed = winners[0]
    assert claimed.status == "running" and claimed.attempt == run.attempt + 1
    stored = await store.get_run("default", run.id)
    assert stored.owner == claimed.owner and stored.lease_expires_at is not None
    # The winner's lease is live: nobody else, not even the winner again, claims it.
    assert await store.claim_run("default", run.id, "other", 30) is None
    assert await store.claim_run("default", run.id, claimed.owner or "", 30) is None


async def test_claims_respect_status_and_existence(store: Store) -> None:
    done = await make_run(store, status="completed", owner=None)
    assert await store.claim_run("default", done.id, "me", 30) is None
    interrupted = await make_run(store, status="interrupted", owner=None)
    claimed = await store.claim_run("default", interrupted.id, "me", 30)
    assert claimed is not None and claimed.owner == "me"
    with pytest.raises(RunNotFound):
        await store.claim_run("default", "run_missing", "me", 30)
    with pytest.raises(RunNotFound):
        await store.claim_run("other-tenant", interrupted.id, "me", 30)


async def test_claimable_runs_across_tenants(store: Store) -> None:
    dead_a = await make_run(store, "tenant-a")
    dead_b = await make_run(store, "tenant-b")
    live = await make_run(store, owner="alive", lease_in=60)
    interrupted = await make_run(store, status="interrupted", owner=None)
    await make_run(store, status="completed", owner=None)
    found = {r.id for r in await store.claimable_runs()}
    assert {dead_a.id, dead_b.id} <= found
    assert live.id not in found and interrupted.id not in found
    with_interrupted = {r.id for r in await store.claimable_runs(include_interrupted=True)}
    assert interrupted.id in with_interrupted
    tenants = {r.tenant for r in await store.claimable_runs() if r.id in (dead_a.id, dead_b.id)}
    assert tenants == {"tenant-a", "tenant-b"}


async def test_renewal_keeps_an_owners_runs_and_sessions(store: Store) -> None:
    mine = await make_run(store, owner="me", lease_in=0.5)
    theirs = await make_run(store, owner="them", lease_in=0.5)
    assert await store.acquire_lease("default", mine.session_id, "me", 0.5)
    assert await store.renew_ownership("me", 60) >= 1
    renewed = await store.get_run("default", mine.id)
    assert renewed.lease_expires_at is not None and renewed.lease_expires_at > time.time() + 30
    assert (await store.get_run("default", theirs.id)).lease_expires_at < time.time() + 30  # type: ignore[operator]

    async def expired() -> bool:
        return theirs.id in {r.id for r in await store.claimable_runs()}

    async with asyncio.timeout(5):
        # The store's clock decides the expiry; nothing to wait on but the store itself.
        while not await expired():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert mine.id not in {r.id for r in await store.claimable_runs()}
    # The renewed session lease outlived its original half second.
    assert not await store.acquire_lease("default", mine.session_id, "them", 5)


async def test_a_run_given_back_without_owner_is_claimable(store: Store) -> None:
    run = await make_run(store, owner="me", lease_in=60)
    run.owner, run.lease_expires_at = None, time.time()
    await store.put_run(run)  # what a claimant that could not start it writes
    assert run.id in {r.id for r in await store.claimable_runs()}
    assert await store.claim_run("default", run.id, "other", 30) is not None
