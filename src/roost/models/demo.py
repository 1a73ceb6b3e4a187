"""The offline `demo` model: deterministic, no key, no network.

On a user message it calls the agent's tools that fit the input, with schema-valid
arguments drawn from the input; once their results are in, it answers from them. So every
example runs end to end on a fresh machine. It is a teaching and testing aid, not a language
model: it picks tools by word overlap and fills arguments by type.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from roost.models.base import (
    Message,
    ModelRequest,
    ModelResponse,
    StreamItem,
    TextDelta,
    ToolCall,
    ToolSpec,
)
from roost.sessions.records import Usage

_WORD = re.compile(r"[A-Za-zÀ-ÿ][\w'-]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_STOP = {"what", "the", "is", "in", "a", "an", "of", "and", "for", "to", "me", "please", "how",
         "whats", "what's", "tell", "give", "show", "about", "with", "at", "on", "it", "i"}


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _STOP


def _tokens(text: str | None) -> int:
    return max(1, len(text.split())) if text else 0


class DemoModel:
    """`Model` that needs nothing: see the module docstring."""

    name = "demo"

    def __init__(self, *, max_tools_per_turn: int = 2) -> None:
        self.max_tools_per_turn = max_tools_per_turn

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        response = self.respond(request)
        if request.stream and response.message.content:
            for piece in re.findall(r"\S+\s*", response.message.content):
                yield TextDelta(piece)
        yield response

    def respond(self, request: ModelRequest) -> ModelResponse:
        messages = request.messages
        last_user = next((i for i in range(len(messages) - 1, -1, -1)
                          if messages[i].role == "user"), None)
        user_text = messages[last_user].content or "" if last_user is not None else ""
        since_user = messages[last_user + 1:] if last_user is not None else []
        results = [m for m in since_user if m.role == "tool"]
        usage = Usage(input_tokens=sum(_tokens(m.content) for m in messages),
                      output_tokens=0)

        if request.tools and not results:
            calls = self._pick_calls(user_text, request.tools, len(messages))
            if calls:
                usage.output_tokens = sum(_tokens(c.arguments) for c in calls)
                return ModelResponse(
                    message=Message(role="assistant", tool_calls=calls),
                    usage=usage, model=self.name, finish_reason="tool_calls",
                )
        if results:
            parts = [f"{m.name}: {m.content}" for m in results]
            text = "Here is what I found. " + " | ".join(parts)
        elif user_text:
            text = f"You said: {user_text}"
        else:
            text = "Hello! Ask me something."
        usage.output_tokens = _tokens(text)
        return ModelResponse(message=Message(role="assistant", content=text), usage=usage,
                             model=self.name, finish_reason="stop")

    def _pick_calls(self, text: str, tools: list[ToolSpec], salt: int) -> list[ToolCall]:
        words = _words(text)
        scored = []
        for index, spec in enumerate(tools):
            vocabulary = _words(spec.name.replace("_", " ") + " " + spec.description)
            for prop, schema in spec.parameters.get("properties", {}).items():
                vocabulary |= _words(prop.replace("_", " ") + " " + str(schema.get("description", "")))
            scored.append((len(words & vocabulary), -index, spec))
        scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
        best = [s for s in scored if s[0] > 0][: self.max_tools_per_turn] or scored[:1]
        calls = []
        for n, (_, _, spec) in enumerate(best):
            arguments = fill_arguments(spec.parameters, text)
            calls.append(ToolCall(id=f"call_{salt}_{n}", name=spec.name,
                                  arguments=orjson.dumps(arguments).decode()))
        return calls


def fill_arguments(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """Schema-valid arguments for an object schema, drawn from `text` where types allow."""
    numbers = [float(n) for n in _NUMBER.findall(text)]
    capitalised = [w for w in _WORD.findall(text) if w[0].isupper() and w.lower() not in _STOP]
    words = [w for w in _WORD.findall(text) if w.lower() not in _STOP]
    defs = schema.get("$defs", {})
    out: dict[str, Any] = {}
    number_index = 0
    for name in schema.get("required", list(schema.get("properties", {}))):
        prop = schema.get("properties", {}).get(name, {})
        value, used = _value_for(prop, defs, text, numbers, number_index, capitalised, words)
        number_index += used
        out[name] = value
    return out


def _value_for(prop: dict[str, Any], defs: dict[str, Any], text: str, numbers: list[float],
               number_index: int, capitalised: list[str], words: list[str]) -> tuple[Any, int]:
    if "$ref" in prop:
        prop = defs.get(prop["$ref"].rsplit("/", 1)[-1], {})
    if "enum" in prop:
        lowered = text.lower()
        for option in prop["enum"]:
            if str(option).lower() in lowered.split():
                return option, 0
        return prop["enum"][0], 0
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        return _value_for(options[0] if options else {}, defs, text, numbers, number_index,
                          capitalised, words)
    kind = prop.get("type", "string")
    if kind in ("number", "integer"):
        value = numbers[number_index] if number_index < len(numbers) else 1
        return (int(value) if kind == "integer" else value), 1
    if kind == "boolean":
        return True, 0
    if kind == "array":
        item, used = _value_for(prop.get("items", {}), defs, text, numbers, number_index,
                                capitalised, words)
        return [item], used
    if kind == "object":
        return fill_arguments(prop, text), 0
    if capitalised:
        return " ".join(capitalised[-2:]) if len(capitalised) > 1 and _adjacent(text, capitalised[-2:]) else capitalised[-1], 0
    return (words[-1] if words else text.strip() or "x"), 0


def _adjacent(text: str, pair: list[str]) -> bool:
    return f"{pair[0]} {pair[1]}" in text
