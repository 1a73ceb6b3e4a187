"""RetryModel against fake models: what is retried, how long it waits, when it stops."""

from __future__ import annotations

import asyncio
import random

import pytest

from roost.errors import ModelError
from roost.models.base import complete
from roost.models.wrappers import RetryBudget, RetryConfig, RetryModel
from tests.models.wrappers import FakeClock, FakeModel, Partial, collect, error, request

FAST = RetryConfig(base_delay_s=0.0, max_delay_s=0.0)


async def test_recovers_from_retryable_errors() -> None:
    inner = FakeModel(outcomes=[error(), error("timeout"), "ok"])
    model = RetryModel(inner, FAST)
    response = await complete(model, request())
    assert response.message.content == "hello world"
    assert inner.calls == 3
    assert model.statistics() == {
        "calls": 1, "attempts": 3, "retries": 2, "recovered": 1, "denied_budget": 0,
        "denied_deadline": 0, "denied_streamed": 0, "exhausted": 0,
    }


async def test_gives_up_after_max_attempts() -> None:
    inner = FakeModel(outcomes=[error()])
    model = RetryModel(inner, FAST.model_copy(update={"max_attempts": 3}))
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert raised.value.kind == "overloaded"
    assert inner.calls == 3
    assert model.exhausted == 1


async def test_does_not_retry_non_retryable_errors() -> None:
    inner = FakeModel(outcomes=[error("bad_request", retryable=False, status=400), "ok"])
    model = RetryModel(inner, FAST)
    with pytest.raises(ModelError, match="bad_request"):
        await complete(model, request())
    assert inner.calls == 1


async def test_honours_retry_after() -> None:
    inner = FakeModel(outcomes=[error("rate_limited", status=429, retry_after=0.2), "ok"])
    model = RetryModel(inner, FAST)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await complete(model, request())
    assert loop.time() - started >= 0.2
    assert inner.calls == 2


async def test_retry_after_longer_than_allowed_is_not_waited_for() -> None:
    inner = FakeModel(outcomes=[error("rate_limited", status=429, retry_after=120), "ok"])
    model = RetryModel(inner, FAST.model_copy(update={"max_retry_after_s": 30}))
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert raised.value.retry_after == 120
    assert inner.calls == 1


async def test_never_sleeps_past_the_deadline() -> None:
    inner = FakeModel(outcomes=[error("overloaded", retry_after=5.0), "ok"])
    model = RetryModel(inner, FAST)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ModelError):
        await complete(model, request(deadline_in=1.0))
    assert loop.time() - started < 0.5  # raised at once, no 5 s (or 1 s) sleep
    assert inner.calls == 1
    assert model.denied_deadline == 1


async def test_no_retry_once_text_was_streamed() -> None:
    inner = FakeModel(outcomes=[Partial(error()), "ok"])
    model = RetryModel(inner, FAST)
    seen = []
    with pytest.raises(ModelError) as raised:
        async for item in model.stream(request(stream=True)):
            seen.append(item)
    assert [d.text for d in seen] == ["partial "]
    assert inner.calls == 1
    assert raised.value.retryable is False  # nobody further out may retry it either
    assert raised.value.kind == "overloaded"
    assert model.denied_streamed == 1


async def test_budget_caps_retries_at_a_fraction_of_calls() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_retries=3, window_s=10, clock=clock)
    inner = FakeModel(outcomes=[error()])
    model = RetryModel(inner, FAST, budget=budget)
    for _ in range(200):
        with pytest.raises(ModelError):
            await complete(model, request())
    # 200 calls in one window: 10% → 20 retries, not 400.
    assert model.retries == 20
    assert inner.calls == 220
    # Every call ended one way: out of attempts, or refused by the budget.
    assert model.denied_budget + model.exhausted == 200


async def test_budget_minimum_lets_a_quiet_system_retry_and_window_slides() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_retries=2, window_s=10, clock=clock)
    budget.record_call()
    assert budget.try_spend() and budget.try_spend()
    assert not budget.try_spend()
    clock.advance(11)  # the window has moved past those retries
    assert budget.retries_in_window == 0
    assert budget.try_spend()


def test_backoff_is_full_jitter_within_the_exponential_cap() -> None:
    model = RetryModel(FakeModel(), RetryConfig(base_delay_s=0.5, max_delay_s=3.0),
                       rng=random.Random(1))
    delays = {n: [model.backoff(n, error()) for _ in range(500)] for n in (1, 2, 3, 4, 5)}
    for n, caps in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (5, 3.0)):
        assert all(0.0 <= d <= caps for d in delays[n])
        assert max(delays[n]) > caps * 0.9  # spread over the whole range, not clustered
        assert min(delays[n]) < caps * 0.1
    with_retry_after = model.backoff(1, error(retry_after=2.0))
    assert 2.0 <= with_retry_after <= 2.0 + 0.5


async def test_cancelled_consumer_closes_the_inner_stream() -> None:
    inner = FakeModel(outcomes=["ok"])
    model = RetryModel(inner, FAST)
    stream = model.stream(request(stream=True))
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.text == "hello "
    await stream.aclose()  # type: ignore[attr-defined]
    assert inner.closed_streams == 1 and inner.in_flight == 0


async def test_streamed_success_passes_every_item_through() -> None:
    model = RetryModel(FakeModel(outcomes=[error(), "ok"]), FAST)
    deltas, response = await collect(model, request(stream=True))
    assert "".join(deltas) == "hello world "
    assert response.finish_reason == "stop"
