from __future__ import annotations

import math

import pytest

from roost.errors import ConfigError
from roost.runtime.adaptive import AdaptiveConfig, GradientLimiter


def saturated(limiter: GradientLimiter, rtt: float, samples: int) -> list[int]:
    """Feed samples as if every permitted run were in flight."""
    return [limiter.on_sample(rtt, inflight=limiter.limit) for _ in range(samples)]


def test_flat_latency_grows_the_limit_up_to_its_bound() -> None:
    limiter = GradientLimiter(AdaptiveConfig(initial_limit=20, min_limit=5, max_limit=200))
    limits = saturated(limiter, 0.5, 400)
    assert limits == sorted(limits)  # never shrinks while latency is flat
    assert limiter.estimate > 20
    assert limits[-1] == 200  # bounded above


def test_rising_latency_shrinks_the_limit_down_to_its_bound() -> None:
    limiter = GradientLimiter(AdaptiveConfig(initial_limit=100, min_limit=10, max_limit=500))
    saturated(limiter, 0.5, 50)
    before = limiter.limit
    # Latency triples and stays there: the long average lags, so the gradient is < 1.
    after = saturated(limiter, 1.5, 20)
    assert after[-1] < before
    assert all(b <= a for a, b in zip(after, after[1:], strict=False))
    # Runs 60x slower than usual: the limit falls to the floor, never below. (Sustained, the
    # slow latency becomes the new normal as the long average catches up: it rises again.)
    limits = saturated(limiter, 30.0, 200)
    assert min(limits) == 10


def test_recovers_after_overload_ends() -> None:
    limiter = GradientLimiter(AdaptiveConfig(initial_limit=50, min_limit=5, max_limit=1000))
    saturated(limiter, 0.2, 50)
    saturated(limiter, 5.0, 300)  # a long overload drags the long average up
    low = limiter.limit
    saturated(limiter, 0.2, 100)  # latency back to normal
    assert limiter.limit > low


def test_holds_while_app_limited() -> None:
    limiter = GradientLimiter(AdaptiveConfig(initial_limit=100, max_limit=1000))
    for rtt in (0.5, 0.5, 5.0, 0.1):
        assert limiter.on_sample(rtt, inflight=10) == 100  # fewer than limit/2 in flight


def test_ignores_broken_samples() -> None:
    limiter = GradientLimiter(AdaptiveConfig(initial_limit=40))
    for rtt in (0.0, -1.0, math.nan, math.inf):
        assert limiter.on_sample(rtt, inflight=40) == 40
    assert limiter.long_rtt == 0.0


def test_fixed_queue_size_and_initial_override() -> None:
    config = AdaptiveConfig(initial_limit=10, max_limit=100, queue_size=0.0, smoothing=1.0)
    limiter = GradientLimiter(config, initial_limit=500.0)
    assert limiter.limit == 100  # the override is clamped into bounds
    saturated(limiter, 1.0, 5)
    assert limiter.limit == 100  # no headroom added, no latency change: it stays put
    assert "GradientLimiter" in repr(limiter)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_limit": 0},
        {"min_limit": 10, "max_limit": 5, "initial_limit": 7},
        {"initial_limit": 5000},
        {"smoothing": 0.0},
        {"tolerance": 0.9},
        {"long_window": 0},
        {"warmup": -1},
        {"queue_size": -1.0},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AdaptiveConfig(**kwargs)  # type: ignore[arg-type]
