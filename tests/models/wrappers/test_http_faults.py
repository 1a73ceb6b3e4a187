"""Every wrapper over real HTTP, against the mock OpenAI and Anthropic servers with faults."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import pytest

from roost.errors import ModelError
from roost.models.anthropic import AnthropicModel
from roost.models.base import Model, TextDelta, complete
from roost.models.openai_compat import OpenAICompatModel
from roost.models.wrappers import (
    BreakerConfig,
    BreakerModel,
    CircuitBreaker,
    FallbackModel,
    PolicyState,
    RateLimitConfig,
    RateLimiter,
    RateLimitModel,
    RetryBudget,
    RetryConfig,
    RetryModel,
    RouterConfig,
    RouterModel,
    apply_policies,
)
from roost.testing.faults import FaultInjector, FaultPlan
from roost.testing.mock_anthropic import MockAnthropicServer
from roost.testing.mock_openai import MockOpenAIServer, MockStats
from tests.models.wrappers import FakeClock, request

FAST_RETRY = RetryConfig(base_delay_s=0.01, max_delay_s=0.05)


@dataclass
class Backend:
    """One mock server and a fresh provider model pointed at it."""

    faults: FaultInjector
    stats: MockStats
    make: Callable[..., Model]
    server: MockOpenAIServer | MockAnthropicServer


class Backends:
    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack

    async def start(self, kind: str, **server_options: float) -> Backend:
        if kind == "openai":
            server: MockOpenAIServer | MockAnthropicServer = await self._stack.enter_async_context(
                MockOpenAIServer(**server_options))  # type: ignore[arg-type]

            def make(**options: float) -> Model:
                return self._owned(OpenAICompatModel("mock-gpt", base_url=server.base_url,
                                                     provider=f"openai{server.port}", **options))
        else:
            server = await self._stack.enter_async_context(MockAnthropicServer(**server_options))  # type: ignore[arg-type]

            def make(**options: float) -> Model:
                return self._owned(AnthropicModel("mock-claude", base_url=server.url,
                                                  provider=f"anthropic{server.port}", **options))
        return Backend(server.faults, server.stats, make, server)

    def _owned(self, model: OpenAICompatModel | AnthropicModel) -> Model:
        self._stack.push_async_callback(model.aclose)
        return model


@pytest.fixture
async def backends() -> AsyncIterator[Backends]:
    async with AsyncExitStack() as stack:
        yield Backends(stack)


KINDS = ["openai", "anthropic"]


# --- retry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["http_500", "http_503", "http_429"])
async def test_retry_recovers(backends: Backends, kind: str, mode: str) -> None:
    backend = await backends.start(kind)
    backend.faults.set(FaultPlan(mode, count=2, retry_after_s=0.1))  # type: ignore[arg-type]
    model = RetryModel(backend.make(), FAST_RETRY)
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await complete(model, request("hello"))
    assert response.message.content == "You said: hello"
    assert backend.stats.chat_requests == 3 and model.recovered == 1
    if mode == "http_429":
        assert loop.time() - started >= 0.2  # two Retry-After waits of 0.1 s


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_stops_at_the_budget(backends: Backends, kind: str) -> None:
    backend = await backends.start(kind)
    backend.faults.set(FaultPlan("http_503"))
    budget = RetryBudget(ratio=0.1, min_retries=2, window_s=60)
    model = RetryModel(backend.make(), RetryConfig(base_delay_s=0, max_delay_s=0), budget=budget)
    for _ in range(40):
        with pytest.raises(ModelError):
            await complete(model, request())
    # 40 calls may add at most max(2, 10% × 40) = 4 retries: the outage is not amplified.
    assert model.retries == 4
    assert backend.stats.chat_requests == 44


@pytest.mark.parametrize("kind", KINDS)
async def test_retry_never_waits_past_the_deadline(backends: Backends, kind: str) -> None:
    backend = await backends.start(kind)
    backend.faults.set(FaultPlan("http_429", retry_after_s=5))
    model = RetryModel(backend.make(), FAST_RETRY)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ModelError) as raised:
        await complete(model, request(deadline_in=1.0))
    assert raised.value.retry_after == 5
    assert loop.time() - started < 0.5
    assert backend.stats.chat_requests == 1 and model.denied_deadline == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_no_retry_after_streamed_tokens(backends: Backends, kind: str) -> None:
    backend = await backends.start(kind, token_delay_s=0.002)
    backend.faults.set(FaultPlan("reset_mid_stream", count=1))
    model = RetryModel(backend.make(), FAST_RETRY)
    deltas = []
    with pytest.raises(ModelError) as raised:
        async for item in model.stream(request("one two three four five six seven eight", stream=True)):
            if isinstance(item, TextDelta):
                deltas.append(item.text)
    assert deltas and not raised.value.retryable
    assert backend.stats.chat_requests == 1 and model.retries == 0


# --- breaker -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["http_500", "malformed_json", "reset_mid_stream"])
async def test_breaker_opens_within_its_window_and_closes_after_recovery(
    backends: Backends, kind: str, mode: str
) -> None:
    backend = await backends.start(kind)
    clock = FakeClock()
    breaker = CircuitBreaker("primary", BreakerConfig(window_size=10, min_calls=5, cooldown_s=5),
                             clock=clock)
    model = BreakerModel(backend.make(), breaker)
    backend.faults.set(FaultPlan(mode))  # type: ignore[arg-type]
    for _ in range(5):
        with pytest.raises(ModelError):
            await complete(model, request())
    assert breaker.state == "open"
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert raised.value.kind == "circuit_open"
    assert backend.stats.chat_requests == 5  # failing fast: the server was not called
    backend.faults.clear()  # the endpoint recovers
    clock.advance(5)
    await complete(model, request())  # the half-open probe
    assert breaker.state == "closed"
    assert breaker.transitions == {"closed->open": 1, "open->half_open": 1, "half_open->closed": 1}


@pytest.mark.parametrize("kind", KINDS)
async def test_breaker_reopens_when_the_probe_fails(backends: Backends, kind: str) -> None:
    backend = await backends.start(kind)
    clock = FakeClock()
    breaker = CircuitBreaker("primary", BreakerConfig(min_calls=2, cooldown_s=5), clock=clock)
    model = BreakerModel(backend.make(), breaker)
    backend.faults.set(FaultPlan("http_503"))
    for _ in range(2):
        with pytest.raises(ModelError):
            await complete(model, request())
    clock.advance(5)
    with pytest.raises(ModelError) as raised:
        await complete(model, request())
    assert raised.value.status_code in (503, 529)  # the probe reached the server and failed
    assert breaker.state == "open" and backend.stats.chat_requests == 3


# --- fallback ------------------------------------------------------------------------------


@pytest.mark.parametrize(("primary_kind", "secondary_kind"), [("anthropic", "openai"), ("openai", "anthropic")])
@pytest.mark.parametrize("mode", ["http_503", "http_429", "timeout", "truncated_sse"])
async def test_fallback_serves_from_the_secondary(backends: Backends, primary_kind: str,
                                                  secondary_kind: str, mode: str) -> None:
    primary = await backends.start(primary_kind)
    secondary = await backends.start(secondary_kind)
    primary.faults.set(FaultPlan(mode, timeout_s=5))  # type: ignore[arg-type]
    secondary_model = secondary.make()
    # A hung primary: its own read timeout fires well before the request deadline.
    model = FallbackModel([primary.make(read_timeout_s=0.3), secondary_model])
    # A truncated stream has shown tokens before it breaks: that case must raise (below).
    req = request("hello", stream=mode != "truncated_sse", deadline_in=5.0)
    deltas = []
    async for item in model.stream(req):
        if isinstance(item, TextDelta):
            deltas.append(item.text)
        else:
            response = item
    assert response.message.content == "You said: hello"
    assert "".join(deltas) == ("" if mode == "truncated_sse" else "You said: hello")
    assert response.model == ("mock-gpt" if secondary_kind == "openai" else "mock-claude")
    assert model.served_by == {secondary_model.name: 1}
    assert primary.stats.chat_requests == 1 and secondary.stats.chat_requests == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_fallback_does_not_switch_models_mid_stream(backends: Backends, kind: str) -> None:
    primary = await backends.start(kind)
    secondary = await backends.start("openai")
    primary.faults.set(FaultPlan("truncated_sse"))
    model = FallbackModel([primary.make(), secondary.make()])
    deltas = []
    with pytest.raises(ModelError) as raised:
        async for item in model.stream(request("one two three four five six", stream=True)):
            if isinstance(item, TextDelta):
                deltas.append(item.text)
    assert deltas  # the consumer saw the primary's tokens…
    assert not raised.value.retryable  # …so the failure is final, not handed on silently
    assert secondary.stats.chat_requests == 0


# --- rate limit ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limiter_backs_off_on_429_and_waits(backends: Backends, kind: str) -> None:
    backend = await backends.start(kind)
    limiter = RateLimiter("p", RateLimitConfig(requests_per_minute=6000))
    model = RetryModel(RateLimitModel(backend.make(), limiter), FAST_RETRY)
    backend.faults.set(FaultPlan("http_429", count=1, retry_after_s=0.2))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await complete(model, request())
    assert loop.time() - started >= 0.2
    # Halved by the 429, then one additive step back up by the success.
    assert limiter.factor == pytest.approx(0.5 + limiter.config.aimd_increase)
    assert limiter.backoffs == 1
    assert backend.stats.chat_requests == 2


@pytest.mark.parametrize("kind", KINDS)
async def test_rate_limiter_fails_fast_within_the_deadline(backends: Backends, kind: str) -> None:
    backend = await backends.start(kind)
    limiter = RateLimiter("p", RateLimitConfig(requests_per_minute=60, burst_s=1))  # 1/s
    model = RateLimitModel(backend.make(), limiter)
    await complete(model, request())
    with pytest.raises(ModelError) as raised:
        await complete(model, request(deadline_in=0.2))
    assert raised.value.kind == "rate_limited" and raised.value.retry_after == pytest.approx(1, abs=0.05)
    assert backend.stats.chat_requests == 1


# --- router --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_router_shifts_traffic_from_a_slow_backend(backends: Backends, kind: str) -> None:
    fast = await backends.start(kind)
    slow = await backends.start(kind, latency_s=0.03)
    router = RouterModel("alias", [slow.make(), fast.make()], RouterConfig(strategy="weighted"),
                         rng=random.Random(7))
    for _ in range(40):
        await complete(router, request())
    assert fast.stats.chat_requests > 3 * slow.stats.chat_requests
    assert slow.stats.chat_requests >= 1


@pytest.mark.parametrize("kind", KINDS)
async def test_router_fails_over_and_ejects_a_failing_backend(backends: Backends, kind: str) -> None:
    bad = await backends.start(kind)
    good = await backends.start(kind)
    bad.faults.set(FaultPlan("http_500"))
    clock = FakeClock()
    router = RouterModel("alias", [bad.make(), good.make()],
                         RouterConfig(eject_after_failures=2, eject_s=30), clock=clock,
                         rng=random.Random(1))
    for _ in range(20):
        await complete(router, request())  # every call answered
    assert bad.stats.chat_requests == 2  # two failures, then ejected
    assert good.stats.chat_requests == 20
    bad.faults.clear()
    clock.advance(30)
    for _ in range(20):
        await complete(router, request())
    assert bad.stats.chat_requests > 2  # retried after its ejection, and healthy again


# --- the whole chain from config -----------------------------------------------------------


async def test_apply_policies_builds_the_chain(backends: Backends) -> None:
    primary = await backends.start("openai")
    secondary = await backends.start("anthropic")
    secondary_model = secondary.make()
    shared = PolicyState()
    model = apply_policies(
        primary.make(),
        {"retry": {"base_delay_s": 0, "max_delay_s": 0, "budget_min_retries": 100},
         "breaker": {"window_size": 4, "min_calls": 4, "cooldown_s": 60},
         "fallbacks": ["secondary"]},
        resolve={"secondary": secondary_model}.__getitem__,
        shared=shared,
    )
    assert isinstance(model, FallbackModel)
    primary.faults.set(FaultPlan("http_500"))
    for _ in range(6):
        response = await complete(model, request())
        assert response.model == "mock-claude"
    [breaker] = shared.breakers.values()
    assert breaker.state == "open"
    # 1st call: 3 attempts; 2nd: 1 more failure opens the breaker (4 in the window),
    # then circuit_open is not retried; every later call fails fast.
    assert primary.stats.chat_requests == 4
    assert model.served_by == {secondary_model.name: 6}
    assert shared.statistics()["breakers"][breaker.name]["state"] == "open"
