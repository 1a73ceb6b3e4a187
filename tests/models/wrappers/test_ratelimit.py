"""RateLimiter and RateLimitModel: buckets, waiting within the deadline, AIMD on 429s."""

from __future__ import annotations

import asyncio

import pytest

from roost.errors import ModelError
from roost.models.base import ToolSpec, complete
from roost.models.wrappers import RateLimitConfig, RateLimiter, RateLimitModel
from tests.models.wrappers import FakeClock, FakeModel, error, request


def test_requests_bucket_admits_a_burst_then_queues_in_order() -> None:
    clock = FakeClock()
    limiter = RateLimiter("m", RateLimitConfig(requests_per_minute=60, burst_s=3), clock=clock)
    waits = [limiter.reserve(0, max_wait=10)[0] for _ in range(5)]
    # 3 in the burst, then one a second: the 4th waits 1 s, the 5th 2 s.
    assert waits == [0, 0, 0, pytest.approx(1.0), pytest.approx(2.0)]
    with pytest.raises(ModelError) as raised:
        limiter.reserve(0, max_wait=2.5)  # would need 3 s
    assert raised.value.kind == "rate_limited" and not raised.value.retryable
    assert raised.value.retry_after == pytest.approx(3.0)
    assert limiter.rejected == 1 and limiter.admitted == 5
    clock.advance(3)
    assert limiter.reserve(0, max_wait=0)[0] == 0


def test_tokens_bucket_uses_the_estimate_then_the_real_usage() -> None:
    clock = FakeClock()
    config = RateLimitConfig(tokens_per_minute=6000, burst_s=1, default_output_tokens=50)
    limiter = RateLimiter("m", config, clock=clock)  # 100 tokens/s, bucket of 100
    req = request("x" * 200)  # 200 chars / 4 = 50 prompt tokens + 50 expected output
    assert limiter.estimate_tokens(req) == 100
    wait, reserved = limiter.reserve(limiter.estimate_tokens(req), max_wait=10)
    assert (wait, reserved) == (0, 100)
    assert limiter.reserve(50, max_wait=10)[0] == pytest.approx(0.5)
    # The first call really used 20 tokens: 80 come back, the next 50 need no wait.
    limiter.settle(100, 20)
    limiter.settle(50, 50)
    assert limiter.reserve(30, max_wait=0)[0] == 0


def test_estimate_counts_tools_and_max_tokens() -> None:
    limiter = RateLimiter("m", RateLimitConfig(tokens_per_minute=1000, chars_per_token=1))
    req = request("abcd", max_tokens=7)
    req.tools = [ToolSpec(name="ab", description="cd", parameters={})]
    assert limiter.estimate_tokens(req) == 4 + 2 + 2 + 2 + 7


def test_aimd_halves_once_per_burst_and_recovers_additively() -> None:
    clock = FakeClock()
    config = RateLimitConfig(requests_per_minute=600, aimd_increase=0.1)
    limiter = RateLimiter("m", config, clock=clock)
    limiter.on_rate_limited(None)
    limiter.on_rate_limited(None)  # same burst: counted once
    assert limiter.factor == 0.5 and limiter.requests_per_minute == 300
    clock.advance(1.5)
    limiter.on_rate_limited(None)
    assert limiter.factor == 0.25 and limiter.backoffs == 2
    for _ in range(3):
        limiter.on_success()
    assert limiter.factor == pytest.approx(0.55)
    for _ in range(100):
        limiter.on_success()
    assert limiter.factor == 1.0


def test_retry_after_pauses_admission() -> None:
    clock = FakeClock()
    limiter = RateLimiter("m", RateLimitConfig(requests_per_minute=6000), clock=clock)
    limiter.on_rate_limited(2.0)
    assert limiter.reserve(0, max_wait=10)[0] == pytest.approx(2.0)


async def test_model_waits_within_the_deadline_or_fails_fast() -> None:
    limiter = RateLimiter("m", RateLimitConfig(requests_per_minute=600, burst_s=0.1))  # 10/s, 1 burst
    inner = FakeModel()
    model = RateLimitModel(inner, limiter)
    loop = asyncio.get_running_loop()
    await complete(model, request())
    started = loop.time()
    await complete(model, request())  # waits ~0.1 s for the next token
    assert loop.time() - started >= 0.08
    with pytest.raises(ModelError) as raised:
        await complete(model, request(deadline_in=0.01))  # needs ~0.1 s: fails fast
    assert raised.value.kind == "rate_limited"
    assert loop.time() - started < 0.15
    assert inner.calls == 2


async def test_upstream_429_backs_off_the_limiter() -> None:
    limiter = RateLimiter("m", RateLimitConfig(requests_per_minute=6000))
    model = RateLimitModel(FakeModel(outcomes=[error("rate_limited", status=429, retry_after=0.05)]), limiter)
    with pytest.raises(ModelError):
        await complete(model, request())
    assert limiter.factor == 0.5 and limiter.backoffs == 1
    assert limiter.blocked_until > 0


async def test_cancelled_waiter_returns_its_reservation() -> None:
    clock = FakeClock()
    limiter = RateLimiter("m", RateLimitConfig(requests_per_minute=60, burst_s=1), clock=clock)
    model = RateLimitModel(FakeModel(), limiter)
    await complete(model, request())  # empties the bucket
    waiter = asyncio.create_task(complete(model, request()))
    await asyncio.sleep(0)  # one loop turn: the task reserves, then sleeps on it
    assert limiter.admitted == 2 and limiter.waited == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    clock.advance(1)
    # Had the cancelled waiter kept its slot, this would wait another second.
    assert limiter.reserve(0, max_wait=0)[0] == 0


async def test_usage_corrects_the_token_bucket() -> None:
    clock = FakeClock()
    config = RateLimitConfig(tokens_per_minute=60_000, burst_s=1, default_output_tokens=500)
    limiter = RateLimiter("m", config, clock=clock)  # bucket of 1000 tokens
    model = RateLimitModel(FakeModel(), limiter)  # reports 15 tokens of usage
    for _ in range(10):  # each estimated at ~500, each really 15
        await complete(model, request())
    assert limiter.waited == 0
