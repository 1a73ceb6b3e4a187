"""`Guardrails`: an agent's guardrails, sorted by stage once, applied in order.

    guardrails = Guardrails([MaxInputTokens(4000), PII(mode="redact")])
    text, decisions = await guardrails.apply("input", text, ctx)   # or raises Rejected

Each guardrail sees the text the previous one left. The first rejection stops the stage
(`Rejected` names the guardrail and its reason); transforms and flags are collected as
`Decision`s for the run's events, the log and the metrics. An agent without guardrails has
no `Guardrails` at all (`HostedAgent.guardrails is None`): the turn path pays one attribute
test.

A guardrail that raises is a rejection (fail closed: the check could not say the text is
safe), logged with its traceback.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

from roost.guardrails.base import Decision, Guardrail, GuardrailContext, Stage, Verdict

log = logging.getLogger("roost.guardrails")


class Rejected(Exception):
    """A guardrail refused the text of `stage`."""

    def __init__(self, guardrail: str, stage: Stage, reason: str) -> None:
        super().__init__(f"guardrail {guardrail} rejected the {stage}: {reason}")
        self.guardrail = guardrail
        self.stage = stage
        self.reason = reason


class Guardrails:
    __slots__ = ("all", "input", "output", "tool_result")

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        for g in guardrails:
            if not isinstance(g, Guardrail):
                raise TypeError(f"not a guardrail (needs name, stages and check): {g!r}")
        self.all = tuple(guardrails)
        self.input = tuple(g for g in guardrails if "input" in g.stages)
        self.output = tuple(g for g in guardrails if "output" in g.stages)
        self.tool_result = tuple(g for g in guardrails if "tool_result" in g.stages)

    @classmethod
    def of(cls, guardrails: Sequence[Guardrail]) -> Guardrails | None:
        """None for no guardrails: the zero-cost path."""
        return cls(guardrails) if guardrails else None

    async def apply(self, stage: Stage, text: str, ctx: GuardrailContext
                    ) -> tuple[str, list[Decision]]:
        """The text after every guardrail of `stage`, and the decisions that were not
        `pass`; raises `Rejected` at the first rejection."""
        decisions: list[Decision] = []
        for guardrail in getattr(self, stage):
            try:
                verdict = guardrail.check(text, ctx)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if not isinstance(verdict, Verdict):
                    raise TypeError(f"returned {verdict!r}, not a Verdict")
            except Exception as exc:
                log.exception("guardrail %s failed on a %s", guardrail.name, stage)
                raise Rejected(guardrail.name, stage,
                               f"the check failed ({type(exc).__name__})") from exc
            if verdict.action == "pass":
                continue
            if verdict.action == "reject":
                raise Rejected(guardrail.name, stage, verdict.reason)
            if verdict.text is not None:
                text = verdict.text
            decisions.append(Decision(guardrail.name, stage, verdict.action, verdict.reason))
        return text, decisions
