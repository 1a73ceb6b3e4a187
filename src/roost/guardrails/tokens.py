"""`MaxInputTokens`: refuse a turn whose input is longer than `limit` tokens.

Tokens are estimated the way the context window counts them (`roost.engine.budget`), so the
limit means the same thing as `policies.history_token_budget`: a length check, no tokenizer.
"""

from __future__ import annotations

from roost.engine.budget import HEURISTIC, TokenCounter
from roost.guardrails.base import PASS, GuardrailContext, Stage, Verdict


class MaxInputTokens:
    """`MaxInputTokens(4000)`: a turn over 4,000 (estimated) tokens → 422 `input_rejected`."""

    stages: frozenset[Stage] = frozenset({"input"})

    def __init__(self, limit: int, *, name: str = "max_input_tokens",
                 counter: TokenCounter = HEURISTIC) -> None:
        if limit < 1:
            raise ValueError("max_input_tokens: limit must be >= 1")
        self.limit = limit
        self.name = name
        self.counter = counter

    def check(self, text: str, ctx: GuardrailContext) -> Verdict:
        tokens = self.counter.count_text(text)
        if tokens > self.limit:
            return Verdict.reject(f"the input is about {tokens} tokens; at most "
                                  f"{self.limit} are accepted")
        return PASS
