"""Per-key budgets: an API key may carry its own day and month limits on tokens and cost,
enforced at admission like the tenant's (`budgets.py`): 429 `budget_exceeded` with
`Retry-After` at the end of the window that is spent.

    roost keys create --tenant acme --role user --name app --day-cost 5 --month-tokens 2e6
    POST /v1/admin/keys  {"tenant": "acme", "role": "user", "name": "app",
                          "budget": {"day_cost": 5, "month_tokens": 2000000}}

What a key spent cannot come from the runs (a run does not record the key that started
it), so keys with a budget keep a ledger of their own (`KeySpendStore`: per key, per UTC
day and month, tokens and cost), on the same backend as the keys (memory, SQLite,
PostgreSQL migration 0006, Redis), shared by every instance:

1. the auth edge sets `CHARGE_TO` (a context variable) to the key of a spending request
   (a turn, a protocol request) whose key has a budget; the run it starts inherits it;
2. when the run ends, `KeyBudgets.charge` adds its usage to a pending batch, in memory;
3. `run_flusher` (owned by the auth lifespan) writes the batch every `flush_s` — one
   upsert per key and period, an addition, never a read-modify-write;
4. `check` reads a key's totals at most every `refresh_s` (like tenant budgets) plus what
   this instance has not written yet.

A key may overshoot by what the fleet spends between refreshes, and by runs that were
admitted before the limit was reached (they finish). A run resumed by another instance
after a crash is not charged to the key (the context of the request is gone).
"""

from __future__ import annotations

import asyncio
import calendar
import logging
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from roost.auth.budgets import Budget
from roost.sessions.records import RunRecord

log = logging.getLogger("roost.auth")

#: the key a spending request's runs are charged to (set by the auth edge)
CHARGE_TO: ContextVar[str | None] = ContextVar("roost_charge_to", default=None)


def periods(at: float) -> tuple[str, str]:
    """The UTC day and month `at` falls in: ("d:2026-12-04", "m:2026-12")."""
    moment = datetime.fromtimestamp(at, UTC)
    return f"d:{moment:%Y-%m-%d}", f"m:{moment:%Y-%m}"


