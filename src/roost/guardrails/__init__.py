"""Guardrails: checks on a turn's input, its final output and untrusted tool results, per
agent (`Agent(guardrails=[...])` or `[[agents.NAME.guardrails]]` in roost.toml).

    from roost.guardrails import PII, DenyList, MaxInputTokens, PromptInjection

    support = Agent(name="support", guardrails=[
        MaxInputTokens(4000),
        DenyList([r"\\bproject falcon\\b"]),
        PII(mode="redact"),
        PromptInjection(mode="flag", tools=["fetch_*"]),
    ])

A rejected input answers 422 `input_rejected` and nothing is stored; a rejected output ends
the run `failed` with `output_rejected` (the answer is neither stored nor sent; the session
takes the next turn as usual); a rejected tool result is withheld from the model.
See `base.py` for the protocol and docs/security.md for the details.
"""

from roost.guardrails.base import (
    PASS,
    Decision,
    Guardrail,
    GuardrailContext,
    Stage,
    Verdict,
)
from roost.guardrails.config import guardrail_from_config
from roost.guardrails.denylist import DenyList
from roost.guardrails.injection import PromptInjection
from roost.guardrails.pii import PII, iban_valid, luhn_valid
from roost.guardrails.pipeline import Guardrails, Rejected
from roost.guardrails.tokens import MaxInputTokens

__all__ = [
    "PASS",
    "PII",
    "Decision",
    "DenyList",
    "Guardrail",
    "GuardrailContext",
    "Guardrails",
    "MaxInputTokens",
    "PromptInjection",
    "Rejected",
    "Stage",
    "Verdict",
    "guardrail_from_config",
    "iban_valid",
    "luhn_valid",
]
