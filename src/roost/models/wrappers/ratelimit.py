"""Rate limit: requests and tokens per minute, client side, adapting to upstream 429s.

    limiter = RateLimiter("openai:gpt-4o-mini", RateLimitConfig(requests_per_minute=500,
                                                                 tokens_per_minute=200_000))
    model = RateLimitModel(provider, limiter)

Two token buckets (requests, tokens). A call reserves one request and its estimated tokens
up front — the buckets may go negative, which queues callers in arrival order without a
waiter list (golang.org/x/time/rate's reservations work the same way) — then sleeps until
its reservation is covered. A caller whose wait would pass `max_wait_s` or its deadline fails
fast with `ModelError(kind="rate_limited")` and reserves nothing; a cancelled waiter gives its
reservation back. After the call the token estimate is corrected by the reported usage.

Upstream 429s mean our idea of the limit is too high: the allowed rate is multiplied by
`aimd_decrease` (at most once per second, so a burst of 429s from one overload counts once)
and the bucket pauses for the Retry-After; each success adds back `aimd_increase` of the
configured rate (additive increase, multiplicative decrease, as TCP does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing

import msgspec

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, ModelResponse, StreamItem
from roost.models.wrappers.base import Clock, WrapperModel, error_kind, seconds_left
from roost.models.wrappers.config import RateLimitConfig


class _Bucket:
    """A token bucket whose level may go negative (outstanding reservations)."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0  # per second, before AIMD scaling
        self.capacity = max(1.0, self.rate * burst_s)
        self.level = self.capacity
        self.stamp = now

    def refill(self, now: float, factor: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate * factor)
            self.stamp = now

    def wait_for(self, amount: float, factor: float) -> float:
        """Seconds until `amount` more can be taken (0 when it can be taken now)."""
        deficit = amount - self.level
        return 0.0 if deficit <= 0 else deficit / (self.rate * factor)


