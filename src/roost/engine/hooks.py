"""Hooks: how observability watches a run without the engine importing it.

The engine calls these at each boundary; the default does nothing and costs a method call.
`roost.observability` provides an implementation (metrics + traces + logs) that the runtime
injects. Each `*_start` returns an opaque token handed back to the matching `*_end`, so an
implementation can keep a span, a start time or a context token without shared state.

Tool calls run in their own tasks, so a token may carry a contextvars token safely.
"""

from __future__ import annotations

from typing import Any

from roost.models.base import ModelRequest, ModelResponse
from roost.sessions.records import RunRecord


class EngineHooks:
    """No-op hooks. Subclass and override what you observe."""

    def run_start(self, run: RunRecord, *, model: str) -> Any:
        return None

    def run_end(self, token: Any, run: RunRecord) -> None:
        """`run.status` is terminal; `run.usage` holds the totals; `run.error` the failure."""

    def model_start(self, run: RunRecord, model: str, request: ModelRequest) -> Any:
        """May add `traceparent` to `request.metadata`: providers send it as a header."""
        return None

    def model_first_token(self, token: Any) -> None:
        """The first streamed delta arrived (time to first token)."""

    def model_end(
        self, token: Any, response: ModelResponse | None, error: BaseException | None
    ) -> None: ...

    def tool_start(self, run: RunRecord, tool: str, call_id: str) -> Any:
        return None

    def tool_end(self, token: Any, outcome: str, error: BaseException | None) -> None:
        """`outcome`: "ok", "error", "timeout", "cancelled", "invalid_arguments"."""

    def guardrail(self, agent: str, guardrail: str, stage: str, action: str) -> None:
        """A guardrail decided something other than pass (`roost.guardrails`): `stage` is
        input, output or tool_result; `action` transform, flag or reject."""


NO_HOOKS = EngineHooks()
