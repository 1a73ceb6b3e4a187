"""RouterModel: traffic follows latency, errors and load; failing backends are ejected."""

from __future__ import annotations

import asyncio
import random

import pytest

from roost.errors import ModelError
from roost.models.base import complete
from roost.models.wrappers import RouterConfig, RouterModel
from tests.models.wrappers import FakeClock, FakeModel, Hang, error, request


async def test_weighted_shifts_traffic_to_the_faster_backend() -> None:
    fast = FakeModel("fake:fast", delay_s=0.002)
    slow = FakeModel("fake:slow", delay_s=0.03)
    router = RouterModel("alias", [fast, slow], RouterConfig(strategy="weighted"),
                         rng=random.Random(3))
    for _ in range(60):
        await complete(router, request())
    assert fast.calls > 3 * slow.calls
    weights = router.weights()
    assert weights["fake:fast"] > 0.8
    assert slow.calls >= 1  # the slow one still gets measured


async def test_least_latency_tries_each_then_sticks_to_the_fastest() -> None:
    fast = FakeModel("fake:fast", delay_s=0.001)
    slow = FakeModel("fake:slow", delay_s=0.02)
    router = RouterModel("alias", [slow, fast], RouterConfig(strategy="least_latency"))
    for _ in range(10):
        await complete(router, request())
    assert slow.calls == 1 and fast.calls == 9


async def test_least_loaded_spreads_concurrent_calls() -> None:
    backends = [FakeModel(f"fake:{i}", delay_s=0.02) for i in range(3)]
    router = RouterModel("alias", backends, RouterConfig(strategy="least_loaded"))
    await asyncio.gather(*(complete(router, request()) for _ in range(6)))
    assert [b.calls for b in backends] == [2, 2, 2]
    assert all(b.max_in_flight == 2 for b in backends)


async def test_failing_backend_is_ejected_then_retried_later() -> None:
    clock = FakeClock()
    flaky = FakeModel("fake:flaky", outcomes=[error()])
    good = FakeModel("fake:good")
    config = RouterConfig(strategy="least_latency", eject_after_failures=2, eject_s=10,
                          max_failover=1)
    router = RouterModel("alias", [flaky, good], config, clock=clock, rng=random.Random(0))
    stats = {b.model.name: b for b in router.backends}
    # Failover keeps every call succeeding while the flaky one is found out.
    for _ in range(6):
        response = await complete(router, request())
        assert response.model == "fake:good"
    assert stats["fake:flaky"].ejected_until > clock()
    assert router.weights()["fake:flaky"] == 0.0
    calls = flaky.calls
    for _ in range(5):
        await complete(router, request())
    assert flaky.calls == calls  # ejected: no traffic
    clock.advance(10)
    flaky.outcomes = ["ok"]
    stats["fake:good"].latency_ewma = 1.0  # make it the preferred one again
    await complete(router, request())
    assert flaky.calls == calls + 1
    assert stats["fake:flaky"].ejected_until == 0.0
    assert stats["fake:flaky"].consecutive_failures == 0


async def test_error_rate_lowers_weight() -> None:
    flaky = FakeModel("fake:flaky", outcomes=lambda n: error() if n % 2 else "ok")
    good = FakeModel("fake:good")
    router = RouterModel("alias", [flaky, good],
                         RouterConfig(eject_after_failures=100, max_failover=1),
                         rng=random.Random(1))
    for _ in range(40):
        await complete(router, request())
    assert router.backends[0].error_ewma > 0.2
    assert router.weights()["fake:good"] > router.weights()["fake:flaky"]


async def test_caller_errors_neither_fail_over_nor_count() -> None:
    a = FakeModel("fake:a", outcomes=[error("bad_request", retryable=False, status=400)])
    b = FakeModel("fake:b", outcomes=[error("bad_request", retryable=False, status=400)])
    router = RouterModel("alias", [a, b], RouterConfig(strategy="least_loaded"))
    with pytest.raises(ModelError):
        await complete(router, request())
    assert a.calls + b.calls == 1
    assert all(s.failures == 0 and s.in_flight == 0 for s in router.backends)


async def test_all_backends_failing_raises() -> None:
    router = RouterModel("alias", [FakeModel("fake:a", outcomes=[error()]),
                                   FakeModel("fake:b", outcomes=[error()])],
                         RouterConfig(max_failover=1))
    with pytest.raises(ModelError):
        await complete(router, request())
    assert router.failovers == 1


async def test_cancellation_releases_in_flight() -> None:
    hang = FakeModel("fake:hang", outcomes=[Hang()])
    router = RouterModel("alias", [hang])
    task = asyncio.create_task(complete(router, request()))
    await hang.wait_in_flight(1)
    assert router.backends[0].in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert router.backends[0].in_flight == 0 and hang.in_flight == 0


def test_config_rejects_bad_weights() -> None:
    with pytest.raises(ValueError):
        RouterConfig(backends=["a"], weights=[0.0])
    with pytest.raises(ValueError):
        RouterModel("x", [FakeModel()], weights=[1.0, 2.0])
