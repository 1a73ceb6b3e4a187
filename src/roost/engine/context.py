"""From the event log to the model's context: messages, windowing, pending tool calls.

The log is the checkpoint: `message` and `tool.result` events are the conversation, so a run
can be rebuilt from the log alone (see `pending_tool_calls`).
"""

from __future__ import annotations

from collections.abc import Iterable

from roost.models.base import Message, ToolCall
from roost.sessions.records import Event


def message_event_data(message: Message) -> dict[str, object]:
    data: dict[str, object] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        data["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls
        ]
    return data


def event_to_message(event: Event) -> Message | None:
    """The conversation message an event records, or None for bookkeeping events."""
    data = event.data
    if event.type == "message":
        calls = data.get("tool_calls")
        return Message(
            role=data.get("role", "assistant"),
            content=data.get("content"),
            tool_calls=[ToolCall(id=c["id"], name=c["name"], arguments=c.get("arguments", "{}"))
                        for c in calls] if calls else None,
        )
    if event.type == "tool.result":
        return Message(role="tool", content=data.get("content", ""),
                       tool_call_id=data.get("call_id"), name=data.get("name"))
    if event.type == "compaction":
        return Message(role="system", content=f"Summary of the earlier conversation: {data.get('summary', '')}")
    return None


def events_to_messages(events: Iterable[Event]) -> list[Message]:
    return [m for m in map(event_to_message, events) if m is not None]


def window(messages: list[Message], max_messages: int) -> list[Message]:
    """The newest `max_messages`, never starting inside a turn (first kept is a user message),
    so a tool result is never sent without the call it answers."""
    if len(messages) <= max_messages:
        return messages
    kept = messages[-max_messages:]
    for index, message in enumerate(kept):
        if message.role == "user":
            return kept[index:]
    return []


def pending_tool_calls(messages: list[Message]) -> list[ToolCall]:
    """Tool calls of the last assistant message that have no result yet (resume point)."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.role == "assistant":
            if not message.tool_calls:
                return []
            answered = {m.tool_call_id for m in messages[index + 1:] if m.role == "tool"}
            return [c for c in message.tool_calls if c.id not in answered]
        if message.role == "user":
            return []
    return []


def close_dangling_calls(messages: list[Message]) -> list[Message]:
    """Give every unanswered tool call a synthetic error result, so the next model call
    sees a well-formed conversation after a cancelled, failed or orphaned run."""
    out: list[Message] = []
    open_calls: list[ToolCall] = []

    def close() -> None:
        out.extend(Message(role="tool", content="Error: not run (the run ended first)",
                           tool_call_id=c.id, name=c.name) for c in open_calls)
        open_calls.clear()

    for message in messages:
        if message.role != "tool" and open_calls:
            close()
        out.append(message)
        if message.role == "assistant" and message.tool_calls:
            open_calls.extend(message.tool_calls)
        elif message.role == "tool":
            open_calls[:] = [c for c in open_calls if c.id != message.tool_call_id]
    close()  # calls left open at the very end (a cancelled run's last step)
    return out
