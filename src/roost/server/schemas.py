"""Request and response bodies at the HTTP boundary (Pydantic: validation and OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from roost.engine.run_budget import RunBudget


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SessionCreate(_Body):
    user_id: str | None = Field(None, max_length=256)
    state: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)


class SessionPatch(_Body):
    """A shallow state delta: keys set to null are removed."""

    state: dict[str, Any]


class TurnCreate(_Body):
    input: str = Field(..., min_length=1, description="the user's message")
    stream: bool = False
    # At least a millisecond: a smaller one cannot be met (a schema fuzzer's 1e-300 was a 500).
    timeout_s: float | None = Field(None, ge=0.001, le=86_400,
                                    description="deadline of this turn in seconds")
    priority: Literal["interactive", "background"] = "interactive"
    background: bool = Field(False, description="queue the run and answer 202 at once "
                             "(also `Prefer: respond-async`); see GET /v1/runs/{id}")
    run_at: AwareDatetime | None = Field(None, description="RFC 3339 time to start the run "
                                         "(implies background; in the past means now)")
    # Per-run budgets (capped by the agent's limits); past one the run ends budget_exceeded.
    max_cost: float | None = Field(None, ge=0, description="the most the run may cost")
    max_tokens: int | None = Field(None, ge=0, description="model tokens (in + out) of the run")
    max_tool_calls: int | None = Field(None, ge=0, description="tool calls the run may make")
    max_duration: float | None = Field(None, gt=0, le=30 * 86_400,
                                       description="seconds from submission to the end")

    def budget(self) -> RunBudget | None:
        return RunBudget(max_cost=self.max_cost, max_tokens=self.max_tokens,
                         max_tool_calls=self.max_tool_calls,
                         max_duration_s=self.max_duration) or None

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


class DecisionIn(_Body):
    call_id: str | None = Field(None, max_length=256, description=(
        "the waiting call (from approval.required); optional when one call waits"))
    decision: Literal["approve", "reject", "answer"] | None = Field(
        None, description="approve (optionally with edited arguments), reject (with a "
        "reason the model reads), or answer an ask_user question")
    reason: str | None = Field(None, max_length=10_000)
    arguments: dict[str, Any] | None = Field(
        None, description="approve with these arguments instead (validated by the tool)")
    answer: str | None = Field(None, max_length=100_000, description=(
        "an ask_user answer (`decision` may then be omitted)"))


class ApprovalCreate(DecisionIn):
    """One decision (its fields at the top level) or several (`decisions`)."""

    decisions: list[DecisionIn] | None = Field(None, max_length=128)


class UsageOut(BaseModel):
    input_tokens: int
    output_tokens: int
    cost: float


class EventOut(BaseModel):
    seq: int
    type: str
    run_id: str | None
    data: dict[str, Any]
    ts: float


class EventPage(BaseModel):
    """A page of a session's event log; `next_after` is the `after` of the next page, or null
    on the last one."""

    items: list[EventOut]
    next_after: int | None


class ProblemError(BaseModel):
    field: str | None = None
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem: every error response of the API, as `application/problem+json`."""

    type: str = Field(..., examples=["urn:roost:problem:session_not_found"])
    title: str = Field(..., examples=["Not Found"])
    status: int = Field(..., examples=[404])
    detail: str = Field(..., examples=["no session 'ses_0123'"])
    field: str | None = Field(None, description="the offending field, for invalid input")
    errors: list[ProblemError] | None = Field(None, description="each invalid field")


class SessionOut(BaseModel):
    id: str
    tenant: str
    agent: str
    user_id: str | None
    state: dict[str, Any]
    metadata: dict[str, Any]
    version: int
    last_seq: int
    created_at: float
    updated_at: float
    expires_at: float | None


class SessionPage(BaseModel):
    items: list[SessionOut]
    next_cursor: str | None


class RunOut(BaseModel):
    id: str
    session_id: str
    tenant: str
    agent: str
    status: str
    input: str
    output: str | None
    deadline: float | None
    attempt: int
    usage: UsageOut
    error: dict[str, Any] | None
    created_at: float
    updated_at: float
    parent_run_id: str | None = None  # set on a child run (an agent called as a tool)


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None


class TurnOut(BaseModel):
    run_id: str
    status: str
    output: str | None
    usage: UsageOut
    error: dict[str, Any] | None
    events: list[EventOut]


class ToolOut(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]


class AgentOut(BaseModel):
    name: str
    description: str
    model: str
    state: str
    tools: list[ToolOut]
    limits: dict[str, Any]
    policies: dict[str, Any]
