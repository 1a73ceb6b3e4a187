"""The `WebhookStore` contract on every backend (memory, SQLite, PostgreSQL, Redis): a
delivery is armed once per run, claimed by one claimant at a time however many claim at
once, comes back when its claimant's lease lapses, is written back only by its claimant, and
a claim takes at most `per_tenant` of one tenant."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.webhooks.records import Attempt, Delivery
from roost.webhooks.store import WebhookStore, open_webhook_store
from tests.sessions.conftest import BACKENDS, make_store


@pytest.fixture(params=BACKENDS)
async def outbox(request: pytest.FixtureRequest, tmp_path: Path
                 ) -> AsyncIterator[WebhookStore]:
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
    webhooks = open_webhook_store(url, **options)
    await webhooks.open()
    try:
        yield webhooks
    finally:
        await webhooks.close()
        await store.close()


def delivery(tenant: str, i: int, next_at: float = 0.0) -> Delivery:
    return Delivery(id=f"whd_{tenant}_{i}", tenant=tenant, run_id=f"run_{tenant}_{i:04d}",
                    url="https://example.com/hook", events=["*"], created_at=time.time(),
                    next_at=next_at)


async def test_arm_is_once_per_run_and_reads_back(outbox: WebhookStore) -> None:
    assert await outbox.arm(delivery("acme", 1))
    again = delivery("acme", 1)
    again.id = "whd_other"
    assert not await outbox.arm(again)
    stored = await outbox.get("acme", "run_acme_0001")
    assert stored is not None and stored.id == "whd_acme_1" and stored.state == "armed"
    assert await outbox.get("globex", "run_acme_0001") is None


async def test_concurrent_claimers_take_each_delivery_once(outbox: WebhookStore) -> None:
    for i in range(40):
        await outbox.arm(delivery("acme", i))
    taken: list[str] = []

    async def claimer(owner: str) -> None:
        while got := await outbox.claim(owner, 30.0, 3, 100):
            taken.extend(d.id for d in got)

    await asyncio.gather(*(claimer(f"i{k}") for k in range(4)))
    assert sorted(taken) == sorted(f"whd_acme_{i}" for i in range(40))


async def test_only_the_claimant_saves_and_a_lapsed_lease_comes_back(
        outbox: WebhookStore) -> None:
    await outbox.arm(delivery("acme", 1))
    [mine] = await outbox.claim("a", 0.3, 10, 10)
    assert await outbox.claim("b", 30.0, 10, 10) == []
    mine.state = "pending"
    mine.attempts.append(Attempt(at=time.time(), duration_ms=1.5, status_code=500,
                                 error="HTTP 500"))
    assert not await outbox.save(mine, "b")
    deadline = time.monotonic() + 5
    while not (again := await outbox.claim("b", 30.0, 10, 10)):
        assert time.monotonic() < deadline, "the lapsed lease never came back"
        await asyncio.sleep(0.05)
    assert [d.id for d in again] == ["whd_acme_1"]
    assert not await outbox.save(mine, "a")  # a lost lease writes nothing
    mine.state = "delivered"
    assert await outbox.save(mine, "b")
    stored = await outbox.get("acme", "run_acme_0001")
    assert stored is not None and stored.state == "delivered"
    assert stored.attempts[0].status_code == 500
    assert await outbox.claim("c", 30.0, 10, 10) == []  # done: never claimed again


async def test_not_before_it_is_due_and_wake_makes_it_due(outbox: WebhookStore) -> None:
    await outbox.arm(delivery("acme", 1, next_at=time.time() + 3600))
    assert await outbox.claim("a", 30.0, 10, 10) == []
    await outbox.wake("acme", "run_acme_0001", time.time())
    assert [d.id for d in await outbox.claim("a", 30.0, 10, 10)] == ["whd_acme_1"]


async def test_a_claim_takes_at_most_per_tenant_of_one_tenant(outbox: WebhookStore) -> None:
    for i in range(10):
        await outbox.arm(delivery("big", i))
    await outbox.arm(delivery("small", 0, next_at=1.0))
    got = await outbox.claim("a", 30.0, 5, 2)
    assert sorted(d.tenant for d in got) == ["big", "big", "small"]


async def test_secrets_put_if_absent_and_replace(outbox: WebhookStore) -> None:
    assert await outbox.get_secret("acme") is None
    assert await outbox.put_secret("acme", "whsec_one", replace=False) == "whsec_one"
    assert await outbox.put_secret("acme", "whsec_two", replace=False) == "whsec_one"
    assert await outbox.put_secret("acme", "whsec_three") == "whsec_three"
    assert await outbox.get_secret("acme") == "whsec_three"
    assert await outbox.get_secret("globex") is None


async def test_a_claim_leaves_out_excluded_tenants(outbox: WebhookStore) -> None:
    for i in range(3):
        await outbox.arm(delivery("busy", i))
    await outbox.arm(delivery("idle", 0, next_at=1.0))
    got = await outbox.claim("a", 30.0, 2, 2, ["busy"])
    assert [d.tenant for d in got] == ["idle"]
