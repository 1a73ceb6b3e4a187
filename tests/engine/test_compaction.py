from __future__ import annotations

import asyncio

import pytest

from roost.engine.budget import count_tokens
from roost.engine.compaction import (
    SUMMARY_PREFIX,
    CompactionPolicy,
    apply_compaction,
    compact,
    compaction_event,
    context_from_events,
    history_from_events,
    is_summary,
    needs_compaction,
    summary_message,
)
from roost.engine.context import event_to_message, events_to_messages, message_event_data
from roost.errors import ModelError
from roost.models.base import Message, ModelResponse, ToolCall
from roost.sessions import Event, Session, Usage, open_store
from roost.testing.scripted import ScriptedModel


def user(text: str) -> Message:
    return Message(role="user", content=text)


def assistant(text: str) -> Message:
    return Message(role="assistant", content=text)


def turns(n: int, size: int = 200, start: int = 0) -> list[Message]:
    out: list[Message] = []
    for i in range(start, start + n):
        out += [user(f"question {i} ".ljust(size, "q")), assistant(f"answer {i} ".ljust(size, "a"))]
    return out


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


# 10 turns of ~2 × 54 tokens each: ~1080 tokens.
POLICY = CompactionPolicy(trigger_tokens=500, keep_messages=4, keep_tokens=None,
                          summary_max_tokens=100)


async def test_below_the_trigger_nothing_happens() -> None:
    model = ScriptedModel([])
    history = turns(2)
    assert count_tokens(history) < POLICY.trigger_tokens
    assert not needs_compaction(history, POLICY)
    assert await compact(history, POLICY, model, deadline=deadline()) is None
    assert model.calls == 0
    off = CompactionPolicy(enabled=False, trigger_tokens=1, keep_tokens=0)
    assert await compact(turns(10), off, model, deadline=deadline()) is None
    assert model.calls == 0


async def test_above_the_trigger_the_older_part_is_summarised_and_the_tail_kept() -> None:
    model = ScriptedModel(["They asked questions 0 to 7; all were answered."])
    history = turns(10)
    assert needs_compaction(history, POLICY)
    compaction = await compact(history, POLICY, model, deadline=deadline())
    assert compaction is not None
    assert compaction.summary == "They asked questions 0 to 7; all were answered."
    assert compaction.replaced == 16 and compaction.kept_turns == 2
    assert compaction.start == 16 and compaction.up_to_seq is None
    assert compaction.model == "scripted" and compaction.usage.output_tokens > 0
    # One model call: the summarisation prompt and a transcript of exactly the older part.
    assert model.calls == 1
    request = model.requests[0]
    assert [m.role for m in request.messages] == ["system", "user"]
    assert "summary" in (request.messages[0].content or "").lower()
    assert "{max_words}" not in (request.messages[0].content or "")
    transcript = request.messages[1].content or ""
    assert "question 0" in transcript and "answer 7" in transcript
    assert "question 8" not in transcript and "earlier_summary" not in transcript
    assert request.settings == {"max_tokens": 100}
    assert request.metadata["purpose"] == "compaction"
    # The history given is untouched; the compacted one is summary + verbatim tail.
    assert history == turns(10)
    compacted = apply_compaction(history, compaction)
    assert compacted == [summary_message(compaction.summary), *history[-4:]]
    assert is_summary(compacted[0]) and not needs_compaction(compacted, POLICY)


async def test_keep_tokens_keeps_whole_turns_within_the_budget() -> None:
    policy = CompactionPolicy(trigger_tokens=500, keep_tokens=250)
    history = turns(10)
    per_turn = count_tokens(history[:2])
    compaction = await compact(history, policy, ScriptedModel(["s"]), deadline=deadline())
    assert compaction is not None
    assert compaction.kept_turns == 250 // per_turn
    tail = apply_compaction(history, compaction)[1:]
    assert tail == history[-2 * compaction.kept_turns:] and tail[0].role == "user"


async def test_instructions_pass_through_and_the_previous_summary_rolls_up() -> None:
    instructions = Message(role="system", content="Be brief.")
    history = [instructions, summary_message("Earlier they discussed cats."), *turns(10)]
    model = ScriptedModel(["Cats, then questions 0 to 7."])
    compaction = await compact(history, POLICY, model, deadline=deadline())
    assert compaction is not None
    transcript = model.requests[0].messages[1].content or ""
    assert "<earlier_summary>\nEarlier they discussed cats.\n</earlier_summary>" in transcript
    assert SUMMARY_PREFIX not in transcript
    assert compaction.replaced == 16  # the previous summary is not counted as replaced
    compacted = apply_compaction(history, compaction)
    # One summary, never two: the old one is rolled into the new.
    assert compacted == [instructions, summary_message("Cats, then questions 0 to 7."),
                         *history[-4:]]
    # Instructions do not count toward the trigger.
    big_instructions = [Message(role="system", content="x" * 10_000), *turns(2)]
    assert not needs_compaction(big_instructions, POLICY)


