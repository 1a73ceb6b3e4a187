"""FallbackModel: who serves when the primary fails, and when it must not hand over."""

from __future__ import annotations

import pytest

from roost.errors import ModelError
from roost.models.base import complete
from roost.models.wrappers import (
    BreakerConfig,
    BreakerModel,
    CircuitBreaker,
    FallbackConfig,
    FallbackModel,
)
from tests.models.wrappers import FakeClock, FakeModel, Partial, collect, error, request


@pytest.mark.parametrize(
    "failure",
    [error("overloaded"), error("rate_limited", status=429), error("context_overflow",
     retryable=False, status=400), error("timeout", status=None), error("malformed")],
)
async def test_secondary_serves_and_is_named(failure: ModelError) -> None:
    primary = FakeModel("fake:primary", outcomes=[failure])
    secondary = FakeModel("fake:secondary")
    model = FallbackModel([primary, secondary])
    response = await complete(model, request())
    assert response.model == "fake:secondary"
    assert model.served_by == {"fake:secondary": 1}
    assert model.fallbacks == 1
    assert primary.calls == secondary.calls == 1


async def test_open_circuit_hands_over_without_calling_the_primary() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("fake:primary", BreakerConfig(min_calls=1), clock=clock)
    breaker.force_open()
    primary = FakeModel("fake:primary")
    model = FallbackModel([BreakerModel(primary, breaker), FakeModel("fake:secondary")])
    response = await complete(model, request())
    assert response.model == "fake:secondary"
    assert primary.calls == 0


async def test_caller_mistakes_are_raised_not_handed_over() -> None:
    secondary = FakeModel("fake:secondary")
    model = FallbackModel(
        [FakeModel("fake:primary", outcomes=[error("auth", retryable=False, status=401)]), secondary]
    )
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert raised.value.kind == "auth"
    assert secondary.calls == 0


async def test_no_fallback_kinds_are_configurable() -> None:
    model = FallbackModel(
        [FakeModel("fake:primary", outcomes=[error("auth", retryable=False, status=401)]),
         FakeModel("fake:secondary")],
        FallbackConfig(no_fallback_kinds=frozenset()),
    )
    assert (await complete(model, request())).model == "fake:secondary"


async def test_no_silent_fallback_after_streamed_tokens() -> None:
    secondary = FakeModel("fake:secondary")
    model = FallbackModel([FakeModel("fake:primary", outcomes=[Partial(error())]), secondary])
    deltas = []
    with pytest.raises(ModelError) as raised:
        async for item in model.stream(request(stream=True)):
            deltas.append(item)
    assert len(deltas) == 1
    assert raised.value.retryable is False
    assert secondary.calls == 0
    assert model.failures == 1


async def test_all_failing_raises_one_error_naming_each() -> None:
    model = FallbackModel([
        FakeModel("fake:a", outcomes=[error("overloaded", retry_after=3)]),
        FakeModel("fake:b", outcomes=[error("rate_limited", status=429, retry_after=1)]),
    ])
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert "fake:a" in raised.value.message and "fake:b" in raised.value.message
    assert raised.value.kind == "rate_limited"
    assert raised.value.retry_after == 1
    assert raised.value.retryable


async def test_streams_from_the_model_that_answers() -> None:
    model = FallbackModel([FakeModel("fake:a", outcomes=[error()]),
                           FakeModel("fake:b", text="from b")])
    deltas, response = await collect(model, request(stream=True))
    assert "".join(deltas) == "from b "
    assert response.model == "fake:b"


async def test_expired_deadline_stops_the_chain() -> None:
    secondary = FakeModel("fake:b")
    model = FallbackModel([FakeModel("fake:a", outcomes=[error()], delay_s=0.05), secondary])
    with pytest.raises(ModelError):
        await complete(model, request(deadline_in=0.01))
    assert secondary.calls == 0
