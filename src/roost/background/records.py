"""The records of work that outlives a request: a queued run's place in the durable queue,
and a schedule (a cron expression that starts runs)."""

from __future__ import annotations

from typing import Literal

import msgspec

from roost.sessions.records import DEFAULT_TENANT, now

SessionPolicy = Literal["new", "fixed"]
CatchUp = Literal["skip", "run_once"]


class Schedule(msgspec.Struct, kw_only=True):
    """Runs of `agent` started at each tick of `cron` (in `timezone`) with `input`.

    `session_policy` "new" starts a session per tick; "fixed" runs every tick in
    `session_id`. `last_tick` is the newest tick fired (epoch seconds): the scheduler
    continues from it, and applies `catch_up` to the ticks missed while no instance ran."""

    id: str
    tenant: str = DEFAULT_TENANT
    agent: str
    cron: str
    timezone: str = "UTC"
    input: str
    session_policy: SessionPolicy = "new"
    session_id: str | None = None
    user_id: str | None = None
    enabled: bool = True
    catch_up: CatchUp = "skip"
    created_at: float = msgspec.field(default_factory=now)
    updated_at: float = msgspec.field(default_factory=now)
    last_tick: float | None = None
    last_run_id: str | None = None
