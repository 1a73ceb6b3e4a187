"""Spend and token budgets per tenant, per UTC day and month, enforced when a turn is
admitted: over budget → 429 `budget_exceeded` with `Retry-After` at the window's end.

    [auth.budgets.default]              # every tenant without its own
    day_tokens = 2_000_000
    month_cost = 100.0
    [auth.budgets.tenants.acme]
    day_cost = 25.0

Usage comes from the store's own accounting (`Runtime.usage_summary`, one grouped query),
so budgets are shared by every instance. Asking the store on every turn would cost a round
trip per turn; each tenant's totals are cached for `refresh_s` (5 s) instead, so a tenant
can overshoot by what it spends in that time — runs already admitted finish either way.
While the totals are being refreshed, concurrent turns of that tenant wait for the one
query rather than each sending their own.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from roost.sessions.usage import UsageTotals


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    day_tokens: int | None = Field(None, ge=0)
    day_cost: float | None = Field(None, ge=0)
    month_tokens: int | None = Field(None, ge=0)
    month_cost: float | None = Field(None, ge=0)

    @property
    def empty(self) -> bool:
        return all(v is None for v in (self.day_tokens, self.day_cost, self.month_tokens,
                                       self.month_cost))


class BudgetsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Budget = Field(default_factory=lambda: Budget())
    tenants: dict[str, Budget] = Field(default_factory=dict)
    refresh_s: float = Field(5.0, ge=0, description="how long a tenant's (or a key's) usage "
                             "is cached")
    key_flush_s: float = Field(1.0, gt=0, description="keys' spend is written in batches "
                               "this often (roost.auth.keybudgets)")

    def of(self, tenant: str) -> Budget:
        return self.tenants.get(tenant, self.default)


@dataclass(slots=True)
class Spent:
    day: UsageTotals
    month: UsageTotals
    fetched_at: float
    day_start: float
    month_start: float


UsageQuery = Callable[[str, float], Awaitable[UsageTotals]]


class BudgetGate:
    """`await check(tenant)` → None (within budget) or (what is exceeded, seconds until the
    window that is exceeded ends)."""

    def __init__(self, config: BudgetsConfig, usage: UsageQuery, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.usage = usage
        self.clock = clock
        self._spent: dict[str, Spent] = {}
        self._refreshing: dict[str, asyncio.Future[Spent]] = {}

    @property
    def active(self) -> bool:
        return not (self.config.default.empty and all(b.empty for b in
                                                      self.config.tenants.values()))

    async def check(self, tenant: str) -> tuple[str, float] | None:
        budget = self.config.of(tenant)
        if budget.empty:
            return None
        now = self.clock()
        spent = self._spent.get(tenant)
        day_start, day_end = _day(now)
        if (spent is None or now - spent.fetched_at >= self.config.refresh_s
                or spent.day_start != day_start):
            spent = await self._refresh(tenant, now)
        month_end = _month(now)[1]
        for name, limit, used, ends in (
                ("day_tokens", budget.day_tokens, spent.day.total_tokens, day_end),
                ("day_cost", budget.day_cost, spent.day.cost, day_end),
                ("month_tokens", budget.month_tokens, spent.month.total_tokens, month_end),
                ("month_cost", budget.month_cost, spent.month.cost, month_end)):
            if limit is not None and used >= limit:
                return name, max(1.0, ends - now)
        return None

    async def _refresh(self, tenant: str, now: float) -> Spent:
        pending = self._refreshing.get(tenant)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Spent] = asyncio.get_running_loop().create_future()
        self._refreshing[tenant] = future
        try:
            day_start, month_start = _day(now)[0], _month(now)[0]
            month = await self.usage(tenant, month_start)
            day = month if day_start == month_start else await self.usage(tenant, day_start)
            spent = Spent(day, month, now, day_start, month_start)
            self._spent[tenant] = spent
            future.set_result(spent)
            return spent
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            del self._refreshing[tenant]

    def statistics(self, tenant: str) -> dict[str, object]:
        """What `/v1/usage` shows: the budget and the cached spend."""
        budget = self.config.of(tenant)
        spent = self._spent.get(tenant)
        return {"limits": budget.model_dump(exclude_none=True),
                "day": None if spent is None else {"tokens": spent.day.total_tokens,
                                                    "cost": spent.day.cost},
                "month": None if spent is None else {"tokens": spent.month.total_tokens,
                                                      "cost": spent.month.cost}}


def _day(now: float) -> tuple[float, float]:
    start = (int(now) // 86400) * 86400
    return float(start), float(start + 86400)


def _month(now: float) -> tuple[float, float]:
    moment = datetime.fromtimestamp(now, UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400
