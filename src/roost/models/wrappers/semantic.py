"""Semantic router: send a request to the route whose description means what the user asks.

    router = SemanticRouter("support", [
        Route("billing", "refunds, invoices, payments and charges", billing_model),
        Route("tech", "login problems, passwords, errors and crashes", "tech-agent"),
    ], embedder)
    choice = await router.choose("I was charged twice")     # → the "billing" route
    async for item in router.stream(request): ...           # a Model when targets are Models

A route's target is a `Model` (the router then is a `Model` and calls it) or an agent name
(the runtime hands the conversation to that agent; `choose` tells it which). The input is the
request's last user message. Each route scores

    (1 - blend) × cosine(embed(input), embed(description)) + blend × live weight

where the live weight is the route model's health, as the latency/error router measures it
(scaled so the best is 1; agent routes count 1). Description embeddings are computed once;
input embeddings are kept in a small LRU. If the embedder fails the default route (else
the first) serves: routing must not be a new single point of failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

from roost.errors import ModelError
from roost.models.base import Model, ModelRequest, StreamItem
from roost.models.embeddings import Embedder, cosine
from roost.models.wrappers.base import Clock, close_model, seconds_left
from roost.models.wrappers.config import RouterConfig, SemanticRouterConfig
from roost.models.wrappers.router import BackendTracker, call_backend

logger = logging.getLogger("roost.models.semantic")


@dataclass(frozen=True, slots=True)
class Route:
    """A destination: a `Model` to call, or the name of an agent to hand over to."""

    name: str
    description: str
    target: Model | str


@dataclass(frozen=True, slots=True)
class RouteChoice:
    route: Route
    #: Cosine similarity of the input to the route's description (None: embedder failed).
    similarity: float | None
    score: float
    #: Every route's blended score, by route name.
    scores: dict[str, float] = field(default_factory=dict)


class SemanticRouter:
    """Routes by meaning, blended with live health (see the module docstring).

    Statistics: `chosen` (requests per route name), `embed_failures`.
    """

    def __init__(
        self,
        name: str,
        routes: Sequence[Route],
        embedder: Embedder,
        config: SemanticRouterConfig | None = None,
        *,
        router_config: RouterConfig | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not routes:
            raise ValueError("a semantic router needs at least one route")
        names = [r.name for r in routes]
        if len(set(names)) != len(names):
            raise ValueError(f"route names must be unique: {names}")
        self.name = name
        self.routes = list(routes)
        self.embedder = embedder
        self.config = config or SemanticRouterConfig()
        if self.config.default_route is not None and self.config.default_route not in names:
            raise ValueError(f"default_route {self.config.default_route!r} is not a route")
        models = [r.target for r in self.routes if not isinstance(r.target, str)]
        self._tracker = BackendTracker(models, router_config) if models else None
        # route index -> index in the tracker (model routes only)
        self._backend_of: dict[int, int] = {}
        for index, route in enumerate(self.routes):
            if not isinstance(route.target, str):
                self._backend_of[index] = len(self._backend_of)
        self._route_vectors: list[list[float]] | None = None
        self._vectors_lock = asyncio.Lock()
        self._cache: OrderedDict[str, list[float]] = OrderedDict()
        self.chosen: dict[str, int] = {}
        self.embed_failures = 0

    async def _descriptions(self) -> list[list[float]]:
        if self._route_vectors is None:
            async with self._vectors_lock:  # one embedding call however many callers wait
                if self._route_vectors is None:
                    self._route_vectors = await self.embedder.embed(
                        [r.description for r in self.routes]
                    )
        return self._route_vectors

    async def _embed_input(self, text: str) -> list[float]:
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        [vector] = await self.embedder.embed([text])
        if self.config.cache_size:
            self._cache[text] = vector
            if len(self._cache) > self.config.cache_size:
                self._cache.popitem(last=False)
        return vector

    def live_weights(self) -> list[float]:
        """Each route's health in [0, 1] (1 = the best route model; agent routes are 1)."""
        normalized = self._tracker.normalized_scores() if self._tracker else []
        return [
            normalized[self._backend_of[i]] if i in self._backend_of else 1.0
            for i in range(len(self.routes))
        ]

    def _fallback_route(self) -> Route:
        name = self.config.default_route
        return next((r for r in self.routes if r.name == name), self.routes[0])

    async def choose(self, text: str, *, timeout_s: float | None = None) -> RouteChoice:
        """The route for `text` (embeddings bounded by `timeout_s`)."""
        try:
            async with asyncio.timeout(timeout_s):
                routes = await self._descriptions()
                query = await self._embed_input(text)
        except (ModelError, TimeoutError) as exc:
            self.embed_failures += 1
            route = self._fallback_route()
            logger.warning("semantic router %s: embedding failed (%s); using route %s",
                           self.name, exc, route.name)
            return self._chose(RouteChoice(route, None, 0.0))
        blend = self.config.blend
        similarities = [cosine(query, vector) for vector in routes]
        scores = [
            (1 - blend) * sim + blend * live
            for sim, live in zip(similarities, self.live_weights(), strict=True)
        ]
        best = max(range(len(scores)), key=scores.__getitem__)
        by_name = {r.name: s for r, s in zip(self.routes, scores, strict=True)}
        if max(similarities) < self.config.min_similarity and self.config.default_route:
            route = self._fallback_route()
            index = self.routes.index(route)
            return self._chose(RouteChoice(route, similarities[index], scores[index], by_name))
        return self._chose(RouteChoice(self.routes[best], similarities[best], scores[best], by_name))

    def _chose(self, choice: RouteChoice) -> RouteChoice:
        self.chosen[choice.route.name] = self.chosen.get(choice.route.name, 0) + 1
        return choice

    async def choose_for(self, request: ModelRequest) -> RouteChoice:
        """The route for a request: its last user message, within its deadline."""
        text = next((m.content or "" for m in reversed(request.messages) if m.role == "user"), "")
        left = seconds_left(request)
        return await self.choose(text, timeout_s=None if left is None else max(0.0, left))

    async def stream(self, request: ModelRequest) -> AsyncGenerator[StreamItem, None]:
        choice = await self.choose_for(request)
        index = self.routes.index(choice.route)
        target = choice.route.target
        if isinstance(target, str) or self._tracker is None:
            raise ModelError(
                f"{self.name}: route {choice.route.name!r} hands over to agent {target!r}; "
                "the runtime must use choose(), not call the router as a model",
                kind="bad_request",
            )
        stats = self._tracker.backends[self._backend_of[index]]
        async with aclosing(call_backend(self._tracker, stats, request)) as items:
            async for item in items:
                if isinstance(item, ModelError):
                    # Routes are different specialists: another one is not a fallback.
                    raise item
                yield item

    async def aclose(self) -> None:
        for route in self.routes:
            if not isinstance(route.target, str):
                await close_model(route.target)
        close = getattr(self.embedder, "aclose", None)
        if close is not None:
            await close()
