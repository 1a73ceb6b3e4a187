from __future__ import annotations

import math

import pytest

from roost.errors import ConfigError
from roost.runtime.token_bucket import TokenBucket


def test_starts_full_then_refuses_with_the_refill_time() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.try_take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    # Empty: nothing is taken, and one token is 1/rate seconds away.
    assert bucket.try_take(100.0) == pytest.approx(0.5)
    assert bucket.try_take(100.0) == pytest.approx(0.5)
    assert bucket.tokens(100.0) == 0.0


def test_refills_lazily_at_the_rate() -> None:
    bucket = TokenBucket(rate=4.0, burst=4, now=0.0)
    for _ in range(4):
        assert bucket.try_take(0.0) == 0.0
    assert bucket.try_take(0.1) == pytest.approx(0.15)  # 0.4 tokens back, 0.6 to go at 4/s
    assert bucket.try_take(0.25) == 0.0
    assert bucket.tokens(0.25) == pytest.approx(0.0)
    assert bucket.try_take(0.5) == 0.0


def test_never_holds_more_than_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert bucket.tokens(1_000_000.0) == 2.0
    assert bucket.is_full(1_000_000.0)
    assert bucket.try_take(1_000_000.0) == 0.0
    assert bucket.try_take(1_000_000.0) == 0.0
    assert bucket.try_take(1_000_000.0) > 0.0
    assert not bucket.is_full(1_000_000.0)


def test_a_clock_stepping_back_neither_drains_nor_double_counts() -> None:
    bucket = TokenBucket(rate=1.0, burst=5, now=10.0)
    for _ in range(5):
        bucket.try_take(10.0)
    assert bucket.tokens(8.0) == 0.0  # backwards: unchanged
    assert bucket.tokens(11.0) == pytest.approx(1.0)  # counted from 10, not from 8


def test_taking_more_than_the_burst_never_succeeds() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.try_take(0.0, n=3) == math.inf
    assert bucket.tokens(0.0) == 2.0  # nothing taken


def test_reconfigure_keeps_tokens_within_the_new_burst() -> None:
    bucket = TokenBucket(rate=1.0, burst=10, now=0.0)
    bucket.reconfigure(rate=5.0, burst=3, now=0.0)
    assert bucket.tokens(0.0) == 3.0
    for _ in range(3):
        bucket.try_take(0.0)
    assert bucket.try_take(0.0) == pytest.approx(0.2)
    # Elapsed time before a reconfigure refills at the old rate.
    bucket.reconfigure(rate=100.0, burst=3, now=0.1)
    assert bucket.tokens(0.1) == pytest.approx(0.5)
    assert bucket.rate == 100.0
    assert bucket.burst == 3.0


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.nan, 1), (math.inf, 1), (1.0, 0), (1.0, 0.5)]
)
def test_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ConfigError):
        TokenBucket(rate=rate, burst=burst, now=0.0)
