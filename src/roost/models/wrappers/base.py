"""`WrapperModel`: a `Model` that delegates to an inner one, the base of every wrapper.

A wrapper overrides `stream` to add one behaviour (retry, breaker, fallback, …) and is a
`Model` itself, so wrappers compose:

    model = FallbackModel([RetryModel(BreakerModel(primary)), secondary])

Also here: the small pieces several wrappers share (a bucketed sliding counter, the
request deadline on the loop clock, "ModelError but not retryable").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, StreamItem

Clock = Callable[[], float]


class WrapperModel:
    """Delegates everything to `inner`; subclasses override `stream`."""

    def __init__(self, inner: Model, *, name: str | None = None) -> None:
        self.inner = inner
        self.name = name or inner.name

    def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        return self.inner.stream(request)

    async def aclose(self) -> None:
        """Close the inner model (its HTTP session), if it has anything to close."""
        await close_model(self.inner)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


async def close_model(model: Model) -> None:
    close = getattr(model, "aclose", None)
    if close is not None:
        await close()


def provider_of(model: Model) -> str:
    """"openai:gpt-4o-mini" → "openai"; a name without a colon is its own provider."""
    return model.name.split(":", 1)[0]


def seconds_left(request: ModelRequest) -> float | None:
    """Time left before `request.deadline` on the loop clock; None = no deadline."""
    if request.deadline is None:
        return None
    return request.deadline - asyncio.get_running_loop().time()


def error_kind(error: ModelError) -> str:
    """`error.kind`, or — for a provider that left it at "error" — what its status says."""
    kind = error.kind
    if kind != "error":
        return kind
    detail = error.details.get("kind")
    if isinstance(detail, str):
        return detail
    status = error.status_code
    if status is None:
        return kind
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "overloaded"
    if 400 <= status < 500 and status != 409:
        return "bad_request"
    return kind


def not_retryable(error: ModelError, note: str) -> ModelError:
    """The same error, marked so no outer wrapper retries or falls back on it."""
    copy = ModelError(
        f"{error.message} ({note})",
        status_code=error.status_code,
        retryable=False,
        retry_after=error.retry_after,
        provider=error.provider,
        kind=error.kind,
    )
    copy.__cause__ = error
    return copy


def output_already_streamed(error: ModelError) -> bool:
    """True when `error` was raised after text reached the consumer (see `mark_streamed`)."""
    return error.after_output


def mark_streamed(error: ModelError) -> ModelError:
    """Mark a failure that happened after output was streamed: nobody may retry it silently."""
    if output_already_streamed(error):
        return error
    marked = not_retryable(error, "after output was streamed")
    marked.after_output = True
    return marked


class SlidingCounter:
    """Counts events over the last `window_s` seconds in `buckets` buckets.

    O(1) per event and bounded memory whatever the call rate; the window edge is accurate to
    one bucket, which is all a budget or a breaker needs.
    """

    __slots__ = ("_bucket_s", "_clock", "_counts", "_epoch", "_totals", "_width")

    def __init__(self, window_s: float, *, width: int = 2, buckets: int = 10, clock: Clock = time.monotonic) -> None:
        self._bucket_s = window_s / buckets
        self._clock = clock
        self._width = width
        # _counts[i] holds the counts of epoch bucket (_epoch - len + 1 + i) …
        self._counts: list[list[int]] = [[0] * width for _ in range(buckets)]
        self._totals = [0] * width
        self._epoch = int(clock() / self._bucket_s)

    def _advance(self) -> None:
        epoch = int(self._clock() / self._bucket_s)
        steps = epoch - self._epoch
        if steps <= 0:
            return
        n = len(self._counts)
        for _ in range(min(steps, n)):
            expired = self._counts.pop(0)
            for i in range(self._width):
                self._totals[i] -= expired[i]
                expired[i] = 0
            self._counts.append(expired)
        self._epoch = epoch

    def add(self, index: int, amount: int = 1) -> None:
        self._advance()
        self._counts[-1][index] += amount
        self._totals[index] += amount

    def total(self, index: int) -> int:
        self._advance()
        return self._totals[index]

    def reset(self) -> None:
        for bucket in self._counts:
            for i in range(self._width):
                bucket[i] = 0
        self._totals = [0] * self._width
