"""Tests of the model wrappers, and the small fakes they share.

`FakeModel` plays one outcome per call: "ok", a `ModelError` to raise before any output,
`Partial(error)` to stream a delta and then fail, or `Hang()` to wait until cancelled.
`FakeClock` is a hand-moved clock for breakers, budgets and limiters.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass

from roost.errors import ModelError
from roost.models.base import Message, ModelRequest, ModelResponse, StreamItem, TextDelta
from roost.sessions.records import Usage


@dataclass
class Partial:
    error: ModelError


@dataclass
class Hang:
    pass


Outcome = str | ModelError | Partial | Hang


def error(kind: str = "overloaded", *, retryable: bool = True, status: int | None = 503,
          retry_after: float | None = None) -> ModelError:
    return ModelError(f"fake {kind}", status_code=status, retryable=retryable,
                      retry_after=retry_after, provider="fake", kind=kind)


class FakeModel:
    """A `Model` that plays `outcomes` in order (the last one repeats)."""

    def __init__(self, name: str = "fake:a", outcomes: Sequence[Outcome] | Callable[[int], Outcome] = ("ok",),
                 *, delay_s: float = 0.0, text: str = "hello world") -> None:
        self.name = name
        self.outcomes = outcomes
        self.delay_s = delay_s
        self.text = text
        self.calls = 0
        self.closed_streams = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._changed = asyncio.Event()

    async def wait_in_flight(self, count: int) -> None:
        """Wait until `count` calls are inside the model (bound it with the test timeout)."""
        while self.in_flight < count:
            self._changed.clear()
            await self._changed.wait()

    def _outcome(self) -> Outcome:
        if callable(self.outcomes):
            return self.outcomes(self.calls)
        return self.outcomes[min(self.calls - 1, len(self.outcomes) - 1)]

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._changed.set()
        outcome = self._outcome()
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if isinstance(outcome, Hang):
                await asyncio.Event().wait()
            if isinstance(outcome, ModelError):
                raise outcome
            if isinstance(outcome, Partial):
                yield TextDelta("partial ")
                raise outcome.error
            if request.stream:
                for word in self.text.split():
                    yield TextDelta(word + " ")
            yield ModelResponse(message=Message(role="assistant", content=self.text),
                                usage=Usage(input_tokens=10, output_tokens=5), model=self.name,
                                finish_reason="stop")
        finally:
            self.in_flight -= 1
            self.closed_streams += 1


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request(text: str = "hi", *, stream: bool = False, deadline_in: float | None = None,
            **settings: object) -> ModelRequest:
    deadline = None
    if deadline_in is not None:
        deadline = asyncio.get_running_loop().time() + deadline_in
    return ModelRequest(messages=[Message(role="user", content=text)], stream=stream,
                        deadline=deadline, settings=dict(settings))


async def collect(model: object, req: ModelRequest) -> tuple[list[str], ModelResponse]:
    deltas: list[str] = []
    response: ModelResponse | None = None
    async for item in model.stream(req):  # type: ignore[attr-defined]
        if isinstance(item, TextDelta):
            deltas.append(item.text)
        else:
            response = item
    assert response is not None
    return deltas, response
