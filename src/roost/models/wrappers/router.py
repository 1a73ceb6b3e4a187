"""Router: one alias over several backends, steered by what each backend is doing now.

    model = RouterModel("fast", [vllm_a, vllm_b, openai], RouterConfig(strategy="weighted"))

Per backend the router keeps an EWMA of its latency (time to the first item of the stream,
which does not depend on the answer's length), an EWMA of its error rate and the number of
calls in flight. Strategies:

* ``weighted`` — pick at random in proportion to
  ``weight × (1 - error_rate)^k / (latency × (1 + in_flight))``: traffic drifts towards fast,
  healthy, idle backends while every backend keeps a trickle (`min_weight_fraction`) so a
  recovered one is noticed;
* ``least_latency`` — the lowest latency EWMA (untried backends first);
* ``least_loaded`` — the fewest calls in flight (ties: lowest latency).

After `eject_after_failures` consecutive failures a backend gets no traffic for `eject_s`;
then it is tried again, and one more failure ejects it again. On an error before any output
the call fails over to the next best backend (`max_failover` times).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, ModelResponse, StreamItem, TextDelta
from roost.models.wrappers.base import Clock, close_model, error_kind, mark_streamed
from roost.models.wrappers.config import RouterConfig

# Kinds that say nothing about the backend: the same request fails everywhere.
_CALLER_KINDS = frozenset({"bad_request", "auth", "context_overflow", "deadline"})


class BackendStats:
    """Live measurements of one backend; `RouterModel.backends` holds one per model."""

    __slots__ = (
        "calls",
        "consecutive_failures",
        "ejected_until",
        "error_ewma",
        "failures",
        "in_flight",
        "latency_ewma",
        "model",
        "weight",
    )

    def __init__(self, model: Model, weight: float) -> None:
        self.model = model
        self.weight = weight
        self.latency_ewma: float | None = None
        self.error_ewma = 0.0
        self.in_flight = 0
        self.calls = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.ejected_until = 0.0


class BackendTracker:
    """The scoring half of the router, reusable without the `Model` half (semantic router)."""

    def __init__(
        self,
        models: Sequence[Model],
        config: RouterConfig | None = None,
        *,
        weights: Sequence[float] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not models:
            raise ValueError("a router needs at least one backend")
        self.config = config or RouterConfig()
        weights = weights or self.config.weights or [1.0] * len(models)
        if len(weights) != len(models):
            raise ValueError("one weight per backend")
        self.backends = [BackendStats(m, w) for m, w in zip(models, weights, strict=True)]
        self._clock = clock

    def _latency(self, stats: BackendStats) -> float:
        if stats.latency_ewma is not None:
            return max(stats.latency_ewma, 1e-4)
        # Untried: assume as fast as the best known, so it gets measured soon.
        known = [b.latency_ewma for b in self.backends if b.latency_ewma is not None]
        return max(min(known), 1e-4) if known else 1.0

    def scores(self) -> list[float]:
        """The live weight of each backend (0 while ejected), not normalised."""
        now = self._clock()
        k = self.config.error_exponent
        raw = []
        for b in self.backends:
            health = (1.0 - b.error_ewma) ** k
            raw.append(b.weight * health / (self._latency(b) * (1 + b.in_flight)))
        floor = max(raw) * self.config.min_weight_fraction
        return [0.0 if b.ejected_until > now else max(s, floor) for b, s in zip(self.backends, raw, strict=True)]

    def normalized_scores(self) -> list[float]:
        """Scores scaled to [0, 1] (the best backend is 1)."""
        scores = self.scores()
        top = max(scores)
        return [s / top if top > 0 else 0.0 for s in scores]

    def ranking(self, rng: random.Random) -> list[BackendStats]:
        """Backends in the order to try them for one call."""
        now = self._clock()
        available = [b for b in self.backends if b.ejected_until <= now]
        if not available:
            # Everything is ejected: the one that comes back soonest is the best bet.
            return sorted(self.backends, key=lambda b: b.ejected_until)
        strategy = self.config.strategy
        if strategy == "least_latency":
            untried = [b for b in available if b.latency_ewma is None]
            rng.shuffle(untried)
            tried = sorted(
                (b for b in available if b.latency_ewma is not None),
                key=lambda b: (b.latency_ewma or 0.0) / max(1e-3, 1.0 - b.error_ewma),
            )
            return untried + tried
        if strategy == "least_loaded":
            rng.shuffle(available)  # random among equals
            return sorted(available, key=lambda b: (b.in_flight, self._latency(b)))
        # weighted: sample without replacement in proportion to the live scores.
        scores = dict(zip(map(id, self.backends), self.scores(), strict=True))
        pool = list(available)
        order = []
        while pool:
            pick = rng.choices(pool, weights=[scores[id(b)] for b in pool])[0]
            order.append(pick)
            pool.remove(pick)
        return order

    def started(self, stats: BackendStats) -> float:
        stats.in_flight += 1
        stats.calls += 1
        return self._clock()

    def first_item(self, stats: BackendStats, started: float) -> None:
        latency = self._clock() - started
        a = self.config.ewma_alpha
        stats.latency_ewma = latency if stats.latency_ewma is None else a * latency + (1 - a) * stats.latency_ewma

    def finished(
        self, stats: BackendStats, error: ModelError | None, started: float | None
    ) -> None:
        """Record the outcome; `started` is set when no first item was measured yet."""
        stats.in_flight -= 1
        a = self.config.ewma_alpha
        if error is None:
            stats.error_ewma *= 1 - a
            stats.consecutive_failures = 0
            stats.ejected_until = 0.0
            return
        if error_kind(error) in _CALLER_KINDS:
            return
        stats.failures += 1
        stats.error_ewma = a + (1 - a) * stats.error_ewma
        stats.consecutive_failures += 1
        if started is not None:
            # A slow failure (a timeout) must also count as slow, or a hanging backend
            # would look fast because it never produced a first item.
            self.first_item(stats, started)
        if stats.consecutive_failures >= self.config.eject_after_failures:
            stats.ejected_until = self._clock() + self.config.eject_s

    def cancelled(self, stats: BackendStats) -> None:
        stats.in_flight -= 1


class RouterModel:
    """A `Model` that spreads calls over `backends` (see the module docstring).

    Statistics: `tracker.backends` (per backend: calls, failures, latency_ewma, error_ewma,
    in_flight, ejected_until), `weights()` (live share of traffic), `failovers`.
    """

    def __init__(
        self,
        name: str,
        backends: Sequence[Model],
        config: RouterConfig | None = None,
        *,
        weights: Sequence[float] | None = None,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config or RouterConfig()
        self.tracker = BackendTracker(backends, self.config, weights=weights, clock=clock)
        self._rng = rng or random.Random()
        self.failovers = 0

    @property
    def backends(self) -> list[BackendStats]:
        return self.tracker.backends

    def weights(self) -> dict[str, float]:
        """Each backend's current share of `weighted` traffic (sums to 1)."""
        scores = self.tracker.scores()
        total = sum(scores) or 1.0
        return {b.model.name: s / total for b, s in zip(self.tracker.backends, scores, strict=True)}

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        ranking = self.tracker.ranking(self._rng)[: 1 + self.config.max_failover]
        last_error: ModelError | None = None
        for index, stats in enumerate(ranking):
            if index > 0:
                if request.deadline is not None and asyncio.get_running_loop().time() >= request.deadline:
                    break
                self.failovers += 1
            async with aclosing(call_backend(self.tracker, stats, request)) as items:
                async for item in items:
                    if isinstance(item, ModelError):
                        last_error = item
                        break
                    yield item
                else:
                    return
        assert last_error is not None
        raise last_error

    async def aclose(self) -> None:
        for stats in self.tracker.backends:
            await close_model(stats.model)


async def call_backend(
    tracker: BackendTracker, stats: BackendStats, request: ModelRequest
) -> AsyncGenerator[StreamItem | ModelError, None]:
    """Stream one backend, measuring it; a failover-able error is yielded, not raised."""
    started = tracker.started(stats)
    first = True
    streamed = False
    outcome_recorded = False
    try:
        async with aclosing(stats.model.stream(request)) as items:
            async for item in items:
                if first:
                    tracker.first_item(stats, started)
                    first = False
                if isinstance(item, TextDelta):
                    streamed = True
                elif isinstance(item, ModelResponse):
                    if not item.model:
                        item.model = stats.model.name
                    outcome_recorded = True
                    tracker.finished(stats, None, None)
                yield item
    except ModelError as error:
        outcome_recorded = True
        tracker.finished(stats, error, started if first else None)
        if streamed:
            raise mark_streamed(error) from error
        if error_kind(error) in _CALLER_KINDS:
            raise
        yield error
    finally:
        if not outcome_recorded:
            tracker.cancelled(stats)
