"""`ScriptedModel`: a `Model` that plays back a script, for tests.

    model = ScriptedModel([
        call("get_weather", city="Paris"),        # step 1: one tool call
        "It is sunny in Paris.",                  # step 2: the answer
    ])

Each step is a string (an answer, streamed word by word when the request streams), a
`ToolCall` or list of them, a `ModelResponse`, an exception to raise, or a callable
`(request) -> step`. `delay_s` waits before each answer (honouring cancellation). The model
records every request in `.requests`. When the script runs out it raises `AssertionError`,
unless `repeat_last=True`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any

import orjson

from roost.models.base import Message, ModelRequest, ModelResponse, StreamItem, TextDelta, ToolCall
from roost.sessions.records import Usage

Step = str | ToolCall | list[ToolCall] | ModelResponse | BaseException | Callable[[ModelRequest], Any]

_ids = itertools.count(1)


def call(name: str, /, **arguments: Any) -> ToolCall:
    """A tool call step with a fresh id."""
    return ToolCall(id=f"call_{next(_ids)}", name=name, arguments=orjson.dumps(arguments).decode())


class ScriptedModel:
    name = "scripted"

    def __init__(self, script: Sequence[Step], *, delay_s: float = 0.0, repeat_last: bool = False,
                 name: str = "scripted") -> None:
        self.script = list(script)
        self.delay_s = delay_s
        self.repeat_last = repeat_last
        self.name = name
        self.requests: list[ModelRequest] = []
        self._position = 0

    @property
    def calls(self) -> int:
        return len(self.requests)

    def _next_step(self, request: ModelRequest) -> Step:
        if self._position >= len(self.script):
            if self.repeat_last and self.script:
                return self.script[-1]
            raise AssertionError(f"ScriptedModel: script exhausted after {len(self.script)} steps")
        step = self.script[self._position]
        self._position += 1
        return step

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        self.requests.append(request)
        step = self._next_step(request)
        if callable(step) and not isinstance(step, (ToolCall, ModelResponse, BaseException)):
            step = step(request)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if isinstance(step, BaseException):
            raise step
        usage = Usage(input_tokens=sum(len((m.content or "").split()) for m in request.messages))
        if isinstance(step, ModelResponse):
            yield step
            return
        if isinstance(step, ToolCall):
            step = [step]
        if isinstance(step, list):
            yield ModelResponse(message=Message(role="assistant", tool_calls=step), usage=usage,
                                model=self.name, finish_reason="tool_calls")
            return
        text = str(step)
        if request.stream:
            for word in text.split(" "):
                yield TextDelta(word + " ")
        usage.output_tokens = len(text.split())
        yield ModelResponse(message=Message(role="assistant", content=text), usage=usage,
                            model=self.name, finish_reason="stop")
