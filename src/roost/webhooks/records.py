"""A delivery: the webhook a run carries, then the attempts to deliver its end."""

from __future__ import annotations

import msgspec

# What a delivery may subscribe to: the run's end statuses as events, and `run.ended` or
# `*` for all of them.
END_EVENTS = ("run.completed", "run.failed", "run.cancelled", "run.timed_out",
              "run.interrupted", "run.budget_exceeded")
EVENTS = (*END_EVENTS, "run.ended", "*")


class Attempt(msgspec.Struct, kw_only=True):
    at: float
    duration_ms: float
    status_code: int | None = None
    error: str | None = None


class Delivery(msgspec.Struct, kw_only=True):
    """States: `armed` (the run has not ended: watched), `pending` (to deliver: attempts
    due at `next_at`), `delivered`, `failed` (gave up), `skipped` (the run ended with an
    event the webhook did not ask for, or is gone). The id is the `webhook-id` a receiver
    dedupes on: the same for every attempt."""

    id: str
    tenant: str
    run_id: str
    url: str
    events: list[str]
    state: str = "armed"
    created_at: float = 0.0
    next_at: float = 0.0
    event: str | None = None
    payload: str | None = None  # the JSON body, fixed when the run ended
    attempts: list[Attempt] = msgspec.field(default_factory=list)

    @property
    def open(self) -> bool:
        return self.state in ("armed", "pending")
