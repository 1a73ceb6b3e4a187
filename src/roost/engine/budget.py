"""Token budgets: estimate what a context costs, and keep the newest turns that fit.

    history = fit_to_budget(messages, 8000, reserve_tokens=1000)

`fit_to_budget` keeps the leading system messages (the agent's instructions, a compaction
summary) and then the newest *whole turns* that fit: a turn starts at a user message and runs
to the next one, so a tool result is never sent without the assistant message that called it.

Counting is a heuristic by default (`HeuristicCounter`: about 4 ASCII characters per token,
non-ASCII text by its UTF-8 size), cheap enough to run before every model call — a 40-message
history costs a few microseconds. Anything with `count_text(text) -> int` can replace it, e.g. a
tiktoken encoder: `fit_to_budget(..., counter=TiktokenCounter())`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from roost.models.base import Message, ToolSpec

__all__ = [
    "HEURISTIC",
    "MESSAGE_OVERHEAD_TOKENS",
    "HeuristicCounter",
    "TokenCounter",
    "clip_to_tokens",
    "count_tokens",
    "fit_to_budget",
    "message_tokens",
    "tool_spec_tokens",
]

# Chat formats wrap every message in a few tokens of framing (role, separators): OpenAI's
# cookbook counts 3 per message plus 1 for a name. 4 keeps the estimate on the safe side.
MESSAGE_OVERHEAD_TOKENS = 4
# A tool call adds its id, its name and JSON framing around the arguments.
TOOL_CALL_OVERHEAD_TOKENS = 8


@runtime_checkable
class TokenCounter(Protocol):
    """Counts the tokens of a text. Message framing is added by `message_tokens`."""

    def count_text(self, text: str) -> int: ...


class HeuristicCounter:
    """~`chars_per_token` ASCII characters per token; non-ASCII text by UTF-8 bytes / 3.

    Byte-based counting keeps non-Latin scripts honest: Cyrillic (2 bytes a character) comes
    out near 0.7 tokens a character and CJK (3 bytes) near 1, close to what BPE tokenizers
    produce, where counting characters / 4 would undercount CJK four times over.

        >>> HeuristicCounter().count_text("hello world!")
        3
    """

    __slots__ = ("_whole", "chars_per_token")

    def __init__(self, chars_per_token: float = 4.0) -> None:
        if chars_per_token <= 0:
            raise ValueError("chars_per_token must be > 0")
        self.chars_per_token = chars_per_token
        # Integer ceiling division when the ratio allows: this runs for every message of
        # every model call.
        self._whole = int(chars_per_token) if float(chars_per_token).is_integer() else 0

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        if text.isascii():  # the common case: one C-level scan, no allocation
            if self._whole:
                return -(-len(text) // self._whole)
            return math.ceil(len(text) / self.chars_per_token)
        # "surrogatepass": a lone surrogate (from JSON "\ud800") must be countable, not raise.
        utf8 = len(text.encode("utf-8", "surrogatepass"))
        ascii_chars = len(text.encode("ascii", "ignore"))
        return math.ceil(ascii_chars / self.chars_per_token + (utf8 - ascii_chars) / 3)


HEURISTIC: TokenCounter = HeuristicCounter()


def message_tokens(message: Message, counter: TokenCounter = HEURISTIC) -> int:
    """The tokens one message costs in a prompt, framing included."""
    tokens = MESSAGE_OVERHEAD_TOKENS
    if message.content:
        tokens += counter.count_text(message.content)
    if message.tool_calls:
        for call in message.tool_calls:
            tokens += (TOOL_CALL_OVERHEAD_TOKENS + counter.count_text(call.name)
                       + counter.count_text(call.arguments))
    if message.name:
        tokens += counter.count_text(message.name)
    return tokens


def count_tokens(messages: Iterable[Message], counter: TokenCounter = HEURISTIC) -> int:
    """The tokens a list of messages costs."""
    return sum(message_tokens(m, counter) for m in messages)


def tool_spec_tokens(specs: Sequence[ToolSpec], counter: TokenCounter = HEURISTIC) -> int:
    """What the tool definitions cost: a part of the `reserve_tokens` of a model call."""
    if not specs:
        return 0
    return counter.count_text(msgspec.json.encode(list(specs)).decode())


def clip_to_tokens(text: str, max_tokens: int, counter: TokenCounter = HEURISTIC) -> str:
    """`text` cut (at a character boundary) to at most `max_tokens`, marked with "…"."""
    if max_tokens <= 0:
        return ""
    tokens = counter.count_text(text)
    if tokens <= max_tokens:
        return text
    # Proportional first guess, then shrink: converges in a few steps for any counter.
    cut = max(1, len(text) * max_tokens // tokens)
    while cut > 1 and counter.count_text(text[:cut]) + 1 > max_tokens:
        cut = cut * 9 // 10
    return text[:cut] + "…"


def fit_to_budget(
    messages: Sequence[Message],
    budget_tokens: int,
    *,
    reserve_tokens: int = 0,
    max_messages: int | None = None,
    min_turns: int = 0,
    counter: TokenCounter = HEURISTIC,
) -> list[Message]:
    """The leading system messages plus the newest whole turns within the budget.

    - Leading system messages (instructions, a compaction summary) are always kept; they
      count against the budget.
    - After them, the first kept message is always a user message: whole turns only, so a
      tool result never appears without its call. Messages before the first user message
      are dropped.
    - A turn is kept when everything from it to the end fits in
      `budget_tokens - reserve_tokens` (`reserve_tokens`: room left for tool definitions and
      the answer) and, with `max_messages`, within that many non-system messages.
    - The newest `min_turns` turns are kept even over the budget (`min_turns=1` inside a run:
      never drop the turn being answered).

    Returns a new list; `messages` is not modified.

        >>> kept = fit_to_budget(history, 8000, reserve_tokens=1000, max_messages=40)
    """
    total = len(messages)
    prefix_end = 0
    while prefix_end < total and messages[prefix_end].role == "system":
        prefix_end += 1
    available = (budget_tokens - reserve_tokens
                 - sum(message_tokens(m, counter) for m in messages[:prefix_end]))
    limit = total if max_messages is None else max_messages
    start = total  # nothing after the prefix, until a turn qualifies
    used = 0
    turns = 0
    for index in range(total - 1, prefix_end - 1, -1):
        message = messages[index]
        used += message_tokens(message, counter)
        if message.role == "user":
            turns += 1
            if turns <= min_turns or (used <= available and total - index <= limit):
                start = index
                continue
            break
        if turns >= min_turns and (used > available or total - index > limit):
            break  # no older turn can fit either: the cost only grows going back
    return [*messages[:prefix_end], *messages[start:]]
