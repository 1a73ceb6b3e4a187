"""`GET /v1/usage`: the request tenant's runs, their tokens and cost, summed per group.

    GET /v1/usage?group_by=agent,model&since=2025-01-01&until=1738368000
    {"items": [{"tenant": "acme", "agent": "helper", "model": "openai:gpt-4o-mini",
                "runs": 12, "input_tokens": 3400, "output_tokens": 800,
                "total_tokens": 4200, "cost": 0.00099}],
     "group_by": ["agent", "model"], "since": 1735689600.0, "until": 1738368000.0}

`group_by` is a comma-separated list from `agent, model, status, day, hour` (default
`agent,model`; empty for one grand total; `tenant` is accepted and always present, since a
request sees only its own tenant). `day`/`hour` are UTC buckets (`2025-01-31`,
`2025-01-31T14`). The window is `[since, until)` on each run's creation time; each bound is
epoch seconds or an ISO-8601 date or time (UTC when it has no offset), and either may be
left open. A run started before the lead set `RunRecord.model` has model `""`.

The store sums where the runs are (one grouped query on SQL backends), so a month of runs
costs one round trip, not a transfer of every run.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from roost.auth.principal import PRINCIPAL
from roost.errors import InvalidInput
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response, runtime_of, tenant_of
from roost.sessions.usage import USAGE_GROUP_KEYS, check_group_by

router = APIRouter(tags=["usage"], route_class=StrictJSONRoute)

DEFAULT_GROUP_BY = ("agent", "model")

_EPOCH_SECONDS = re.compile(r"\d+(?:\.\d*)?|\.\d+")


class UsageItem(BaseModel):
    """One group: its key values (only the `group_by` keys appear) and its totals."""

    tenant: str
    agent: str | None = None
    model: str | None = None
    status: str | None = None
    day: str | None = None
    hour: str | None = None
    runs: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float


class UsageReport(BaseModel):
    items: list[UsageItem]
    group_by: list[str]
    since: float | None
    until: float | None
    budget: dict[str, Any] | None = None  # with [auth.budgets]: limits, day and month spend
    # The calling API key's own budget (roost.auth.keybudgets), when it has one.
    key_budget: dict[str, Any] | None = None


@router.get("/v1/usage", response_model=UsageReport)
async def usage(
    request: Request,
    group_by: str | None = Query(
        None, description=f"comma-separated keys from: tenant, {', '.join(USAGE_GROUP_KEYS)}"
    ),
    since: str | None = Query(None, description="epoch seconds or ISO-8601, inclusive"),
    until: str | None = Query(None, description="epoch seconds or ISO-8601, exclusive"),
) -> Response:
    keys = parse_group_by(group_by)
    start, end = parse_time(since, "since"), parse_time(until, "until")
    if start is not None and end is not None and end <= start:
        raise InvalidInput("until must be later than since", field="until")
    tenant = tenant_of(request)
    totals = await runtime_of(request).usage_summary(
        tenant, group_by=keys, since=start, until=end
    )
    items: list[dict[str, Any]] = [
        {
            "tenant": tenant,
            **t.key,
            "runs": t.runs,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "total_tokens": t.total_tokens,
            "cost": t.cost,
        }
        for t in totals
    ]
    body: dict[str, Any] = {"items": items, "group_by": list(keys), "since": start,
                            "until": end}
    budgets = getattr(request.app.state, "budgets", None)
    if budgets is not None:  # the tenant's budget and spend (see roost.auth.budgets)
        body["budget"] = budgets.statistics(tenant)
    principal = request.scope.get(PRINCIPAL)
    key_budgets = getattr(getattr(request.app.state, "auth", None), "key_budgets", None)
    if (principal is not None and principal.key_id is not None
            and principal.budget is not None and key_budgets is not None):
        await key_budgets.check(principal.key_id, principal.budget)  # reads its spend
        body["key_budget"] = {"key_id": principal.key_id,
                              "limits": principal.budget.model_dump(exclude_none=True),
                              **key_budgets.statistics(principal.key_id)}
    return json_response(body)


def parse_group_by(raw: str | None) -> tuple[str, ...]:
    """`agent,model` → ("agent", "model"); None → the default; `tenant` is dropped (every
    item carries it). `InvalidInput` (field "group_by") for an unknown or repeated key."""
    if raw is None:
        return DEFAULT_GROUP_BY
    names = [name.strip() for name in raw.split(",") if name.strip()]
    if names.count("tenant") > 1:
        raise InvalidInput("group_by lists a key twice", field="group_by")
    return check_group_by([name for name in names if name != "tenant"])


def parse_time(raw: str | None, field: str) -> float | None:
    """Epoch seconds (`1738368000`, `1738368000.25`) or ISO-8601 (`2025-02-01`,
    `2025-02-01T00:00:00Z`, `…+02:00`; UTC when no offset is given) as epoch seconds.
    `InvalidInput` naming `field` otherwise."""
    if raw is None:
        return None
    text = raw.strip()
    if _EPOCH_SECONDS.fullmatch(text):
        value = float(text)
        if math.isfinite(value):
            return value
    else:
        try:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.timestamp()
        except (ValueError, OverflowError):  # not ISO-8601; or an offset past year 1
            pass
    shown = raw if len(raw) <= 64 else raw[:61] + "..."
    raise InvalidInput(
        f"{field} must be epoch seconds or an ISO-8601 date or time, got {shown!r}", field=field
    )
