"""Roost's one exception tree.

    RoostError
    ├── UserError                    the caller's mistake; maps to 4xx
    │   ├── ConfigError              bad configuration (each problem carries its key path)
    │   ├── InvalidInput             bad request data (names the field)
    │   ├── UnsupportedMediaType     a body that is not application/json (415)
    │   ├── NotFound                 unknown agent, session or run
    │   │   ├── AgentNotFound
    │   │   ├── SessionNotFound
    │   │   ├── RunNotFound
    │   │   └── ArtifactNotFound
    │   ├── Conflict                 state does not allow it (409)
    │   │   └── SessionBusy          a run is active and the policy is `reject`
    │   └── PreconditionFailed       If-Match version mismatch (412)
    ├── Overloaded                   admission refused the work (503 / 429 with Retry-After)
    │   ├── ServerOverloaded         global limits full (503)
    │   └── TenantOverloaded         tenant quota exceeded (429)
    ├── Unavailable                  a dependency is unreachable (503)
    │   └── StoreUnavailable
    ├── StoreError                   a store contract failure
    │   ├── VersionConflict          compare-and-set lost: someone appended first
    │   └── SessionMoved             another writer appended to the session's log
    ├── RunFailure                   why a run ended badly; becomes `run.failed` with `type`
    │   ├── ModelError               provider failed (status, retryable)
    │   ├── ToolError                a tool raised or timed out (returned to the model)
    │   ├── MaxStepsExceeded
    │   ├── BudgetExceeded           a per-run budget (cost, tokens, tool calls, duration)
    │   ├── RunTimeout
    │   └── RunCancelled
    └── RunWaiting                   control flow, not an error: the run waits for a person
                                     (an approval, an `ask_user` answer); never escapes
                                     the engine

A dependency's exception never leaks out of Roost's API: providers and stores translate
what they catch into this tree. HTTP maps it to problem+json in one place
(`roost.server.problems`).
"""

from __future__ import annotations

from typing import Any


class RoostError(Exception):
    """Base of every error Roost raises on purpose."""

    status: int = 500
    type: str = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class UserError(RoostError):
    status = 400
    type = "invalid_request"


class ConfigError(UserError):
    type = "config_error"

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        # (dotted key path, what is wrong with it)
        self.problems = problems or []


class UnsupportedMediaType(UserError):
    status = 415
    type = "unsupported_media_type"


class InvalidInput(UserError):
    status = 422
    type = "invalid_input"

    def __init__(self, message: str, field: str | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.field = field


class NotFound(UserError):
    status = 404
    type = "not_found"


class AgentNotFound(NotFound):
    type = "agent_not_found"


class SessionNotFound(NotFound):
    type = "session_not_found"


class RunNotFound(NotFound):
    type = "run_not_found"


class ArtifactNotFound(NotFound):
    type = "artifact_not_found"


class Conflict(UserError):
    status = 409
    type = "conflict"


class SessionBusy(Conflict):
    type = "session_busy"


class PreconditionFailed(UserError):
    status = 412
    type = "precondition_failed"


class Overloaded(RoostError):
    status = 503
    type = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0, reason: str = "overloaded") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.reason = reason


class ServerOverloaded(Overloaded):
    type = "server_overloaded"


class TenantOverloaded(Overloaded):
    status = 429
    type = "tenant_overloaded"


class Unavailable(RoostError):
    status = 503
    type = "unavailable"


class StoreUnavailable(Unavailable):
    type = "store_unavailable"


class StoreError(RoostError):
    type = "store_error"


class VersionConflict(StoreError):
    """An append or patch lost its compare-and-set: the session moved on."""

    status = 409
    type = "version_conflict"

    def __init__(self, session_id: str, expected: int, actual: int | None) -> None:
        super().__init__(f"session {session_id}: expected version {expected}, found {actual}")
        self.session_id = session_id
        self.expected = expected
        self.actual = actual


class SessionMoved(StoreError):
    """The session's log moved on under a run (another writer appended): the run must not
    interleave with it."""

    type = "session_moved"


class RunFailure(RoostError):
    """Why a run ended without an answer. Never escapes the runtime."""

    type = "run_failure"


class ModelError(RunFailure):
    type = "model_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        provider: str | None = None,
        kind: str = "error",
        after_output: bool = False,
    ) -> None:
        super().__init__(message)
        # True when the failing call had already streamed tokens to the client: retrying
        # or falling back would show a second, different answer, so wrappers must not.
        self.after_output = after_output
        # What went wrong, for wrappers to decide on: "rate_limited", "overloaded" (5xx),
        # "timeout", "connection", "malformed", "context_overflow", "bad_request", "auth",
        # "circuit_open", "deadline", "error".
        self.kind = kind
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        self.provider = provider


class ToolError(RunFailure):
    type = "tool_error"


class MaxStepsExceeded(RunFailure):
    type = "max_steps_exceeded"


class BudgetExceeded(RunFailure):
    """A per-run budget ran out: the run ends with status `budget_exceeded`."""

    type = "budget_exceeded"


class RunWaiting(RoostError):
    """The run must wait for a person before the calls in `pending` (dicts naming each
    call, its tool, arguments and kind). Control flow inside the engine only."""

    type = "waiting"

    def __init__(self, pending: list[dict[str, Any]]) -> None:
        super().__init__(f"waiting for a person on {len(pending)} tool call(s)")
        self.pending = pending


class RunTimeout(RunFailure):
    # Raised to a caller only when the deadline passed before the run started (queued too
    # long): the server did not answer in time, it did not fail.
    status = 504
    type = "timed_out"


class RunCancelled(RunFailure):
    type = "cancelled"
