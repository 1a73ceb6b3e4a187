"""Usage and cost: a price table, and aggregation of run records for `GET /v1/usage`.

    prices = PriceTable({"openai:gpt-4o-mini": ModelPrice(input=0.15, output=0.60)})
    prices.cost("gpt-4o-mini-2024-07-18", Usage(input_tokens=1000, output_tokens=200))
    # 0.00027

    aggregate(runs, group_by=("tenant", "model"), since=t0)
    # [UsageGroup(key={"tenant": "acme", "model": "openai:gpt-4o-mini"}, runs=12, ...), ...]
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec

from roost.errors import InvalidInput
from roost.observability.config import ModelPrice
from roost.sessions.records import RunRecord, Usage

UNKNOWN = "unknown"

# Resolutions are cached; model names come from config and provider responses, so the cache
# is bounded only as a safeguard against a provider echoing unbounded names.
_MAX_CACHED = 4096


class PriceTable:
    """Per-model prices, resolved leniently.

    A name resolves, in order, to: the exact key; the key without its provider prefix
    (`openai:gpt-4o` -> `gpt-4o`) or with it; the longest key that is a prefix of the model at a
    `-` boundary, so a dated snapshot (`gpt-4o-mini-2024-07-18`) uses the price of
    `gpt-4o-mini`. Unknown models cost 0.0.
    """

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices: dict[str, ModelPrice] = dict(prices or {})
        # Index by bare name too: "openai:gpt-4o" also prices "gpt-4o".
        self._bare: dict[str, ModelPrice] = {}
        for key, price in self._prices.items():
            self._bare.setdefault(_bare(key), price)
        self._resolved: dict[str, ModelPrice | None] = {}

    def __bool__(self) -> bool:
        return bool(self._prices)

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or None when no key matches."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        found = self._resolve(model)
        if len(self._resolved) < _MAX_CACHED:
            self._resolved[model] = found
        return found

    def cost(self, model: str, usage: Usage) -> float:
        """USD for `usage` tokens of `model` (0.0 when the model has no price)."""
        price = self.price(model)
        if price is None:
            return 0.0
        return (usage.input_tokens * price.input + usage.output_tokens * price.output) / 1e6

    def _resolve(self, model: str) -> ModelPrice | None:
        if not model:
            return None
        if model in self._prices:
            return self._prices[model]
        bare = _bare(model)
        for table, name in ((self._prices, bare), (self._bare, bare)):
            if name in table:
                return table[name]
        best: tuple[int, ModelPrice] | None = None
        for key, price in self._bare.items():
            if bare.startswith(key + "-") and (best is None or len(key) > best[0]):
                best = (len(key), price)
        return best[1] if best else None


def _bare(model: str) -> str:
    return model.partition(":")[2] or model


# -- aggregation ------------------------------------------------------------------------------

GROUP_KEYS = ("tenant", "agent", "model", "session_id", "status", "day", "hour")


class UsageGroup(msgspec.Struct, kw_only=True):
    """Totals for one combination of the `group_by` keys."""

    key: dict[str, str]
    runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: float = 0.0


def aggregate(
    runs: Iterable[RunRecord],
    group_by: Sequence[str] = ("tenant", "agent", "model"),
    *,
    since: float | None = None,
    until: float | None = None,
) -> list[UsageGroup]:
    """Sum runs' usage per group, over runs created in `[since, until)` (epoch seconds).

    `group_by` draws from `GROUP_KEYS`; `day` and `hour` bucket `created_at` in UTC
    (`2025-01-31`, `2025-01-31T14`). An empty `group_by` gives one grand total. Groups come
    back sorted by key. Raises `InvalidInput` for an unknown key.
    """
    keys = tuple(group_by)
    unknown = [k for k in keys if k not in GROUP_KEYS]
    if unknown:
        raise InvalidInput(
            f"cannot group usage by {', '.join(unknown)}; use {', '.join(GROUP_KEYS)}",
            field="group_by",
        )
    if len(set(keys)) != len(keys):
        raise InvalidInput("group_by lists a key twice", field="group_by")
    groups: dict[tuple[str, ...], UsageGroup] = {}
    for run in runs:
        if since is not None and run.created_at < since:
            continue
        if until is not None and run.created_at >= until:
            continue
        values = tuple(_group_value(run, k) for k in keys)
        group = groups.get(values)
        if group is None:
            group = groups[values] = UsageGroup(key=dict(zip(keys, values, strict=True)))
        usage = run.usage
        group.runs += 1
        group.input_tokens += usage.input_tokens
        group.output_tokens += usage.output_tokens
        group.total_tokens += usage.input_tokens + usage.output_tokens
        group.cost += usage.cost
    return [groups[k] for k in sorted(groups)]


def _group_value(run: RunRecord, key: str) -> str:
    if key == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(run.created_at))
    if key == "hour":
        return time.strftime("%Y-%m-%dT%H", time.gmtime(run.created_at))
    # `model` is read leniently: older records (and stores) may not carry it.
    value: Any = getattr(run, key, None)
    return str(value) if value else UNKNOWN
