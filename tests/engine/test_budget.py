from __future__ import annotations

import pytest

from roost.engine.budget import (
    MESSAGE_OVERHEAD_TOKENS,
    HeuristicCounter,
    TokenCounter,
    clip_to_tokens,
    count_tokens,
    fit_to_budget,
    message_tokens,
    tool_spec_tokens,
)
from roost.models.base import Message, ToolCall, ToolSpec


def user(text: str) -> Message:
    return Message(role="user", content=text)


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def calling(call_id: str, name: str = "lookup") -> Message:
    return Message(role="assistant", tool_calls=[ToolCall(id=call_id, name=name, arguments="{}")])


def result(call_id: str, text: str, name: str = "lookup") -> Message:
    return Message(role="tool", content=text, tool_call_id=call_id, name=name)


SUMMARY = Message(role="system", content="Summary of the earlier conversation: they met.")


def turns(n: int, size: int = 40) -> list[Message]:
    """n plain turns, each a user and an assistant message of `size` ASCII chars."""
    out: list[Message] = []
    for i in range(n):
        out += [user(f"{i}".ljust(size, "u")), assistant(f"{i}".ljust(size, "a"))]
    return out


# -- counting -------------------------------------------------------------------------------
def test_heuristic_counts_ascii_by_four_chars() -> None:
    counter = HeuristicCounter()
    assert counter.count_text("") == 0
    assert counter.count_text("abc") == 1
    assert counter.count_text("abcd") == 1
    assert counter.count_text("abcde") == 2
    assert counter.count_text("x" * 4000) == 1000


def test_heuristic_counts_unicode_by_utf8_size() -> None:
    counter = HeuristicCounter()
    # CJK: 3 bytes a character, ~1 token each (a char count / 4 would say 3).
    assert counter.count_text("你好世界你好世界你好世界") == 12
    # Cyrillic: 2 bytes a character.
    assert counter.count_text("приветприве") == 8  # 22 bytes / 3
    # Mixed: ASCII at 4 chars a token, the rest by bytes.
    assert counter.count_text("abcd é") == 2  # 5 ASCII / 4 + 2 bytes / 3 = 1.92
    # Emoji (4 bytes) and a lone surrogate (from JSON "\ud800") count without raising.
    assert counter.count_text("🙂🙂🙂") == 4
    assert counter.count_text("a\ud800b") >= 1


def test_message_tokens_include_framing_tool_calls_and_name() -> None:
    assert message_tokens(Message(role="assistant")) == MESSAGE_OVERHEAD_TOKENS
    plain = message_tokens(user("x" * 40))
    assert plain == MESSAGE_OVERHEAD_TOKENS + 10
    call = Message(role="assistant", tool_calls=[ToolCall(id="c1", name="lookup",
                                                          arguments='{"key": "' + "k" * 80 + '"}')])
    assert message_tokens(call) > MESSAGE_OVERHEAD_TOKENS + 20
    assert count_tokens([user("x" * 40)] * 3) == 3 * plain


def test_a_pluggable_counter_is_used_everywhere() -> None:
    class Words:
        def count_text(self, text: str) -> int:
            return len(text.split())

    words = Words()
    assert isinstance(words, TokenCounter)
    history = [user("one two"), assistant("three"), user("four five six"), assistant("seven")]
    per = MESSAGE_OVERHEAD_TOKENS
    # The last turn costs 3 + 1 words + 2 framings; the whole history 7 + 4 framings.
    assert count_tokens(history, words) == 7 + 4 * per
    assert fit_to_budget(history, 4 + 2 * per, counter=words) == history[2:]
    assert fit_to_budget(history, 7 + 4 * per, counter=words) == history


def test_tool_spec_tokens() -> None:
    assert tool_spec_tokens([]) == 0
    spec = ToolSpec(name="lookup", description="Look a key up.",
                    parameters={"type": "object", "properties": {"key": {"type": "string"}}})
    assert 10 < tool_spec_tokens([spec]) < 60


def test_clip_to_tokens() -> None:
    assert clip_to_tokens("short", 10) == "short"
    clipped = clip_to_tokens("x" * 1000, 50)
    assert clipped.endswith("…") and HeuristicCounter().count_text(clipped) <= 50
    assert len(clipped) > 150  # not clipped far below the limit
    cjk = clip_to_tokens("字" * 500, 30)
    assert HeuristicCounter().count_text(cjk) <= 30
    assert clip_to_tokens("anything", 0) == ""


