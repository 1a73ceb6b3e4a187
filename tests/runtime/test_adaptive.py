from __future__ import annotations

import asyncio
import math
import time

import pytest

from roost.errors import ConfigError
from roost.runtime.adaptive import AdaptiveConfig, LoadLimiter, watch_loop


def feed(limiter: LoadLimiter, busy: float, samples: int, *, lag_s: float = 0.0,
         wanting: bool = True) -> list[int]:
    return [limiter.on_load(busy, lag_s, wanting=wanting) for _ in range(samples)]


def test_an_idle_loop_with_work_waiting_grows_the_limit_to_its_bound() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=20, min_limit=5, max_limit=200))
    limits = feed(limiter, 0.3, 100)
    assert limits == sorted(limits) and limits[0] > 20
    assert limits[-1] == 200  # bounded above


def test_growth_slows_near_the_target() -> None:
    fast = LoadLimiter(AdaptiveConfig(initial_limit=100, max_limit=10_000, target_busy=0.75))
    slow = LoadLimiter(AdaptiveConfig(initial_limit=100, max_limit=10_000, target_busy=0.75))
    fast.on_load(0.1, 0.0, wanting=True)
    slow.on_load(0.7, 0.0, wanting=True)
    assert fast.estimate - 100 > 5 * (slow.estimate - 100) > 0


def test_a_busy_loop_cuts_the_limit_down_to_its_bound() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=100, min_limit=10, max_limit=500,
                                         target_busy=0.75))
    limits = feed(limiter, 0.76, 7)  # just over the target: ~11% per sample
    assert limits == sorted(limits, reverse=True)
    assert 40 <= limits[-1] <= 48  # about halved in 7 samples ((0.9 x 0.75 / 0.76)^7 = 0.44)
    assert feed(limiter, 1.0, 100)[-1] == 10  # never below min_limit


def test_the_further_over_the_target_the_harder_the_cut() -> None:
    near = LoadLimiter(AdaptiveConfig(initial_limit=100, target_busy=0.75))
    far = LoadLimiter(AdaptiveConfig(initial_limit=100, target_busy=0.75))
    near.on_load(0.76, 0.0, wanting=True)
    far.on_load(1.0, 0.0, wanting=True)
    assert far.estimate == pytest.approx(100 * 0.9 * 0.75)
    assert near.estimate == pytest.approx(100 * 0.9 * 0.75 / 0.76)


def test_lag_cuts_even_when_the_cpu_looks_idle() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=100, max_lag_s=0.02))
    assert limiter.on_load(0.1, 0.05, wanting=True) == 90


def test_holds_when_nothing_waits_for_a_slot() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=100, max_limit=1000))
    assert feed(limiter, 0.1, 50, wanting=False)[-1] == 100


def test_recovers_after_overload_ends() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=400, max_limit=1000))
    low = feed(limiter, 0.99, 20)[-1]
    assert feed(limiter, 0.4, 20)[-1] > 2 * low


def test_ignores_broken_samples() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=40))
    for busy, lag in ((math.nan, 0.0), (0.5, math.inf), (math.inf, 0.0)):
        assert limiter.on_load(busy, lag, wanting=True) == 40


def test_initial_override_is_clamped() -> None:
    limiter = LoadLimiter(AdaptiveConfig(initial_limit=10, max_limit=100), initial_limit=500.0)
    assert limiter.limit == 100
    assert "LoadLimiter" in repr(limiter)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_limit": 0},
        {"min_limit": 10, "max_limit": 5, "initial_limit": 7},
        {"initial_limit": 5000},
        {"target_busy": 0.0},
        {"target_busy": 1.5},
        {"max_lag_s": 0.0},
        {"interval_s": -1.0},
        {"decrease": 1.0},
        {"increase": 0.0},
    ],
)
def test_config_is_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        AdaptiveConfig(**kwargs)  # type: ignore[arg-type]


async def test_watch_loop_reports_busy_and_lag() -> None:
    samples: list[tuple[float, float]] = []
    watcher = asyncio.create_task(watch_loop(0.02, lambda b, lag: samples.append((b, lag))))
    await asyncio.sleep(0.05)
    # The loop is blocked for 0.1 s of this thread's CPU (not of wall time: on a loaded
    # machine the spinning thread shares its core, and wall time says little of its work).
    spin_until = time.thread_time() + 0.1
    while time.thread_time() < spin_until:
        pass
    await asyncio.sleep(0.05)
    watcher.cancel()
    busiest = max(samples, key=lambda s: s[1])
    idle = min(b for b, _ in samples)
    assert busiest[1] >= 0.05  # the timer fired late
    # The thread was on the CPU for it: most of the time on an idle machine, and still far
    # more than in the idle samples (which say idle) on a loaded one.
    assert busiest[0] > 0.2 and busiest[0] > 4 * idle
    assert idle < 0.5
