"""`DenyList`: regular expressions a text must not match.

    DenyList([r"\\bproject\\s+falcon\\b", r"(?i)internal use only"], mode="reject")

The patterns are compiled once into one alternation, so a check is a single scan of the
text whatever their number. `mode = "redact"` replaces each match with `replacement`
instead of refusing the text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from roost.guardrails.base import PASS, GuardrailContext, Stage, Verdict

DenyMode = Literal["reject", "redact"]


class DenyList:
    def __init__(self, patterns: Iterable[str], *, mode: DenyMode = "reject",
                 stages: Iterable[Stage] = ("input", "output"), ignore_case: bool = True,
                 replacement: str = "[REDACTED]", name: str = "deny_list") -> None:
        self.patterns = list(patterns)
        if not self.patterns:
            raise ValueError(f"{name}: give at least one pattern")
        compiled = []
        for index, pattern in enumerate(self.patterns):
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise ValueError(f"{name}: patterns[{index}] is not a valid regular "
                                 f"expression: {exc}") from None
        if mode not in ("reject", "redact"):
            raise ValueError(f"{name}: mode must be 'reject' or 'redact'")
        self.mode = mode
        self.stages = frozenset(stages)
        self.replacement = replacement
        self.name = name
        # One scan: the alternation of every pattern, each in its own group so the match
        # tells which one it was (named in the rejection).
        self._any = re.compile("|".join(f"(?:{p.pattern})" for p in compiled),
                               re.IGNORECASE if ignore_case else 0)
        self._each = [re.compile(p.pattern, self._any.flags) for p in compiled]

    def check(self, text: str, ctx: GuardrailContext) -> Verdict:
        found = self._any.search(text)
        if found is None:
            return PASS
        index = next((i for i, p in enumerate(self._each) if p.match(text, found.start())), 0)
        if self.mode == "reject":
            return Verdict.reject(f"the {ctx.stage} matches denied pattern {index}")
        redacted, count = self._any.subn(self.replacement, text)
        return Verdict.transform(redacted, f"{count} denied match(es) redacted")
