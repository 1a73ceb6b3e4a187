"""The `Guardrail` protocol: a check on text at one of three places of a turn.

    input        the user's turn, before the model sees it (and before anything is stored)
    output       a run's final answer, before it is persisted and sent
    tool_result  a tool's result, before the model reads it (for tools marked untrusted)

A guardrail answers with a `Verdict`:

    PASS                                the text goes on as it is
    Verdict.transform(text, reason)     the text goes on changed (redaction)
    Verdict.flag(reason, text=None)     goes on (maybe changed), and the decision is recorded
    Verdict.reject(reason)              stops it: 422 `input_rejected`, `run.failed` with
                                        `output_rejected`, or a withheld tool result

    class NoShouting:
        name = "no_shouting"
        stages = frozenset({"input"})

        def check(self, text: str, ctx: GuardrailContext) -> Verdict:
            return Verdict.reject("please do not shout") if text.isupper() else PASS

`check` may also be a coroutine function (a moderation model, a remote classifier): the
pipeline awaits what it returns. Built-ins are synchronous and cost microseconds.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

Stage = Literal["input", "output", "tool_result"]
STAGES: tuple[Stage, ...] = ("input", "output", "tool_result")
Action = Literal["pass", "transform", "flag", "reject"]


@dataclass(frozen=True, slots=True)
class GuardrailContext:
    """Where a check happens. `tool` and `untrusted` are set for tool results only."""

    stage: Stage
    agent: str
    tenant: str
    session_id: str
    tool: str | None = None
    untrusted: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    text: str | None = None  # the replacement text (transform, flag)
    reason: str = ""

    @staticmethod
    def transform(text: str, reason: str) -> Verdict:
        return Verdict("transform", text, reason)

    @staticmethod
    def flag(reason: str, text: str | None = None) -> Verdict:
        return Verdict("flag", text, reason)

    @staticmethod
    def reject(reason: str) -> Verdict:
        return Verdict("reject", None, reason)


PASS = Verdict("pass")


@runtime_checkable
class Guardrail(Protocol):
    """A named check on the stages it lists."""

    name: str
    stages: frozenset[Stage]

    def check(self, text: str, ctx: GuardrailContext) -> Verdict | Awaitable[Verdict]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict other than pass, as events, logs and metrics record it."""

    guardrail: str
    stage: Stage
    action: Action
    reason: str

    def data(self) -> dict[str, str]:
        return {"guardrail": self.guardrail, "stage": self.stage, "action": self.action,
                "reason": self.reason}
