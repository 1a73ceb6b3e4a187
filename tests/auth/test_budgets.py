"""Budgets at admission: a tenant whose day's (or month's) tokens or cost are spent gets
429 `budget_exceeded` with Retry-After at the window's end; other tenants are served."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from roost.auth.budgets import Budget, BudgetGate, BudgetsConfig
from roost.sessions.usage import UsageTotals
from tests.auth.conftest import secured_app


async def test_a_spent_budget_refuses_turns_until_the_window_ends() -> None:
    budgets = {"default": {"day_tokens": 1}, "tenants": {"globex": {}}, "refresh_s": 0}
    async with secured_app({"url": "memory://"}, budgets=budgets) as app:
        for tenant in ("acme", "globex"):
            headers = app.as_("user", tenant)
            session = (await app.client.post("/v1/agents/echo/sessions", json={},
                                              headers=headers)).json()["id"]
            first = await app.client.post(f"/v1/sessions/{session}/turns",
                                          json={"input": "hello there"}, headers=headers)
            assert first.status_code == 200 and first.json()["usage"]["input_tokens"] > 0
            second = await app.client.post(f"/v1/sessions/{session}/turns",
                                           json={"input": "again"}, headers=headers)
            if tenant == "acme":
                usage = (await app.client.get("/v1/usage", headers=app.as_("operator"))).json()
                assert usage["budget"]["limits"] == {"day_tokens": 1}
                assert usage["budget"]["day"]["tokens"] >= 1
                assert second.status_code == 429
                assert second.json()["type"].endswith("budget_exceeded")
                assert 1 <= int(second.headers["retry-after"]) <= 86400
                # Reading is not spending.
                assert (await app.client.get(f"/v1/sessions/{session}", headers=headers)
                        ).status_code == 200
            else:
                assert second.status_code == 200  # no budget of its own


async def test_usage_is_cached_and_one_query_serves_concurrent_turns() -> None:
    calls: list[tuple[str, float]] = []
    release = asyncio.Event()
    now = datetime(2026, 2, 14, 12, tzinfo=UTC).timestamp()

    async def usage(tenant: str, since: float) -> UsageTotals:
        calls.append((tenant, since))
        await release.wait()
        return UsageTotals(key={}, input_tokens=50, output_tokens=50, cost=2.0)

    gate = BudgetGate(BudgetsConfig(default=Budget(month_cost=2.0), refresh_s=5), usage,
                      clock=lambda: now)
    checks = [asyncio.create_task(gate.check("acme")) for _ in range(5)]
    await asyncio.sleep(0)  # let them all reach the refresh
    release.set()
    results = await asyncio.gather(*checks)
    month_end = datetime(2026, 3, 1, tzinfo=UTC).timestamp()
    assert results == [("month_cost", month_end - now)] * 5
    # One month query and one day query, not ten.
    assert calls == [("acme", datetime(2026, 2, 1, tzinfo=UTC).timestamp()),
                     ("acme", datetime(2026, 2, 14, tzinfo=UTC).timestamp())]
    assert await gate.check("acme") is not None and len(calls) == 2  # cached
    assert gate.statistics("acme")["month"] == {"tokens": 100, "cost": 2.0}


async def test_no_budget_no_query() -> None:
    async def usage(tenant: str, since: float) -> UsageTotals:
        raise AssertionError("not asked")

    gate = BudgetGate(BudgetsConfig(), usage)
    assert not gate.active and await gate.check("acme") is None
