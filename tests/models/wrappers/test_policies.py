"""`apply_policies` and `ModelPolicy`: config in, the documented chain of wrappers out."""

from __future__ import annotations

import pytest

from roost.errors import ConfigError, ModelError
from roost.models.base import Model, complete
from roost.models.wrappers import (
    BreakerModel,
    FallbackModel,
    ModelPolicy,
    PolicyState,
    RateLimitModel,
    RetryModel,
    RouterModel,
    apply_policies,
    parse_policy,
)
from tests.models.wrappers import FakeModel, error, request


def chain(model: Model) -> list[str]:
    names = []
    while True:
        names.append(type(model).__name__)
        inner = getattr(model, "inner", None)
        if inner is None:
            return names
        model = inner


def no_refs(ref: str) -> Model:
    raise AssertionError(f"unexpected ref {ref}")


def test_defaults_are_retry_around_breaker() -> None:
    model = apply_policies(FakeModel("p:m"), {}, resolve=no_refs)
    assert chain(model) == ["RetryModel", "BreakerModel", "FakeModel"]
    assert model.name == "p:m"
    assert isinstance(model, RetryModel) and model.config.max_attempts == 3


def test_full_chain_order() -> None:
    secondary = FakeModel("q:n")
    model = apply_policies(
        FakeModel("p:m"),
        {"rate_limit": {"requests_per_minute": 100}, "fallbacks": ["secondary"]},
        resolve={"secondary": secondary}.__getitem__,
    )
    assert isinstance(model, FallbackModel)
    assert chain(model.models[0]) == ["RetryModel", "BreakerModel", "RateLimitModel", "FakeModel"]
    assert model.models[1] is secondary


def test_everything_can_be_switched_off() -> None:
    inner = FakeModel("p:m")
    model = apply_policies(inner, {"retry": {"enabled": False}, "breaker": {"enabled": False}},
                           resolve=no_refs)
    assert model is inner


async def test_router_policy_routes_over_the_alias_model_and_its_backends() -> None:
    other = FakeModel("q:n")
    model = apply_policies(
        FakeModel("p:m"),
        {"router": {"backends": ["other"], "strategy": "least_loaded", "weights": [1, 3]}},
        resolve={"other": other}.__getitem__,
    )
    assert isinstance(model, RetryModel)
    router = model.inner
    assert isinstance(router, RouterModel)
    assert [b.model.name for b in router.backends] == ["p:m", "q:n"]
    assert [b.weight for b in router.backends] == [1, 3]
    assert isinstance(router.backends[0].model, BreakerModel)  # each backend its own breaker
    await complete(model, request())


def test_shared_state_shares_breakers_and_budgets_by_key() -> None:
    shared = PolicyState()
    a = apply_policies(FakeModel("p:m"), {}, resolve=no_refs, shared=shared)
    b = apply_policies(FakeModel("p:m"), {"rate_limit": {"tokens_per_minute": 1000}},
                       resolve=no_refs, shared=shared)
    c = apply_policies(FakeModel("p:other"), {"breaker": {"key": "p"}}, resolve=no_refs, shared=shared)
    assert isinstance(a, RetryModel) and isinstance(b, RetryModel) and isinstance(c, RetryModel)
    assert a.budget is b.budget is c.budget  # one budget per provider "p"
    breaker_a = a.inner.breaker  # type: ignore[attr-defined]
    breaker_b = b.inner.breaker  # type: ignore[attr-defined]
    assert breaker_a is breaker_b
    assert set(shared.breakers) == {"p:m", "p"}
    assert isinstance(b.inner.inner, RateLimitModel)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("policy", "path"),
    [({"retry": {"max_attempts": 0}}, "models.fast.policy.retry.max_attempts"),
     ({"breaker": {"failure_kinds": ["nope"]}}, "models.fast.policy.breaker.failure_kinds.0"),
     ({"retries": {}}, "models.fast.policy.retries"),
     ({"router": {"strategy": "random"}}, "models.fast.policy.router.strategy")],
)
def test_config_mistakes_name_their_key_path(policy: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_policy(policy, key="models.fast.policy")
    assert raised.value.problems[0][0] == path


def test_router_weights_must_cover_the_alias_model() -> None:
    with pytest.raises(ConfigError) as raised:
        apply_policies(FakeModel("p:m"), {"router": {"backends": ["x"], "weights": [1]}},
                       resolve=lambda ref: FakeModel(ref))
    assert raised.value.problems[0][0] == "policy.router.weights"


def test_policy_round_trips_as_json() -> None:
    policy = ModelPolicy.model_validate({"fallbacks": ["a"], "retry": {"max_attempts": 5}})
    assert ModelPolicy.model_validate_json(policy.model_dump_json()) == policy


async def test_transitions_reach_the_shared_callback() -> None:
    seen: list[tuple[str, str, str]] = []
    shared = PolicyState(on_transition=lambda *t: seen.append(t))
    model = apply_policies(FakeModel("p:m", outcomes=[error("overloaded", retryable=False)]),
                           {"breaker": {"min_calls": 2, "window_size": 2}}, resolve=no_refs,
                           shared=shared)
    for _ in range(2):
        with pytest.raises(ModelError):
            await complete(model, request())
    assert seen == [("p:m", "closed", "open")]
