"""CircuitBreaker and BreakerModel: when the circuit opens, fails fast, probes and closes."""

from __future__ import annotations

import asyncio
import logging

import pytest

from roost.errors import ModelError
from roost.models.base import complete
from roost.models.wrappers import BreakerConfig, BreakerModel, CircuitBreaker
from tests.models.wrappers import FakeClock, FakeModel, Hang, error, request

CONFIG = BreakerConfig(window_size=10, min_calls=5, failure_rate_threshold=0.5, cooldown_s=30)


def breaker_for(clock: FakeClock, config: BreakerConfig = CONFIG, **kwargs: object) -> CircuitBreaker:
    return CircuitBreaker("fake:a", config, clock=clock, **kwargs)  # type: ignore[arg-type]


async def fail(model: BreakerModel, times: int) -> list[str]:
    kinds = []
    for _ in range(times):
        with pytest.raises(ModelError) as raised:
            await complete(model, request())
        kinds.append(raised.value.kind)
    return kinds


async def test_opens_when_failure_rate_crosses_threshold_then_fails_fast(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    transitions: list[tuple[str, str, str]] = []
    breaker = breaker_for(clock, on_transition=lambda *t: transitions.append(t))
    inner = FakeModel(outcomes=["ok", "ok", error(), error(), error()])
    model = BreakerModel(inner, breaker)
    await complete(model, request())
    await complete(model, request())
    with caplog.at_level(logging.WARNING, logger="roost.models.breaker"):
        assert await fail(model, 2) == ["overloaded", "overloaded"]
        assert breaker.state == "closed"  # 4 calls < min_calls
        assert await fail(model, 1) == ["overloaded"]  # 3/5 failed ≥ 50%
    assert breaker.state == "open"
    assert transitions == [("fake:a", "closed", "open")]
    assert "circuit fake:a opened" in caplog.text
    # Open: fail fast, the endpoint is not called.
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert raised.value.kind == "circuit_open" and raised.value.retryable is False
    assert raised.value.retry_after == pytest.approx(30)
    assert inner.calls == 5
    assert breaker.rejected == 1


async def test_half_open_probe_success_closes() -> None:
    clock = FakeClock()
    breaker = breaker_for(clock)
    inner = FakeModel(outcomes=lambda n: error() if n <= 5 else "ok")
    model = BreakerModel(inner, breaker)
    await fail(model, 5)
    assert breaker.state == "open"
    clock.advance(29)
    assert await fail(model, 1) == ["circuit_open"]
    clock.advance(1)
    await complete(model, request())  # the probe
    assert breaker.state == "closed"
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}
    assert breaker.failure_rate() == 0.0  # a fresh window after closing


async def test_half_open_probe_failure_reopens_and_restarts_cooldown() -> None:
    clock = FakeClock()
    breaker = breaker_for(clock)
    model = BreakerModel(FakeModel(outcomes=[error()]), breaker)
    await fail(model, 5)
    clock.advance(30)
    assert await fail(model, 1) == ["overloaded"]  # the probe went through and failed
    assert breaker.state == "open"
    clock.advance(10)
    assert await fail(model, 1) == ["circuit_open"]
    assert breaker.transitions["half_open->open"] == 1


async def test_half_open_admits_only_the_configured_probes() -> None:
    clock = FakeClock()
    breaker = breaker_for(clock, CONFIG.model_copy(update={"half_open_probes": 2}))
    inner = FakeModel(outcomes=lambda n: error() if n <= 5 else Hang())
    model = BreakerModel(inner, breaker)
    await fail(model, 5)
    clock.advance(30)
    probes = [asyncio.create_task(complete(model, request())) for _ in range(2)]
    await inner.wait_in_flight(2)
    assert await fail(model, 1) == ["circuit_open"]  # a third caller is not a probe
    for probe in probes:
        probe.cancel()
    await asyncio.gather(*probes, return_exceptions=True)
    # Cancelled probes say nothing about the endpoint, but give their slots back.
    assert breaker.state == "half_open"
    inner.outcomes = ["ok"]
    await complete(model, request())
    assert breaker.state == "half_open"  # one of two successes
    await complete(model, request())
    assert breaker.state == "closed"


async def test_caller_errors_do_not_count_as_endpoint_failures() -> None:
    clock = FakeClock()
    breaker = breaker_for(clock)
    model = BreakerModel(
        FakeModel(outcomes=[error("bad_request", retryable=False, status=400)]), breaker
    )
    await fail(model, 20)
    assert breaker.state == "closed"
    assert breaker.failure_rate() == 0.0


async def test_count_window_forgets_old_failures() -> None:
    clock = FakeClock()
    breaker = breaker_for(clock)
    outcomes = [error()] * 4 + ["ok"] * 10 + [error()] * 4
    model = BreakerModel(FakeModel(outcomes=lambda n: outcomes[n - 1]), breaker)
    for outcome in outcomes:
        if outcome == "ok":
            await complete(model, request())
        else:
            await fail(model, 1)
    # 4 failures in the last 10 calls: under 50%, so still closed.
    assert breaker.state == "closed"
    assert breaker.failure_rate() == pytest.approx(0.4)


async def test_time_window_counts_only_recent_calls() -> None:
    clock = FakeClock()
    config = BreakerConfig(window="time", window_s=10, min_calls=4, failure_rate_threshold=0.5)
    breaker = breaker_for(clock, config)
    model = BreakerModel(FakeModel(outcomes=[error()]), breaker)
    await fail(model, 3)
    clock.advance(11)  # those three age out
    await fail(model, 3)
    assert breaker.state == "closed"
    await fail(model, 1)
    assert breaker.state == "open"


def test_manual_controls() -> None:
    breaker = breaker_for(FakeClock())
    breaker.force_open()
    assert breaker.state == "open"
    breaker.reset()
    assert breaker.state == "closed"


async def test_a_probe_from_an_earlier_half_open_episode_is_ignored() -> None:
    clock = FakeClock()
    breaker = breaker_for(clock)
    breaker.force_open()
    clock.advance(30)
    stale = breaker.acquire()  # probe of episode 1
    assert stale is not None
    breaker.record_failure(stale, error())  # episode 1 fails
    assert breaker.state == "open"
    clock.advance(30)
    fresh = breaker.acquire()  # probe of episode 2
    assert fresh is not None and fresh != stale
    breaker.record_ignored(stale)  # late news from episode 1 frees nothing…
    breaker.record_success(stale)  # …and counts for nothing
    assert breaker.state == "half_open"
    assert await fail(BreakerModel(FakeModel(), breaker), 1) == ["circuit_open"]  # slot still taken
    breaker.record_success(fresh)
    assert breaker.state == "closed"
