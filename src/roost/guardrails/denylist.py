"""`DenyList`: regular expressions a text must not match.

    DenyList([r"\\bproject\\s+falcon\\b", r"internal use only"], mode="reject")

Patterns are RE2 syntax (`matching.py`: linear time, no lookarounds or backreferences),
matched all at once in one pass whatever their number. `mode = "redact"` replaces each
match with `replacement` instead of refusing the text. Case is ignored unless
`ignore_case = false`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from roost.guardrails.base import PASS, GuardrailContext, Stage, Verdict
from roost.guardrails.matching import compile_pattern, compile_set, options

DenyMode = Literal["reject", "redact"]


class DenyList:
    def __init__(self, patterns: Iterable[str], *, mode: DenyMode = "reject",
                 stages: Iterable[Stage] = ("input", "output"), ignore_case: bool = True,
                 replacement: str = "[REDACTED]", name: str = "deny_list") -> None:
        self.patterns = list(patterns)
        if not self.patterns:
            raise ValueError(f"{name}: give at least one pattern")
        if mode not in ("reject", "redact"):
            raise ValueError(f"{name}: mode must be 'reject' or 'redact'")
        opts = options(ignore_case=ignore_case)
        for index, pattern in enumerate(self.patterns):
            compile_pattern(pattern, opts, f"{name}: patterns[{index}]")
        self.mode = mode
        self.stages = frozenset(stages)
        self.replacement = replacement
        self.name = name
        self._set = compile_set(self.patterns, opts)  # which patterns match, one pass
        self._any = compile_pattern("|".join(f"(?:{p})" for p in self.patterns), opts,
                                    f"{name}: patterns")

    def check(self, text: str, ctx: GuardrailContext) -> Verdict:
        found = self._set.Match(text)
        if not found:
            return PASS
        if self.mode == "reject":
            return Verdict.reject(f"the {ctx.stage} matches denied pattern {min(found)}")
        redacted, count = self._any.subn(self.replacement, text)
        return Verdict.transform(redacted, f"{count} denied match(es) redacted")
