"""Cost of the built-in input guardrails on a typical turn input.

    .venv/bin/python bench/bench_guardrails.py [-n 20000]

Prints CPU microseconds per input (process time, best of 5 rounds: a noisy shared machine
stays out) for each built-in alone and for all four input-stage built-ins together —
`MaxInputTokens(4000)`, a `DenyList` of 20 patterns, `PII(mode="redact")` — applied through
`Guardrails.apply` exactly as `Turns.submit` does (one coroutine, awaited), on:

- typical: a ~300-character support question without personal data (the common turn);
- with PII: the same question carrying an e-mail, a phone number, a card and an IBAN
  (every validator runs and the text is rewritten);
- long: a 4,000-character input (a pasted document).

The issue's budget: at most 50 µs per typical turn input for the built-ins together.
`PromptInjection` runs on untrusted tool results, not on input; its row is a 2 KB result.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from roost.guardrails import (
    PII,
    DenyList,
    GuardrailContext,
    Guardrails,
    MaxInputTokens,
    PromptInjection,
)

TYPICAL = ("Hi, I ordered the blue rain jacket last week (order 48213) and it has not "
           "arrived yet. The tracking page says it left the warehouse on Monday but nothing "
           "since. Could you check where it is and whether I can still change the delivery "
           "address to my office? Also, do you ship to Norway? Thanks a lot, Maria")
WITH_PII = (TYPICAL + " You can reach me at maria.k@example.com or +47 22 33 44 55; "
            "refund to card 4111 1111 1111 1111 or IBAN NO93 8601 1117 947.")
LONG = (TYPICAL + " ") * 14
TOOL_RESULT = ("<html><body><h1>Opening hours</h1><p>Mon-Fri 9-17, Sat 10-14.</p>"
               + "<p>Our store is in the city centre, next to the station.</p>" * 30
               + "</body></html>")
DENY = [rf"\bforbidden{i}\b" for i in range(18)] + [r"\bproject\s+falcon\b",
                                                   r"internal use only"]


def per_call_us(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - start) / n)
    return best * 1e6


def pipeline_us(guardrails: Guardrails, text: str, n: int) -> float:
    ctx = GuardrailContext("input", "support", "acme", "ses_1")

    async def go() -> float:
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            for _ in range(n):
                await guardrails.apply("input", text, ctx)
            best = min(best, (time.process_time() - start) / n)
        return best * 1e6

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=20000)
    n = parser.parse_args().n
    ctx = GuardrailContext("input", "support", "acme", "ses_1")
    tokens, deny, pii = MaxInputTokens(4000), DenyList(DENY), PII()
    everything = Guardrails([tokens, deny, pii])
    print(f"{'input':<10}{'chars':>7}{'tokens':>9}{'deny(20)':>10}{'pii':>9}{'all 3':>9}  µs")
    for label, text in (("typical", TYPICAL), ("with PII", WITH_PII), ("long", LONG)):
        row = [per_call_us(lambda g=g, t=text: g.check(t, ctx), n) for g in (tokens, deny, pii)]
        row.append(pipeline_us(everything, text, n))
        print(f"{label:<10}{len(text):>7}" + "".join(f"{v:>9.1f}" for v in row[:1])
              + f"{row[1]:>10.1f}" + "".join(f"{v:>9.1f}" for v in row[2:]))
    injection = PromptInjection(tools=["*"])
    tool_ctx = GuardrailContext("tool_result", "support", "acme", "ses_1", tool="fetch")
    cost = per_call_us(lambda: injection.check(TOOL_RESULT, tool_ctx), n)
    print(f"prompt_injection on a {len(TOOL_RESULT)}-character tool result: {cost:.1f} µs")


if __name__ == "__main__":
    main()