async def test_tool_turns_are_rendered_and_never_split() -> None:
    call = ToolCall(id="c1", name="lookup", arguments='{"key": "k"}')
    history = [
        *turns(6),
        user("look k up"),
        Message(role="assistant", tool_calls=[call]),
        Message(role="tool", content="value of k", tool_call_id="c1", name="lookup"),
        assistant("k is value"),
        *turns(1, start=6),
    ]
    policy = CompactionPolicy(trigger_tokens=500, keep_messages=3, keep_tokens=None)
    model = ScriptedModel(["s"])
    compaction = await compact(history, policy, model, deadline=deadline())
    assert compaction is not None
    # 3 messages would cut the tool turn: only the last whole turn (2 messages) stays.
    assert apply_compaction(history, compaction)[1:] == history[-2:]
    transcript = model.requests[0].messages[1].content or ""
    assert '[assistant called tool lookup] {"key": "k"}' in transcript
    assert "[tool result: lookup] value of k" in transcript


async def test_a_turn_waiting_for_tool_results_is_always_kept() -> None:
    call = ToolCall(id="c1", name="lookup", arguments="{}")
    history = [*turns(10), user("now " + "n" * 2000), Message(role="assistant", tool_calls=[call])]
    policy = CompactionPolicy(trigger_tokens=500, keep_tokens=10)
    compaction = await compact(history, policy, ScriptedModel(["s"]), deadline=deadline())
    assert compaction is not None
    assert apply_compaction(history, compaction)[1:] == history[-2:]


async def test_nothing_to_replace_returns_none() -> None:
    # One huge turn within keep_messages: over the trigger, but all of it is the tail.
    history = [user("x" * 4000), assistant("y")]
    policy = CompactionPolicy(trigger_tokens=100, keep_messages=10, keep_tokens=None)
    model = ScriptedModel([])
    assert await compact(history, policy, model, deadline=deadline()) is None
    assert model.calls == 0


async def test_seqs_give_up_to_seq() -> None:
    history = turns(10)
    seqs = [10 + 2 * i for i in range(len(history))]  # gaps: bookkeeping events in between
    compaction = await compact(history, POLICY, ScriptedModel(["s"]), deadline=deadline(),
                               seqs=seqs)
    assert compaction is not None
    assert compaction.up_to_seq == seqs[16] - 1
    everything = CompactionPolicy(trigger_tokens=500, keep_messages=0, keep_tokens=None)
    all_of_it = await compact(history, everything, ScriptedModel(["s"]), deadline=deadline(),
                              seqs=seqs)
    assert all_of_it is not None and all_of_it.up_to_seq == seqs[-1]
    assert all_of_it.kept_turns == 0 and apply_compaction(history, all_of_it)[1:] == []
    with pytest.raises(ValueError):
        await compact(history, POLICY, ScriptedModel(["s"]), deadline=deadline(), seqs=[1])


async def test_the_event_records_the_compaction() -> None:
    compaction = await compact(turns(10), POLICY, ScriptedModel(["the summary"]),
                               deadline=deadline())
    assert compaction is not None
    event = compaction_event(compaction, "run_1")
    assert event.type == "compaction" and event.run_id == "run_1"
    assert event.data == {
        "summary": "the summary", "up_to_seq": None, "replaced": 16, "kept_turns": 2,
        "model": "scripted",
        "usage": {"input_tokens": compaction.usage.input_tokens,
                  "output_tokens": compaction.usage.output_tokens, "cost": 0.0},
    }
    # context.py reads the same event as the same summary message.
    assert event_to_message(event) == summary_message("the summary")


# -- failures: best-effort, history unchanged ---------------------------------------------
async def test_a_model_error_leaves_history_unchanged() -> None:
    history = turns(10)
    before = list(history)
    model = ScriptedModel([ModelError("provider down", kind="overloaded", status_code=503)])
    with pytest.raises(ModelError) as caught:
        await compact(history, POLICY, model, deadline=deadline())
    assert caught.value.kind == "overloaded"
    assert history == before


async def test_an_empty_summary_is_an_error() -> None:
    with pytest.raises(ModelError) as caught:
        await compact(turns(10), POLICY, ScriptedModel(["   "]), deadline=deadline())
    assert caught.value.kind == "malformed"


async def test_a_model_breaking_the_protocol_becomes_a_model_error() -> None:
    with pytest.raises(ModelError, match="RuntimeError"):
        await compact(turns(10), POLICY, ScriptedModel([RuntimeError("bug")]),
                      deadline=deadline())


async def test_the_deadline_is_enforced() -> None:
    model = ScriptedModel(["late"], delay_s=10)
    with pytest.raises(ModelError) as caught:
        await compact(turns(10), POLICY, model, deadline=deadline(0.05))
    assert caught.value.kind == "deadline"


async def test_an_enclosing_timeout_is_not_swallowed() -> None:
    # The caller's own timeout (say, the run's) must surface as the caller's TimeoutError.
    model = ScriptedModel(["late"], delay_s=10)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await compact(turns(10), POLICY, model, deadline=deadline(0.05))


