"""Pattern matching for the guardrails, on RE2 (`google-re2`).

Why not `re`: guardrails run on every turn over text written by strangers, with patterns
written in a config file. RE2 matches in time linear in the text whatever the pattern (no
backtracking: `(a+)+$` cannot stall a turn), and it matches an alternation of many patterns
in one pass — 20 deny patterns over a 300-character input cost ~2 µs, where `re` takes
~90 µs (bench/bench_guardrails.py). The price is RE2's syntax: no lookarounds and no
backreferences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import re2


def options(*, ignore_case: bool = False) -> Any:
    """RE2 options (inline flags such as `(?m)` work in patterns as well)."""
    opts = re2.Options()
    opts.case_sensitive = not ignore_case
    opts.log_errors = False  # a bad pattern is a ConfigError, not a line on stderr
    return opts


def compile_pattern(pattern: str, opts: Any, what: str) -> Any:
    """The compiled pattern, or ValueError naming `what` and RE2's complaint."""
    try:
        return re2.compile(pattern, opts)
    except re2.error as exc:
        raise ValueError(f"{what} is not a valid RE2 regular expression ({exc}); RE2 has "
                         "no lookarounds or backreferences") from None


def compile_set(patterns: Sequence[str], opts: Any) -> Any:
    """A set of patterns matched in one pass: `.Match(text)` → indices of those that match."""
    found = re2.Set.SearchSet(opts)
    for pattern in patterns:
        found.Add(pattern)
    found.Compile()
    return found
