"""Configuration of the model wrappers: every limit in one place, with sane defaults.

These are Pydantic models because they sit at the config boundary (`roost.config` embeds a
`ModelPolicy` per model alias); the wrappers read them once at construction.

    policy = ModelPolicy(
        retry=RetryConfig(max_attempts=3),
        breaker=BreakerConfig(failure_rate_threshold=0.5, cooldown_s=15),
        rate_limit=RateLimitConfig(requests_per_minute=500, tokens_per_minute=200_000),
        fallbacks=["anthropic:claude-3-5-haiku-latest"],
    )
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: The `ModelError.kind` values (see `roost.errors.ModelError`).
ErrorKind = Literal[
    "rate_limited",
    "overloaded",
    "timeout",
    "connection",
    "malformed",
    "context_overflow",
    "bad_request",
    "auth",
    "circuit_open",
    "deadline",
    "error",
]


class _Config(BaseModel):
    # A typo in a config file must be an error, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryConfig(_Config):
    """Retries of retryable errors: exponential backoff with full jitter, under a budget."""

    enabled: bool = True
    #: Attempts in all, the first one included (3 = one call and at most two retries).
    max_attempts: int = Field(default=3, ge=1, le=20)
    #: Backoff before retry n is uniform in [0, min(max_delay_s, base_delay_s * 2**(n-1))].
    base_delay_s: float = Field(default=0.25, ge=0)
    max_delay_s: float = Field(default=8.0, ge=0)
    #: A provider's Retry-After longer than this is not waited for: the error is raised (a
    #: fallback model can serve instead).
    max_retry_after_s: float = Field(default=30.0, ge=0)
    #: Retry budget: retries may be at most this fraction of calls over the window…
    budget_ratio: float = Field(default=0.1, ge=0, le=10)
    #: …but at least this many retries per window, so a quiet system can still retry.
    budget_min_retries: int = Field(default=5, ge=0)
    budget_window_s: float = Field(default=10.0, gt=0)
    #: Budget sharing key; None = the provider part of the model name ("openai", "anthropic").
    budget_key: str | None = None


class BreakerConfig(_Config):
    """A circuit breaker per provider endpoint: closed → open → half-open → closed."""

    enabled: bool = True
    #: "count": the last `window_size` calls; "time": the calls of the last `window_s` seconds.
    window: Literal["count", "time"] = "count"
    #: 50 calls: at a steady 30 % error rate a 50 % threshold is crossed by chance in about
    #: 0.2 % of windows (with 20 calls, in about 5 %: the breaker would flap), while an outage
    #: still opens it within 25 calls.
    window_size: int = Field(default=50, ge=1)
    window_s: float = Field(default=30.0, gt=0)
    #: No decision before this many calls are in the window.
    min_calls: int = Field(default=20, ge=1)
    #: Open when failures / calls in the window reaches this.
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    #: How long an open breaker fails fast before it lets probes through.
    cooldown_s: float = Field(default=15.0, ge=0)
    #: Probes admitted at once when half-open; this many successes close the breaker.
    half_open_probes: int = Field(default=1, ge=1)
    #: What counts as a failure of the endpoint. A bad request or an expired caller deadline
    #: says nothing about the endpoint's health; rate limiting is the rate limiter's business.
    failure_kinds: frozenset[ErrorKind] = frozenset(
        {"overloaded", "timeout", "connection", "malformed", "error"}
    )
    #: Breaker sharing key; None = the model name ("openai:gpt-4o-mini").
    key: str | None = None


class RateLimitConfig(_Config):
    """Client-side request and token rates (token buckets), adapting to upstream 429s (AIMD).

    Off unless a rate is set: the right numbers depend on the account's tier.
    """

    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    #: Bucket capacity in seconds of the rate: how large a burst is admitted at once.
    burst_s: float = Field(default=60.0, gt=0)
    #: Longest a caller waits for capacity (always also bounded by the request deadline);
    #: beyond it the call fails fast with `ModelError(kind="rate_limited")`.
    max_wait_s: float = Field(default=30.0, ge=0)
    #: Token estimate before the call: characters per token of the prompt…
    chars_per_token: float = Field(default=4.0, gt=0)
    #: …plus the expected output when the request sets no `max_tokens`.
    default_output_tokens: int = Field(default=256, ge=0)
    #: On an upstream 429 the allowed rate is multiplied by this (multiplicative decrease)…
    aimd_decrease: float = Field(default=0.5, gt=0, lt=1)
    #: …and each success adds back this fraction of the configured rate (additive increase).
    aimd_increase: float = Field(default=0.02, gt=0, le=1)
    #: The rate never drops below this fraction of the configured rate.
    aimd_min_fraction: float = Field(default=0.05, gt=0, le=1)
    #: Limiter sharing key; None = the model name.
    key: str | None = None

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class RouterConfig(_Config):
    """One alias over several backends, weighted by observed latency, errors and load."""

    #: Model refs (aliases) routed over. In a `ModelPolicy` the alias's own model is the
    #: first backend and these come after it.
    backends: list[str] = Field(default_factory=list)
    #: Static weights, one per backend in that order (default: equal).
    weights: list[float] | None = None
    strategy: Literal["weighted", "least_latency", "least_loaded"] = "weighted"
    #: Smoothing of the latency and error averages (higher = reacts faster).
    ewma_alpha: float = Field(default=0.3, gt=0, le=1)
    #: Weight multiplier is (1 - error_rate) ** error_exponent.
    error_exponent: float = Field(default=2.0, ge=0)
    #: After this many consecutive failures a backend gets no traffic for `eject_s`…
    eject_after_failures: int = Field(default=3, ge=1)
    eject_s: float = Field(default=10.0, ge=0)
    #: …and never less than this fraction of the best weight otherwise, so it is re-measured.
    min_weight_fraction: float = Field(default=0.02, ge=0, le=1)
    #: On an error before any output, try up to this many other backends.
    max_failover: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _weights_positive(self) -> RouterConfig:
        if self.weights is not None and any(w <= 0 for w in self.weights):
            raise ValueError("router.weights must be positive")
        return self


class SemanticRouterConfig(_Config):
    """Route by meaning: cosine similarity of the input to route descriptions."""

    #: Final score = (1 - blend) * similarity + blend * live weight (normalised to [0, 1]).
    blend: float = Field(default=0.2, ge=0, le=1)
    #: Below this similarity no route matches and the default route serves (if set).
    min_similarity: float = Field(default=0.0, ge=-1, le=1)
    #: Name of the route used when nothing matches; None = the best score wins anyway.
    default_route: str | None = None
    #: Query embeddings kept (LRU); route descriptions are always cached.
    cache_size: int = Field(default=1024, ge=0)


class SemanticRouteConfig(_Config):
    """One route of a semantic router in roost.toml: where requests meaning `description` go."""

    name: str
    description: str
    #: A model ref (an alias, "openai:gpt-4o-mini").
    model: str


class SemanticPolicyConfig(SemanticRouterConfig):
    """A semantic router from roost.toml: the alias routes each request to one of `routes`
    by meaning (`SemanticRouter`), instead of calling its own model."""

    #: The embedding model: "<provider>:<model>" of an OpenAI-compatible provider.
    embedder: str
    routes: list[SemanticRouteConfig] = Field(min_length=1)


class FallbackConfig(_Config):
    """When the next model of a fallback chain serves."""

    #: Errors of these kinds are the caller's own and are raised, not handed on.
    no_fallback_kinds: frozenset[ErrorKind] = frozenset({"bad_request", "auth"})


class ModelPolicy(_Config):
    """Everything wrapped around one model alias, applied by `apply_policies`.

    Composition, outermost first:
    ``Fallback(Retry(Breaker(RateLimit(model))), *fallbacks)`` — or with `router` set,
    the router over its backends replaces `model`.
    """

    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    rate_limit: RateLimitConfig = Field(default_factory=RateLimitConfig)
    #: Model refs (aliases) tried in order when this model fails.
    fallbacks: list[str] = Field(default_factory=list)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    #: When set, this alias routes across `router.backends` instead of calling one model.
    router: RouterConfig | None = None
    #: When set, this alias routes each request by meaning to one of `semantic.routes`.
    semantic: SemanticPolicyConfig | None = None