def window_ends(at: float) -> tuple[float, float]:
    moment = datetime.fromtimestamp(at, UTC)
    day_end = (int(at) // 86400 + 1) * 86400
    month_start = datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()
    days = calendar.monthrange(moment.year, moment.month)[1]
    return float(day_end), month_start + days * 86400


class KeySpendStore(Protocol):
    """Spend per key and period; `add` adds (an upsert), never overwrites."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def add(self, spend: Mapping[tuple[str, str], tuple[int, float]]) -> None: ...
    async def get(self, key_id: str, periods: tuple[str, ...]
                  ) -> dict[str, tuple[int, float]]: ...


class MemoryKeySpend:
    def __init__(self) -> None:
        self._spend: dict[tuple[str, str], tuple[int, float]] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def add(self, spend: Mapping[tuple[str, str], tuple[int, float]]) -> None:
        for key, (tokens, cost) in spend.items():
            old = self._spend.get(key, (0, 0.0))
            self._spend[key] = (old[0] + tokens, old[1] + cost)

    async def get(self, key_id: str, periods: tuple[str, ...]) -> dict[str, tuple[int, float]]:
        return {p: self._spend[(key_id, p)] for p in periods if (key_id, p) in self._spend}


def open_key_spend(url: str, **options: object) -> KeySpendStore:
    """The ledger beside the key store of `url` (built, not open)."""
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryKeySpend()
    if scheme == "sqlite":
        from roost.auth.keybudgets.sqlite import SQLiteKeySpend

        path = rest[1:] if rest.startswith("/") else rest
        return SQLiteKeySpend(path or ".roost/roost.db")
    if scheme in ("postgres", "postgresql"):
        from roost.auth.keybudgets.postgres import PostgresKeySpend

        schema = options.get("schema")
        return PostgresKeySpend(url, schema=schema if isinstance(schema, str) else None)
    if scheme in ("redis", "rediss"):
        from roost.auth.keybudgets.redis import RedisKeySpend

        prefix = options.get("prefix")
        return RedisKeySpend(url, prefix=prefix if isinstance(prefix, str) else "roost:")
    from roost.errors import ConfigError

    raise ConfigError(f"no key spend ledger for {scheme!r}", [("store.url", url)])


@dataclass(slots=True)
class _Read:
    day: tuple[int, float]
    month: tuple[int, float]
    at: float
    periods: tuple[str, str]


class KeyBudgets:
    """`check(key_id, budget)` at admission; `charge(run)` when a run ends."""

    def __init__(self, store: KeySpendStore, *, refresh_s: float = 5.0, flush_s: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.refresh_s = refresh_s
        self.flush_s = flush_s
        self.clock = clock
        self._pending: dict[tuple[str, str], tuple[int, float]] = {}
        self._read: dict[str, _Read] = {}
        self._refreshing: dict[str, asyncio.Future[_Read]] = {}

    def charge(self, run: RunRecord) -> None:
        """Add a finished run's usage to its key's pending spend (no await: called as the
        run's task ends)."""
        key_id = CHARGE_TO.get()
        if key_id is None:
            return
        tokens = run.usage.input_tokens + run.usage.output_tokens
        cost = run.usage.cost
        if not tokens and not cost:
            return
        for period in periods(self.clock()):
            old = self._pending.get((key_id, period), (0, 0.0))
            self._pending[(key_id, period)] = (old[0] + tokens, old[1] + cost)

    async def check(self, key_id: str, budget: Budget) -> tuple[str, float] | None:
        """None within budget, else (what is spent, seconds until its window ends)."""
        now = self.clock()
        read = self._read.get(key_id)
        day, month = periods(now)
        if read is None or now - read.at >= self.refresh_s or read.periods != (day, month):
            read = await self._refresh(key_id, now)
        pending_day = self._pending.get((key_id, day), (0, 0.0))
        pending_month = self._pending.get((key_id, month), (0, 0.0))
        day_end, month_end = window_ends(now)
        for name, limit, used, ends in (
                ("day_tokens", budget.day_tokens, read.day[0] + pending_day[0], day_end),
                ("day_cost", budget.day_cost, read.day[1] + pending_day[1], day_end),
                ("month_tokens", budget.month_tokens, read.month[0] + pending_month[0],
                 month_end),
                ("month_cost", budget.month_cost, read.month[1] + pending_month[1], month_end)):
            if limit is not None and used >= limit:
                return name, max(1.0, ends - now)
        return None

    async def _refresh(self, key_id: str, now: float) -> _Read:
        pending = self._refreshing.get(key_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Read] = asyncio.get_running_loop().create_future()
        self._refreshing[key_id] = future
        try:
            day, month = periods(now)
            found = await self.store.get(key_id, (day, month))
            read = _Read(found.get(day, (0, 0.0)), found.get(month, (0, 0.0)), now, (day, month))
            self._read[key_id] = read
            future.set_result(read)
            return read
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it
            raise
        finally:
            del self._refreshing[key_id]

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self.store.add(batch)
        except BaseException:
            for key, (tokens, cost) in batch.items():  # keep it for the next flush
                old = self._pending.get(key, (0, 0.0))
                self._pending[key] = (old[0] + tokens, old[1] + cost)
            raise
        for key_id, _ in batch:
            self._read.pop(key_id, None)  # read our own writes at the next check

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except Exception:  # a store outage: kept in memory, written at the next flush
                log.warning("could not record API keys' spend", exc_info=True)

    def statistics(self, key_id: str) -> dict[str, object]:
        read = self._read.get(key_id)
        return {"day": None if read is None else {"tokens": read.day[0], "cost": read.day[1]},
                "month": None if read is None else {"tokens": read.month[0],
                                                      "cost": read.month[1]}}
