"""Retry: exponential backoff with full jitter, Retry-After honoured, under a retry budget.

    model = RetryModel(provider, RetryConfig(max_attempts=3))

Rules, in the order they are checked after a failed attempt:

1. Only `ModelError.retryable` errors are retried.
2. Never once a `TextDelta` reached the consumer: the caller has shown those tokens, a second
   attempt would show different ones. The error is raised, marked not retryable.
3. At most `max_attempts` attempts.
4. A Retry-After longer than `max_retry_after_s` is not waited for.
5. The retry budget (shared per provider) must allow it: retries stay within `budget_ratio`
   of calls over a sliding window, so when a provider is down retries do not multiply its
   load by `max_attempts` — they add at most 10%.
6. The backoff must end before `request.deadline`: nothing sleeps past it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, StreamItem, TextDelta
from roost.models.wrappers.base import (
    Clock,
    SlidingCounter,
    WrapperModel,
    mark_streamed,
    seconds_left,
)
from roost.models.wrappers.config import RetryConfig

_CALLS, _RETRIES = 0, 1


class RetryBudget:
    """Allows a retry while retries ≤ max(min_retries, ratio × calls) over the window.

    Share one budget between every wrapper that calls the same provider.
    """

    def __init__(
        self,
        ratio: float = 0.1,
        min_retries: int = 5,
        window_s: float = 10.0,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.ratio = ratio
        self.min_retries = min_retries
        self._window = SlidingCounter(window_s, clock=clock)

    @classmethod
    def from_config(cls, config: RetryConfig, *, clock: Clock = time.monotonic) -> RetryBudget:
        return cls(config.budget_ratio, config.budget_min_retries, config.budget_window_s, clock=clock)

    def record_call(self) -> None:
        self._window.add(_CALLS)

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        calls = self._window.total(_CALLS)
        retries = self._window.total(_RETRIES)
        if retries + 1 > max(float(self.min_retries), self.ratio * calls):
            return False
        self._window.add(_RETRIES)
        return True

    @property
    def calls_in_window(self) -> int:
        return self._window.total(_CALLS)

    @property
    def retries_in_window(self) -> int:
        return self._window.total(_RETRIES)


class RetryModel(WrapperModel):
    """Retries retryable failures of `inner` (see the module docstring for the rules).

    Statistics (plain counters, for metrics): `calls`, `attempts`, `retries`, `recovered`
    (calls that succeeded after a retry), `denied_budget`, `denied_deadline`,
    `denied_streamed`, `exhausted` (calls that ran out of attempts).
    """

    def __init__(
        self,
        inner: Model,
        config: RetryConfig | None = None,
        *,
        budget: RetryBudget | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(inner)
        self.config = config or RetryConfig()
        self.budget = budget or RetryBudget.from_config(self.config)
        self._rng = rng or random.Random()
        self.calls = 0
        self.attempts = 0
        self.retries = 0
        self.recovered = 0
        self.denied_budget = 0
        self.denied_deadline = 0
        self.denied_streamed = 0
        self.exhausted = 0

    def backoff(self, retry_number: int, error: ModelError) -> float:
        """Seconds to wait before retry `retry_number` (1-based)."""
        cap = min(self.config.max_delay_s, self.config.base_delay_s * 2 ** (retry_number - 1))
        delay = self._rng.uniform(0.0, cap)  # full jitter: spreads a herd of callers apart
        if error.retry_after is not None:
            # The provider said when; a little jitter on top keeps callers from all
            # returning in the same millisecond.
            delay = error.retry_after + self._rng.uniform(0.0, min(cap, error.retry_after * 0.1))
        return delay

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        self.calls += 1
        self.budget.record_call()
        attempt = 0
        while True:
            attempt += 1
            self.attempts += 1
            streamed = False
            try:
                async with aclosing(self.inner.stream(request)) as items:
                    async for item in items:
                        if isinstance(item, TextDelta):
                            streamed = True
                        yield item
                if attempt > 1:
                    self.recovered += 1
                return
            except ModelError as error:
                if streamed:
                    if error.retryable:
                        self.denied_streamed += 1
                    raise mark_streamed(error) from error
                delay = self._should_retry(attempt, error, request)
                if delay is None:
                    raise
            self.retries += 1
            if delay > 0:
                await asyncio.sleep(delay)

    def _should_retry(self, attempt: int, error: ModelError, request: ModelRequest) -> float | None:
        """The backoff before the next attempt, or None to raise `error`."""
        if not error.retryable or not self.config.enabled:
            return None
        if attempt >= self.config.max_attempts:
            self.exhausted += 1
            return None
        if error.retry_after is not None and error.retry_after > self.config.max_retry_after_s:
            return None
        delay = self.backoff(attempt, error)
        left = seconds_left(request)
        # Check the deadline before the budget so a retry we would not make anyway does
        # not spend budget.
        if left is not None and delay >= left:
            self.denied_deadline += 1
            return None
        if not self.budget.try_spend():
            self.denied_budget += 1
            return None
        return delay

    def statistics(self) -> dict[str, int]:
        return {
            "calls": self.calls,
            "attempts": self.attempts,
            "retries": self.retries,
            "recovered": self.recovered,
            "denied_budget": self.denied_budget,
            "denied_deadline": self.denied_deadline,
            "denied_streamed": self.denied_streamed,
            "exhausted": self.exhausted,
        }