async def test_an_overlong_summary_is_clipped() -> None:
    model = ScriptedModel([ModelResponse(message=assistant("word " * 5000), usage=Usage())])
    compaction = await compact(turns(10), POLICY, model, deadline=deadline())
    assert compaction is not None
    assert len(compaction.summary) < 1000 and compaction.summary.endswith("…")


# -- rebuilding a cold session from the log ----------------------------------------------
def message_events(messages: list[Message], run_id: str) -> list[Event]:
    events = [Event(type="run.started", run_id=run_id)]
    events += [Event(type="tool.result" if m.role == "tool" else "message", run_id=run_id,
                     data=message_event_data(m)) for m in messages]
    events.append(Event(type="run.completed", run_id=run_id))
    return events


async def test_context_from_events_after_compaction_is_summary_plus_tail() -> None:
    store = open_store("memory://")
    await store.open()
    session = await store.create_session(Session(id="s1", agent="a"))
    history: list[Message] = []
    version = session.version
    for i in range(10):
        turn = turns(1, start=i)
        version = await store.append("default", "s1", message_events(turn, f"run_{i}"), version)
        history += turn
    compaction = await compact(history, POLICY, ScriptedModel(["first summary"]),
                               deadline=deadline())
    assert compaction is not None
    version = await store.append("default", "s1", [compaction_event(compaction, "run_9")], version)
    after = turns(1, start=10)
    version = await store.append("default", "s1", message_events(after, "run_10"), version)

    events = await store.read_events("default", "s1", limit=1000)
    context = context_from_events(events)
    assert context == [summary_message("first summary"), *history[-4:], *after]
    # The raw events are untouched in the store.
    assert len(events) == 10 * 4 + 1 + 4
    assert [m for m in events_to_messages(events) if not is_summary(m)] == [*history, *after]
    # A tail read that does not reach back to the kept turns gives more, never less.
    assert context_from_events(events[-8:]) == [summary_message("first summary"),
                                                *history[-2:], *after]

    # A second compaction rolls the first up; its kept tail may reach back past the first
    # compaction event, which must not reappear as a message.
    hot = apply_compaction(history, compaction) + after
    model = ScriptedModel(["second summary"])
    lower = CompactionPolicy(trigger_tokens=200, keep_messages=4, keep_tokens=None)
    second = await compact(hot, lower, model, deadline=deadline())
    assert second is not None and second.kept_turns == 2 and second.replaced == 2
    assert "first summary" in (model.requests[0].messages[1].content or "")
    await store.append("default", "s1", [compaction_event(second, "run_10")], version)
    events = await store.read_events("default", "s1", limit=1000)
    assert context_from_events(events) == [summary_message("second summary"),
                                           *history[-2:], *after]
    await store.close()


async def test_context_from_events_with_seqs_round_trips() -> None:
    events: list[Event] = []
    for i in range(10):
        events += message_events(turns(1, start=i), f"run_{i}")
    for seq, event in enumerate(events, 1):
        event.seq = seq
    messages, seqs = history_from_events(events)
    assert messages == turns(10) and len(seqs) == len(messages)
    assert [events[s - 1].type for s in seqs] == ["message"] * 20
    compaction = await compact(messages, POLICY, ScriptedModel(["s"]), deadline=deadline(),
                               seqs=seqs)
    assert compaction is not None and compaction.up_to_seq is not None
    marker = compaction_event(compaction, None)
    marker.seq = len(events) + 1
    rebuilt, rebuilt_seqs = history_from_events([*events, marker])
    assert rebuilt == apply_compaction(messages, compaction)
    assert rebuilt_seqs[0] == marker.seq and rebuilt_seqs[1] == compaction.up_to_seq + 1
    # Without a compaction: every message.
    assert context_from_events(events) == turns(10)
    assert context_from_events([]) == []


# -- policy -------------------------------------------------------------------------------
def test_policy_validation_and_config() -> None:
    assert CompactionPolicy.from_config(None) is None
    assert CompactionPolicy.from_config(False) is None
    assert CompactionPolicy.from_config(True) == CompactionPolicy()
    policy = CompactionPolicy.from_config({"trigger_tokens": 9000, "keep_tokens": 3000,
                                           "model": "openai:gpt-4o-mini"})
    assert policy is not None and policy.trigger_tokens == 9000
    assert policy.model == "openai:gpt-4o-mini"
    assert CompactionPolicy.from_config(policy) is policy
    with pytest.raises(ValueError, match="unknown keys"):
        CompactionPolicy.from_config({"trigger": 1})
    with pytest.raises(ValueError):
        CompactionPolicy.from_config("yes")
    with pytest.raises(ValueError, match="keep_tokens"):
        CompactionPolicy(trigger_tokens=100, keep_tokens=100)
    with pytest.raises(ValueError, match="keep_tokens or keep_messages"):
        CompactionPolicy(keep_tokens=None)
    with pytest.raises(ValueError):
        CompactionPolicy(summary_max_tokens=0)
    with pytest.raises(ValueError):
        CompactionPolicy(timeout_s=0)
