"""The records a store keeps: sessions, their event log, run records, idempotency keys.

Hot-path records are msgspec Structs: cheap to build, to copy and to encode. Pydantic models
live only at the HTTP and config boundaries.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

DEFAULT_TENANT = "default"

EventType = Literal[
    "run.started",
    "message",
    "message.delta",
    "tool.call",
    "tool.result",
    "approval.required",
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.interrupted",
    "run.waiting",
    "approval.decided",
    "compaction",
]

RunStatus = Literal[
    "queued",
    "running",
    "waiting",
    "completed",
    "failed",
    "cancelled",
    "timed_out",
    "interrupted",
    "budget_exceeded",
]

TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"completed", "failed", "cancelled", "timed_out", "interrupted", "budget_exceeded"}
)

#: the events that end a run's attempt (and its stream); an interrupted run may resume, a
#: waiting one (`run.waiting`: an approval or a question for a person) resumes on the answer
RUN_END_EVENTS: frozenset[str] = frozenset(
    {"run.completed", "run.failed", "run.cancelled", "run.interrupted", "run.waiting"})


def now() -> float:
    """Wall-clock seconds since the epoch; every persisted timestamp uses it."""
    return time.time()


class Session(msgspec.Struct, kw_only=True):
    """A conversation with one agent: state, version (compare-and-set), and an event log."""

    id: str
    tenant: str = DEFAULT_TENANT
    agent: str
    user_id: str | None = None
    state: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    # Bumped by every append and every state patch: the compare-and-set token.
    version: int = 0
    # The seq of the newest event in the log (0 when empty).
    last_seq: int = 0
    created_at: float = msgspec.field(default_factory=now)
    updated_at: float = msgspec.field(default_factory=now)
    expires_at: float | None = None


class Event(msgspec.Struct, kw_only=True):
    """One entry of a session's append-only log.

    `seq` is assigned by the store on append (session-scoped, monotonic, from 1); an event
    built by the engine carries seq 0 until then.
    """

    type: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    run_id: str | None = None
    seq: int = 0
    ts: float = msgspec.field(default_factory=now)


class Usage(msgspec.Struct, kw_only=True):
    """Tokens in and out, and their cost: `Usage(input_tokens=12, output_tokens=3)`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost += other.cost

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class RunRecord(msgspec.Struct, kw_only=True):
    """One turn's run: status (`queued → running → completed | failed | …`), output, usage, error."""

    id: str
    session_id: str
    tenant: str = DEFAULT_TENANT
    agent: str
    model: str = ""  # the model reference that served the run ("openai:gpt-4o-mini", "demo")
    status: str = "queued"
    input: str = ""
    output: str | None = None
    deadline: float | None = None  # wall-clock epoch seconds
    attempt: int = 1
    usage: Usage = msgspec.field(default_factory=Usage)
    error: dict[str, Any] | None = None
    created_at: float = msgspec.field(default_factory=now)
    updated_at: float = msgspec.field(default_factory=now)
    # The instance that runs it, and until when (epoch seconds, on the store's clock where it
    # has one): past that, another instance may claim it (`RunStore.claim_run`).
    owner: str | None = None
    lease_expires_at: float | None = None
    # The run that called this one's agent as a tool (roost.tools.agent_tool), if any.
    parent_run_id: str | None = None

    def disown(self) -> None:
        """The run ended (or was given back): nobody holds it, nobody may take it over."""
        self.owner = None
        self.lease_expires_at = None

    def usage_data(self) -> dict[str, Any]:
        """The usage its end events carry."""
        return {"input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens, "cost": self.usage.cost}


def kept_lease(stored: RunRecord, written: RunRecord) -> float | None:
    """The lease a run write leaves: a write never shortens a lease its owner holds.

    A runtime writes a run record it read at claim time; `renew_ownership` has extended the
    stored lease since. Without this rule, that write would move the expiry back and another
    instance could claim a run whose owner is alive. Every backend applies it on upsert.
    """
    new = written.lease_expires_at
    old = stored.lease_expires_at
    if new is None or old is None or stored.owner != written.owner:
        return new
    return max(old, new)


class IdempotencyRecord(msgspec.Struct, kw_only=True):
    """What a client's idempotency key stands for: the request's fingerprint and the value
    stored for it (e.g. a run id), until `expires_at` (epoch seconds)."""

    fingerprint: str
    value: str
    created_at: float
    expires_at: float


class Page(msgspec.Struct, kw_only=True):
    """One page of a listing; `next_cursor` is None on the last page."""

    items: list[Any]
    next_cursor: str | None = None
