"""Usage totals over a time window: what `Store.usage_summary` returns.

The SQL backends sum in the database (one grouped query, a handful of rows back); the
key-value backends (memory, redis) feed their runs through `UsageSummer`. Both label groups
the same way, so every backend answers alike:

    totals = await store.usage_summary("acme", group_by=("agent", "day"), since=t0, until=t1)
    # [UsageTotals(key={"agent": "helper", "day": "2025-01-31"}, runs=12, input_tokens=…), …]

Windows are half-open, `[since, until)` on a run's `created_at` (epoch seconds). `day` and
`hour` bucket `created_at` in UTC (`2025-01-31`, `2025-01-31T14`), by whole seconds, so a
run at 23:59:59.9999 lands in its own day on every backend (no float rounding at the edge).

Errors: an unknown or repeated `group_by` key, a non-finite bound, or more than
`MAX_USAGE_GROUPS` groups raise `InvalidInput` naming the field.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Final

import msgspec

from roost.errors import InvalidInput
from roost.sessions.records import Usage

#: what usage can be grouped by; a summary is always within one tenant
USAGE_GROUP_KEYS: Final = ("agent", "model", "status", "day", "hour")

#: the most groups one summary returns: `hour` over a year is 8,760 groups per agent and
#: model, an answer the server would otherwise build in memory whatever its size
MAX_USAGE_GROUPS: Final = 10_000

#: seconds per bucket of the time keys
BUCKET_SECONDS: Final = {"day": 86_400, "hour": 3_600}
_BUCKET_FORMAT: Final = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H"}


class UsageTotals(msgspec.Struct, kw_only=True):
    """The runs of one group and their summed usage; `key` maps each `group_by` key to its
    value (`{"agent": "helper", "model": "demo"}`; `{}` for a grand total)."""

    key: dict[str, str]
    runs: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


def check_group_by(group_by: Sequence[str]) -> tuple[str, ...]:
    """`group_by` as a tuple, or `InvalidInput` (field "group_by") for an unknown or repeated
    key."""
    if isinstance(group_by, str):  # "agent" would otherwise group by a, g, e, n, t
        raise InvalidInput("group_by must be a sequence of keys, not a string", field="group_by")
    keys = tuple(group_by)
    unknown = [k for k in keys if k not in USAGE_GROUP_KEYS]
    if unknown:
        raise InvalidInput(
            f"cannot group usage by {', '.join(map(str, unknown))};"
            f" use {', '.join(USAGE_GROUP_KEYS)}",
            field="group_by",
        )
    if len(set(keys)) != len(keys):
        raise InvalidInput("group_by lists a key twice", field="group_by")
    return keys


def check_window(since: float | None, until: float | None) -> tuple[float | None, float | None]:
    """The bounds as floats; `InvalidInput` naming the bound that is not a finite number."""
    return _bound(since, "since"), _bound(until, "until")


def _bound(value: float | None, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number of epoch seconds", field=field)
    return float(value)


def bucket(key: str, created_at: float) -> int:
    """The `day` or `hour` bucket of a timestamp: whole seconds since the epoch, divided."""
    return math.floor(created_at) // BUCKET_SECONDS[key]


def bucket_label(key: str, number: int) -> str:
    """`2025-01-31` (day) or `2025-01-31T14` (hour) for a bucket number, in UTC."""
    return time.strftime(_BUCKET_FORMAT[key], time.gmtime(number * BUCKET_SECONDS[key]))


def totals_from_rows(
    group_by: tuple[str, ...], rows: Sequence[Sequence[Any]]
) -> list[UsageTotals]:
    """`UsageTotals` from SQL rows `(*group values, runs, input, output, cost)`, where the
    time keys are bucket numbers; sorted by key, at most `MAX_USAGE_GROUPS`."""
    if len(rows) > MAX_USAGE_GROUPS:
        raise too_many_groups()
    n = len(group_by)
    out: list[UsageTotals] = []
    for row in rows:
        runs = int(row[n])
        if not runs:  # an ungrouped aggregate over no rows still answers one row
            continue
        key = {
            k: bucket_label(k, int(v)) if k in BUCKET_SECONDS else str(v)
            for k, v in zip(group_by, row[:n], strict=True)
        }
        out.append(
            UsageTotals(
                key=key,
                runs=runs,
                input_tokens=int(row[n + 1] or 0),
                output_tokens=int(row[n + 2] or 0),
                cost=float(row[n + 3] or 0.0),
            )
        )
    return sort_totals(group_by, out)


def sort_totals(group_by: tuple[str, ...], totals: list[UsageTotals]) -> list[UsageTotals]:
    # In Python, not SQL: the SQL backends order text by different collations.
    totals.sort(key=lambda t: tuple(t.key[k] for k in group_by))
    return totals


def too_many_groups() -> InvalidInput:
    return InvalidInput(
        f"the usage summary has more than {MAX_USAGE_GROUPS} groups;"
        " narrow since/until or group by fewer keys",
        field="group_by",
    )


class UsageSummer:
    """Sums runs into groups, in Python, for the backends without SQL.

        summer = UsageSummer(("agent", "day"))
        summer.add(agent="helper", model="demo", status="completed", created_at=t, usage=u)
        summer.totals()
    """

    __slots__ = ("_groups", "group_by")

    def __init__(self, group_by: Sequence[str]) -> None:
        self.group_by = check_group_by(group_by)
        # Keyed by raw values (bucket numbers for day/hour): labels are made once per group
        # in totals(), not once per run.
        self._groups: dict[tuple[str | int, ...], UsageTotals] = {}

    def add(self, *, agent: str, model: str, status: str, created_at: float, usage: Usage) -> None:
        fields = {"agent": agent, "model": model, "status": status}
        values = tuple(
            bucket(k, created_at) if k in BUCKET_SECONDS else fields[k] for k in self.group_by
        )
        group = self._groups.get(values)
        if group is None:
            if len(self._groups) >= MAX_USAGE_GROUPS:
                raise too_many_groups()
            group = self._groups[values] = UsageTotals(key={})
        group.runs += 1
        group.input_tokens += usage.input_tokens
        group.output_tokens += usage.output_tokens
        group.cost += usage.cost

    def totals(self) -> list[UsageTotals]:
        out = []
        for values, group in self._groups.items():
            group.key = {
                k: bucket_label(k, v) if isinstance(v, int) else v
                for k, v in zip(self.group_by, values, strict=True)
            }
            out.append(group)
        return sort_totals(self.group_by, out)