# -- fitting --------------------------------------------------------------------------------
def test_everything_is_kept_when_it_fits() -> None:
    history = turns(5)
    kept = fit_to_budget(history, 10_000)
    assert kept == history and kept is not history


def test_newest_turns_are_kept_and_the_first_is_a_user_message() -> None:
    history = turns(10)
    per_turn = count_tokens(history[:2])
    kept = fit_to_budget(history, per_turn * 3 + per_turn // 2)
    assert kept == history[-6:]
    assert kept[0].role == "user"


def test_exact_boundary() -> None:
    history = turns(4)
    total = count_tokens(history)
    per_turn = count_tokens(history[:2])
    assert fit_to_budget(history, total) == history  # equal to the budget fits
    assert fit_to_budget(history, total - 1) == history[2:]  # one token short drops a turn
    assert fit_to_budget(history, per_turn) == history[-2:]
    assert fit_to_budget(history, per_turn - 1) == []
    assert fit_to_budget(history, 0) == []
    assert fit_to_budget([], 100) == []


def test_reserve_tokens_come_off_the_budget() -> None:
    history = turns(4)
    total = count_tokens(history)
    assert fit_to_budget(history, total + 100, reserve_tokens=100) == history
    assert fit_to_budget(history, total + 100, reserve_tokens=101) == history[2:]


def test_a_turn_with_tool_calls_is_never_split() -> None:
    history = [
        user("old question"), assistant("old answer"),
        user("what is a and b?"), calling("c1"), result("c1", "A" * 400),
        calling("c2"), result("c2", "B" * 400), assistant("a and b"),
    ]
    newest_turn = history[2:]
    # Budget for the last tool result and answer but not the whole turn: nothing of it kept,
    # never a tool result without its call.
    tail_cost = count_tokens(history[-2:])
    assert fit_to_budget(history, tail_cost + 10) == []
    assert fit_to_budget(history, count_tokens(newest_turn)) == newest_turn


def test_never_starts_on_a_tool_result_or_assistant_message() -> None:
    # A history cut mid-turn by an earlier window: orphans before the first user message go.
    history = [result("c0", "orphan"), assistant("orphan answer"), *turns(2)]
    kept = fit_to_budget(history, 10_000)
    assert kept == history[2:]
    assert fit_to_budget([result("c0", "x"), assistant("y")], 10_000) == []


def test_leading_summary_and_instructions_are_always_kept() -> None:
    instructions = Message(role="system", content="Be brief.")
    history = [instructions, SUMMARY, *turns(6)]
    per_turn = count_tokens(history[2:4])
    fixed = count_tokens(history[:2])
    kept = fit_to_budget(history, fixed + 2 * per_turn)
    assert kept == [instructions, SUMMARY, *history[-4:]]
    # Over budget with the summary alone: the summary stays, no turn fits.
    assert fit_to_budget(history, 1) == [instructions, SUMMARY]


def test_max_messages_caps_the_count_of_kept_messages() -> None:
    history = [SUMMARY, *turns(6)]
    kept = fit_to_budget(history, 10_000, max_messages=5)
    # 5 messages would start on an assistant message: whole turns only, so 4.
    assert kept == [SUMMARY, *history[-4:]]
    assert fit_to_budget(history, 10_000, max_messages=1) == [SUMMARY]


def test_min_turns_keeps_the_current_turn_over_budget() -> None:
    history = [*turns(3), user("now"), calling("c1"), result("c1", "R" * 4000)]
    kept = fit_to_budget(history, 50, min_turns=1)
    assert kept == history[-3:]
    assert fit_to_budget(history, 50) == []
    two = fit_to_budget(history, 50, min_turns=2)
    assert two == history[-5:]


def test_large_history_is_cheap() -> None:
    # The early exit stops counting once no older turn can fit.
    history = turns(50_000, size=200)
    kept = fit_to_budget(history, 8000)
    assert kept[0].role == "user" and count_tokens(kept) <= 8000
    assert len(kept) == 2 * (8000 // count_tokens(history[:2]))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_heuristic_rejects_a_bad_ratio(bad: float) -> None:
    with pytest.raises(ValueError):
        HeuristicCounter(bad)
