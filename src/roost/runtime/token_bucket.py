"""A token bucket: `rate` tokens per second, holding at most `burst`.

It refills lazily from the timestamp it is handed on each access, so a million idle tenants
cost a million small objects and no background task. The caller owns the clock (admission
reads it once per decision and passes it to everything it touches).

    bucket = TokenBucket(rate=2.0, burst=5, now=clock())
    wait = bucket.try_take(clock())
    if wait:                      # empty: nothing was taken
        reject(retry_after=wait)  # seconds until one token is back
"""

from __future__ import annotations

import math

from roost.errors import ConfigError


class TokenBucket:
    """`rate` tokens/s up to `burst`, starting full. Not thread-safe: one event loop owns it."""

    __slots__ = ("_rate", "_burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: float, *, now: float) -> None:
        _check(rate, burst)
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = self._burst
        self._stamp = now

    @property
    def rate(self) -> float:
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        # An injected clock may step backwards; never refill on a negative interval (that
        # would drain the bucket) and keep the later stamp so the time is not counted twice.
        if elapsed > 0.0:
            tokens = self._tokens + elapsed * self._rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._stamp = now

    def try_take(self, now: float, n: float = 1.0) -> float:
        """Take `n` tokens and return 0.0, or take nothing and return the seconds until `n`
        tokens are available (`math.inf` when `n` exceeds the burst: it never will be)."""
        self._refill(now)
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        if n > self._burst:
            return math.inf
        return (n - self._tokens) / self._rate

    def tokens(self, now: float) -> float:
        """Tokens available at `now`."""
        self._refill(now)
        return self._tokens

    def is_full(self, now: float) -> bool:
        """True when forgetting this bucket and starting a fresh (full) one changes nothing."""
        return self.tokens(now) >= self._burst

    def reconfigure(self, rate: float, burst: float, *, now: float) -> None:
        """Change rate and burst in place (hot reload). Time already elapsed refills at the
        old rate; tokens above the new burst are dropped, so a reload never grants a burst."""
        _check(rate, burst)
        self._refill(now)
        self._rate = float(rate)
        self._burst = float(burst)
        if self._tokens > self._burst:
            self._tokens = self._burst

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self._rate}, burst={self._burst}, tokens={self._tokens:.3f})"


def _check(rate: float, burst: float) -> None:
    if not (rate > 0.0 and math.isfinite(rate)):
        raise ConfigError(f"token bucket rate must be a positive number, got {rate!r}")
    if not (burst >= 1.0 and math.isfinite(burst)):
        raise ConfigError(f"token bucket burst must be at least 1, got {burst!r}")
