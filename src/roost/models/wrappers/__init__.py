"""Model wrappers: behaviour added around a `Model`, each one a `Model` itself.

    RetryModel        retry retryable errors: backoff + jitter, Retry-After, retry budget
    BreakerModel      fail fast while an endpoint is failing (CircuitBreaker)
    FallbackModel     the next model serves when one fails
    RateLimitModel    requests/tokens per minute, AIMD on upstream 429s (RateLimiter)
    RouterModel       one alias over several backends, by latency, errors and load
    SemanticRouter    route by meaning (embeddings) blended with live health

`apply_policies` composes them from a `ModelPolicy` (what a `[models.<alias>.policy]`
config section holds):

    model = apply_policies(provider_model, {"retry": {"max_attempts": 3},
                                            "fallbacks": ["anthropic:claude-3-5-haiku-latest"]},
                           resolve=registry.resolve, shared=policy_state)

Outermost first: ``Fallback(Retry(Breaker(RateLimit(model))), *fallbacks)``. Retry sits
outside the breaker so an open circuit (not retryable) ends the retries at once, and outside
the rate limiter so every attempt pays for its request; the fallback is outermost so it
serves only once the primary's retries are spent. With a router, each backend gets its own
breaker and limiter and retries may land on another backend:
``Fallback(Retry(Router([Breaker(RateLimit(model)), *backends])), *fallbacks)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from roost.errors import ConfigError
from roost.models.base import Model
from roost.models.embeddings import Embedder
from roost.models.wrappers.base import WrapperModel, provider_of
from roost.models.wrappers.breaker import BreakerModel, CircuitBreaker, TransitionCallback
from roost.models.wrappers.config import (
    BreakerConfig,
    FallbackConfig,
    ModelPolicy,
    RateLimitConfig,
    RetryConfig,
    RouterConfig,
    SemanticPolicyConfig,
    SemanticRouterConfig,
)
from roost.models.wrappers.fallback import FallbackModel
from roost.models.wrappers.ratelimit import RateLimiter, RateLimitModel
from roost.models.wrappers.retry import RetryBudget, RetryModel
from roost.models.wrappers.router import BackendStats, RouterModel
from roost.models.wrappers.semantic import Route, RouteChoice, SemanticRouter

__all__ = [
    "BackendStats",
    "BreakerConfig",
    "BreakerModel",
    "CircuitBreaker",
    "FallbackConfig",
    "FallbackModel",
    "ModelPolicy",
    "PolicyState",
    "RateLimitConfig",
    "RateLimitModel",
    "RateLimiter",
    "RetryBudget",
    "RetryConfig",
    "RetryModel",
    "Route",
    "RouteChoice",
    "RouterConfig",
    "RouterModel",
    "SemanticRouter",
    "SemanticRouterConfig",
    "WrapperModel",
    "apply_policies",
    "parse_policy",
]


class PolicyState:
    """The state wrappers share across aliases: one breaker per endpoint, one retry budget
    per provider, one rate limiter per model — whichever aliases call them.

    Keep one per `ModelRegistry` (not a module global: two runtimes in one process, or two
    tests, must not share breakers). The first config seen for a key wins.

    Statistics for metrics: `breakers`, `budgets`, `limiters` (dicts by key).
    """

    def __init__(
        self,
        *,
        on_transition: TransitionCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.on_transition = on_transition
        self._clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}
        self.budgets: dict[str, RetryBudget] = {}
        self.limiters: dict[str, RateLimiter] = {}

    def breaker(self, key: str, config: BreakerConfig) -> CircuitBreaker:
        breaker = self.breakers.get(key)
        if breaker is None:
            breaker = CircuitBreaker(key, config, clock=self._clock,
                                     on_transition=self._transition)
            self.breakers[key] = breaker
        return breaker

    def _transition(self, name: str, old: str, new: str) -> None:
        # Looked up at call time so metrics can be attached after the models are built.
        if self.on_transition is not None:
            self.on_transition(name, old, new)

    def budget(self, key: str, config: RetryConfig) -> RetryBudget:
        budget = self.budgets.get(key)
        if budget is None:
            budget = RetryBudget.from_config(config, clock=self._clock)
            self.budgets[key] = budget
        return budget

    def limiter(self, key: str, config: RateLimitConfig) -> RateLimiter:
        limiter = self.limiters.get(key)
        if limiter is None:
            limiter = RateLimiter(key, config, clock=self._clock)
            self.limiters[key] = limiter
        return limiter

    def statistics(self) -> dict[str, Any]:
        return {
            "breakers": {k: {"state": b.state, "transitions": dict(b.transitions),
                             "rejected": b.rejected, "failure_rate": b.failure_rate()}
                         for k, b in self.breakers.items()},
            "budgets": {k: {"calls": b.calls_in_window, "retries": b.retries_in_window}
                        for k, b in self.budgets.items()},
            "limiters": {k: {"admitted": r.admitted, "rejected": r.rejected,
                             "factor": r.factor, "backoffs": r.backoffs}
                         for k, r in self.limiters.items()},
        }


def parse_policy(policy: ModelPolicy | Mapping[str, Any], *, key: str = "policy") -> ModelPolicy:
    """Validate a policy from config; a mistake is a `ConfigError` naming its key path."""
    if isinstance(policy, ModelPolicy):
        return policy
    try:
        return ModelPolicy.model_validate(dict(policy))
    except ValidationError as exc:
        problems = [
            (".".join([key, *map(str, error["loc"])]), error["msg"]) for error in exc.errors()
        ]
        raise ConfigError(f"invalid model policy: {problems[0][0]}: {problems[0][1]}",
                          problems) from exc


def apply_policies(
    model: Model,
    policy: ModelPolicy | Mapping[str, Any],
    *,
    resolve: Callable[[str], Model],
    shared: PolicyState | None = None,
    key: str = "policy",
    embedder: Callable[[str], Embedder] | None = None,
) -> Model:
    """Wrap `model` as `policy` says (see the module docstring for the order).

    `resolve` turns a model ref from the policy (fallbacks, router backends) into a `Model`
    — normally `ModelRegistry.resolve`, so a fallback alias comes with its own policy.
    `shared` holds the breakers, budgets and limiters to share with other aliases; without
    it this alias gets its own. `key` prefixes the key paths of config errors. `embedder`
    builds the embedding model a `semantic` policy names.
    """
    policy = parse_policy(policy, key=key)
    state = shared or PolicyState()
    name = model.name

    def guarded(backend: Model) -> Model:
        wrapped = backend
        if policy.rate_limit.enabled:
            limiter = state.limiter(policy.rate_limit.key or backend.name, policy.rate_limit)
            wrapped = RateLimitModel(wrapped, limiter)
        if policy.breaker.enabled:
            breaker = state.breaker(policy.breaker.key or backend.name, policy.breaker)
            wrapped = BreakerModel(wrapped, breaker)
        return wrapped

    core = guarded(model)
    if policy.router is not None:
        router = policy.router
        if router.weights is not None and len(router.weights) != len(router.backends) + 1:
            raise ConfigError(
                "router.weights needs one weight for this alias's model, then one per backend",
                [(f"{key}.router.weights", "one weight for the alias's model + one per backend")],
            )
        backends = [core, *(resolve(ref) for ref in router.backends)]
        core = RouterModel(name, backends, router.model_copy(update={"weights": None}),
                           weights=router.weights)
    if policy.semantic is not None:
        core = _semantic_router(name, policy.semantic, resolve, embedder, key)
    if policy.retry.enabled and policy.retry.max_attempts > 1:
        budget = state.budget(policy.retry.budget_key or provider_of(model), policy.retry)
        core = RetryModel(core, policy.retry, budget=budget)
    if policy.fallbacks:
        chain = [core, *(resolve(ref) for ref in policy.fallbacks)]
        core = FallbackModel(chain, policy.fallback, name=name)
    return core


def _semantic_router(name: str, config: SemanticPolicyConfig, resolve: Callable[[str], Model],
                     embedder: Callable[[str], Embedder] | None, key: str) -> Model:
    if embedder is None:
        raise ConfigError("a semantic router needs an embedder factory",
                          [(f"{key}.semantic.embedder", "no embedder available")])
    routes = [Route(r.name, r.description, resolve(r.model)) for r in config.routes]
    settings = SemanticRouterConfig(**config.model_dump(
        include=set(SemanticRouterConfig.model_fields)))
    try:
        return SemanticRouter(name, routes, embedder(config.embedder), settings)
    except ValueError as exc:
        raise ConfigError(f"{key}.semantic: {exc}", [(f"{key}.semantic", str(exc))]) from None