class RateLimiter:
    """Shared per provider (or per model) by every wrapper that calls it.

    Statistics: `admitted`, `rejected`, `waited` (calls that had to wait), `wait_seconds`,
    `backoffs` (AIMD decreases), `factor` (the current fraction of the configured rate),
    `blocked_until` (clock time until which an upstream Retry-After pauses admission).
    """

    def __init__(
        self,
        name: str,
        config: RateLimitConfig,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        now = clock()
        self._requests = (
            _Bucket(config.requests_per_minute, config.burst_s, now)
            if config.requests_per_minute
            else None
        )
        self._tokens = (
            _Bucket(config.tokens_per_minute, config.burst_s, now)
            if config.tokens_per_minute
            else None
        )
        self.factor = 1.0
        self.blocked_until = 0.0
        self._last_backoff = -1e9
        self.admitted = 0
        self.rejected = 0
        self.waited = 0
        self.wait_seconds = 0.0
        self.backoffs = 0

    def estimate_tokens(self, request: ModelRequest) -> int:
        """Prompt characters / chars_per_token + the output the request may produce."""
        chars = 0
        for message in request.messages:
            chars += len(message.content or "")
            for call in message.tool_calls or ():
                chars += len(call.name) + len(call.arguments)
        for tool in request.tools:
            chars += len(tool.name) + len(tool.description) + len(msgspec.json.encode(tool.parameters))
        output = request.settings.get("max_tokens") or request.settings.get("max_completion_tokens")
        if not isinstance(output, int):
            output = self.config.default_output_tokens
        return int(chars / self.config.chars_per_token) + output

    def _refill(self, now: float) -> None:
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.refill(now, self.factor)

    def reserve(self, tokens: int, max_wait: float) -> tuple[float, int]:
        """Reserve one request and `tokens` tokens; returns (seconds to wait, tokens taken).

        Raises `ModelError(kind="rate_limited")` when the wait would exceed `max_wait`.
        """
        now = self._clock()
        self._refill(now)
        if self._tokens is not None:
            # A request larger than the whole bucket could never run: let it through once
            # the bucket is full rather than never.
            tokens = min(tokens, int(self._tokens.capacity))
        wait = max(0.0, self.blocked_until - now)
        if self._requests is not None:
            wait = max(wait, self._requests.wait_for(1, self.factor))
        if self._tokens is not None:
            wait = max(wait, self._tokens.wait_for(tokens, self.factor))
        if wait > max_wait:
            self.rejected += 1
            raise ModelError(
                f"{self.name}: client rate limit reached (would wait {wait:.2f}s, "
                f"{max_wait:.2f}s allowed)",
                retryable=False,  # we already waited as long as the caller can
                retry_after=wait,
                provider=self.name,
                kind="rate_limited",
            )
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens
        self.admitted += 1
        if wait > 0:
            self.waited += 1
            self.wait_seconds += wait
        return wait, tokens

    def cancel(self, tokens: int) -> None:
        """Give back a reservation that was never used (the waiter was cancelled)."""
        self._refill(self._clock())
        if self._requests is not None:
            self._requests.level = min(self._requests.capacity, self._requests.level + 1)
        self.settle(tokens, 0)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known."""
        if self._tokens is None or estimated == actual:
            return
        self._refill(self._clock())
        self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated - actual)

    def on_success(self) -> None:
        if self.factor < 1.0:
            self.factor = min(1.0, self.factor + self.config.aimd_increase)

    def on_rate_limited(self, retry_after: float | None) -> None:
        now = self._clock()
        self._refill(now)
        if retry_after:
            self.blocked_until = max(self.blocked_until, now + retry_after)
        # One overload episode produces a burst of 429s (every call in flight gets one);
        # halving once per burst, not once per 429, keeps the rate from collapsing to the
        # floor in a single second.
        if now - self._last_backoff < 1.0:
            return
        self._last_backoff = now
        self.backoffs += 1
        self.factor = max(self.config.aimd_min_fraction, self.factor * self.config.aimd_decrease)
        # The bucket's saved-up burst was what overran the upstream limit: drop it.
        for bucket in (self._requests, self._tokens):
            if bucket is not None:
                bucket.level = min(bucket.level, 0.0)

    @property
    def requests_per_minute(self) -> float | None:
        """The rate currently allowed (after AIMD)."""
        if self.config.requests_per_minute is None:
            return None
        return self.config.requests_per_minute * self.factor

    @property
    def tokens_per_minute(self) -> float | None:
        if self.config.tokens_per_minute is None:
            return None
        return self.config.tokens_per_minute * self.factor


class RateLimitModel(WrapperModel):
    """Waits for `limiter` capacity before each call of `inner` (see the module docstring)."""

    def __init__(self, inner: Model, limiter: RateLimiter) -> None:
        super().__init__(inner)
        self.limiter = limiter

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        limiter = self.limiter
        estimated = limiter.estimate_tokens(request)
        max_wait = limiter.config.max_wait_s
        left = seconds_left(request)
        if left is not None:
            max_wait = min(max_wait, max(0.0, left))
        wait, reserved = limiter.reserve(estimated, max_wait)
        if wait > 0:
            try:
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                limiter.cancel(reserved)
                raise
        # A call that fails or is cancelled keeps its estimate: the provider may have
        # counted the prompt, and erring on the slow side is what a limiter is for.
        try:
            async with aclosing(self.inner.stream(request)) as items:
                async for item in items:
                    if isinstance(item, ModelResponse):
                        limiter.settle(reserved, item.usage.total_tokens or reserved)
                        limiter.on_success()
                    yield item
        except ModelError as error:
            # Only an upstream 429 (it has a status code) says the limit is too high; a
            # nested limiter's own fail-fast does not.
            if error.status_code is not None and error_kind(error) == "rate_limited":
                limiter.on_rate_limited(error.retry_after)
            raise
