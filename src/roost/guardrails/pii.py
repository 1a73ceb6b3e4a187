"""`PII`: find e-mail addresses, phone numbers, payment card numbers and IBANs, and redact
them (`[EMAIL]`, `[PHONE]`, `[CARD]`, `[IBAN]`) or refuse the text.

A digit run is a card number only when its 13–19 digits pass the Luhn check, and an IBAN
only when it passes ISO 13616's mod-97 check (and has its country's length), so order
numbers, timestamps and invoice ids are left alone. Phone numbers are runs of 8–15 digits
with the usual separators (`+44 20 7946 0958`, `(415) 555-2671`, `0612345678`).

Most turns carry none of these: an RE2 prefilter (`matching.py`, ~1 µs on a typical turn)
looks for what every candidate has — an `@` between word characters, eight digits with at
most separators between them, or an IBAN's country and check digits — and only a text where
it finds one gets the full scan (one `re` alternation with lookarounds, which RE2 lacks; the
validations run only on its candidates).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from roost.guardrails.base import PASS, GuardrailContext, Stage, Verdict
from roost.guardrails.matching import compile_pattern, options

PIIKind = Literal["email", "phone", "card", "iban"]
PII_KINDS: tuple[PIIKind, ...] = ("email", "phone", "card", "iban")
PIIMode = Literal["redact", "reject"]

# IBAN lengths by country (ISO 13616 registry); a country not listed is accepted at 15–34.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27,
    "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27,
    "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24,
    "SI": 19, "SK": 24, "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}

_PATTERN = re.compile(
    r"(?P<iban>\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b)"
    r"|(?P<email>\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*"
    r"\.[A-Za-z]{2,24}\b)"
    r"|(?P<card>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))"
    r"|(?P<phone>(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,5}"
    r"(?!\w))")
_HAS_CANDIDATE = compile_pattern(
    r"\w@\w|\d(?:[ ().+-]{0,3}\d){7}|\b[A-Z]{2}\d{2}[ ]?[A-Z0-9]{4}", options(),
    "pii prefilter")
_NON_DIGITS = re.compile(r"\D")


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a string of digits (payment card numbers)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: the country's length, then mod 97 of the rearranged number is 1."""
    iban = iban.replace(" ", "").upper()
    if not 15 <= len(iban) <= 34 or not iban[:2].isalpha() or not iban[2:4].isdigit():
        return False
    expected = _IBAN_LENGTHS.get(iban[:2])
    if expected is not None and len(iban) != expected:
        return False
    if not iban.isalnum() or not iban.isascii():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_length(text: str) -> int:
    """How much of the match is an IBAN (0: none): all of it, or all but its last
    space-separated groups (the pattern is greedy: "DE89 3704 0044 0532 0130 00 AB" takes
    the next word along)."""
    while len(text) >= 15:
        if iban_valid(text):
            return len(text)
        head, space, _ = text.rpartition(" ")
        if not space:
            return 0
        text = head
    return 0


class PII:
    """`PII(mode="redact")` on input and output; `PII(kinds=["card", "iban"], mode="reject")`."""

    def __init__(self, *, mode: PIIMode = "redact", kinds: Iterable[PIIKind] = PII_KINDS,
                 stages: Iterable[Stage] = ("input", "output"), name: str = "pii") -> None:
        self.kinds = frozenset(kinds)
        unknown = self.kinds - set(PII_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"{name}: kinds must be some of {', '.join(PII_KINDS)}")
        if mode not in ("redact", "reject"):
            raise ValueError(f"{name}: mode must be 'redact' or 'reject'")
        self.mode = mode
        self.stages = frozenset(stages)
        self.name = name

    def check(self, text: str, ctx: GuardrailContext) -> Verdict:
        if _HAS_CANDIDATE.search(text) is None:
            return PASS
        found: dict[str, int] = {}

        def replace(match: re.Match[str]) -> str:
            text = match[0]
            if match.lastgroup == "iban":
                length = _iban_length(text) if "iban" in self.kinds else 0
                if not length:
                    return text
                found["iban"] = found.get("iban", 0) + 1
                return "[IBAN]" + text[length:]
            kind = self._kind(match)
            if kind is None:
                return text
            found[kind] = found.get(kind, 0) + 1
            return f"[{kind.upper()}]"

        redacted = _PATTERN.sub(replace, text)
        if not found:
            return PASS
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(found.items()))
        if self.mode == "reject":
            return Verdict.reject(f"the {ctx.stage} contains personal data ({what})")
        return Verdict.transform(redacted, f"redacted {what}")

    def _kind(self, match: re.Match[str]) -> PIIKind | None:
        group = match.lastgroup
        if group == "email":
            return "email" if "email" in self.kinds else None
        text = match[0]
        digits = _NON_DIGITS.sub("", text)
        if group == "card" and "card" in self.kinds and luhn_valid(digits):
            return "card"
        # A digit run that is not a card (or a card not asked for) may still be a phone:
        # 10-15 digits, or 8 and more after a country code (a date has 8, an invoice 6).
        if "phone" in self.kinds and (10 <= len(digits) <= 15
                                      or (text[0] in "+(" and 8 <= len(digits) <= 15)):
            return "phone"
        return None
