"""A protocol turn onto the runtime: which session it runs in, and what history it carries.

Two ways in, the same `Runtime` calls underneath (`create_session`, `submit_turn`):

- **stateless** (OpenAI's chat completions by default): the client sends the whole
  conversation every time. Each request gets a fresh Roost session whose log starts with the
  client's earlier messages; the last user message is the turn's input. The session is kept
  (persistence, replay, usage, TTL) like any other, and named in `X-Roost-Session-Id`.
- **continued**: the request names a Roost session (`X-Roost-Session-Id`, or a previous
  response's run for the Responses API). The session's own log is the history; only the
  newest user message is taken from the request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from roost.engine.context import message_event_data
from roost.errors import InvalidInput
from roost.models.base import Message
from roost.runtime.bus import ChannelLagged
from roost.runtime.runtime import RunHandle, Runtime
from roost.sessions.records import Event, RunRecord

#: metadata on sessions a protocol created, so operators can tell them apart
PROTOCOL_KEY = "protocol"
_TERMINAL = frozenset({"run.completed", "run.failed", "run.cancelled", "run.interrupted",
                       "run.waiting"})


async def start_turn(runtime: Runtime, tenant: str, agent: str, messages: list[Message], *,
                     session_id: str | None, stream: bool, protocol: str) -> RunHandle:
    """Submit the turn `messages` ends with (a user message) and return its run.

    With `session_id` the session must belong to `agent`; the earlier messages are ignored (the
    session has its own history). Without one, a new session is created for `agent` and
    seeded with the earlier messages."""
    if not messages or messages[-1].role != "user" or not (messages[-1].content or "").strip():
        raise InvalidInput("the last message must be a non-empty user message", field="messages")
    text = messages[-1].content or ""
    runtime.agents.hosted(agent)  # 404 for an unknown agent before any store work
    if session_id is not None:
        # A hot session is in the cache: no store read for the check.
        live = runtime.sessions.peek(tenant, session_id)
        session = live.session if live is not None else await runtime.get_session(tenant,
                                                                                  session_id)
        if session.agent != agent:
            raise InvalidInput(f"session {session_id} belongs to agent {session.agent!r}, "
                               f"not {agent!r}", field="model")
    else:
        session = await runtime.create_session(tenant, agent, metadata={PROTOCOL_KEY: protocol})
        session_id = session.id
        if len(messages) > 1:
            await _seed(runtime, tenant, session_id, messages[:-1])
    return await runtime.submit_turn(tenant, session_id, text, stream=stream)


async def _seed(runtime: Runtime, tenant: str, session_id: str, history: list[Message]) -> None:
    """Write the client's earlier messages as the new session's first events (no run), and
    make them the live window the turn starts from.

    Through the session's live owner, the only writer of a log (compare-and-set on its
    version): the session was created a moment ago and nobody else knows its id."""
    live = await runtime.sessions.get(tenant, session_id, runtime.agents.policies_of)
    await live.append([Event(type="message", data=message_event_data(m)) for m in history])
    live.remember(history, completed=True)


async def answer_deltas(handle: RunHandle, *, hold_steps: bool) -> AsyncGenerator[str, None]:
    """The answer of a run this process drives, as text deltas (see `text_deltas`)."""
    async for text in text_deltas(handle.channel.batches(), handle.wait, hold_steps=hold_steps):
        yield text


async def text_deltas(batches: AsyncIterator[list[Event]],
                      final: Callable[[], Awaitable[RunRecord]], *,
                      hold_steps: bool) -> AsyncGenerator[str, None]:
    """A run's answer as text deltas from its event batches (its live channel here, or
    `Runtime.follow` for a run driven by another instance), to its end; then whatever of its
    final output (`final()`, the ended run) the deltas did not carry (a provider that did not
    stream, events read from the log, or a reader that fell behind the channel's buffer:
    deltas are not persisted, the output is).

    Only the answer's text: a model may write text in a step that also calls tools ("Let me
    look that up"), and whether a step calls tools is known only when the step ends (the
    providers stream text first, tool calls after it). With `hold_steps` (an agent that has
    tools) each step's deltas are held until its `message` event says which it was: the
    final answer's are released, a tool step's dropped (its text stays in the session log).
    An agent without tools has one step, the answer: its deltas pass through as they come."""
    sent: list[str] = []
    held: list[str] = []
    try:
        async for batch in batches:
            for event in batch:
                if event.type == "message.delta":
                    text = event.data.get("text", "")
                    if not text:
                        continue
                    if hold_steps:
                        held.append(text)
                        continue
                    sent.append(text)
                    yield text
                elif event.type == "message" and event.data.get("role") == "assistant":
                    if event.data.get("tool_calls"):
                        # A step that called tools: its text (if any) was not the answer.
                        sent.clear()
                    elif held:
                        text = "".join(held)
                        sent.append(text)
                        yield text
                    held.clear()
                elif event.type in _TERMINAL:
                    break
    except ChannelLagged:
        pass
    run = await final()
    output = run.output or ""
    streamed = "".join(sent)
    if run.status == "completed" and output.startswith(streamed) and output != streamed:
        yield output[len(streamed):]
