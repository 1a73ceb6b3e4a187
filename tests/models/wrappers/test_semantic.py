"""SemanticRouter: picks routes by meaning, blends live health, survives embedder failure."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from roost.errors import ModelError
from roost.models.base import complete
from roost.models.embeddings import OpenAICompatEmbedder
from roost.models.wrappers import Route, SemanticRouter, SemanticRouterConfig
from roost.testing.mock_openai import MockOpenAIServer, embed
from tests.models.wrappers import FakeModel, error, request

ROUTES_TEXT = {
    "billing": "billing refunds invoices payments charged twice card",
    "tech": "login password reset error crash bug app",
    "travel": "flights hotels booking trip weather destination",
}


class WordEmbedder:
    """The mock server's bag-of-words embedding, in-process, counting calls."""

    name = "fake:words"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.fail:
            raise ModelError("embedder down", kind="connection", retryable=True)
        return [embed(t) for t in texts]


def routes(targets: dict[str, object] | None = None) -> list[Route]:
    targets = targets or {}
    return [Route(name, text, targets.get(name, f"{name}-agent"))  # type: ignore[arg-type]
            for name, text in ROUTES_TEXT.items()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("I was charged twice on my card", "billing"),
     ("the app shows an error when I reset my password", "tech"),
     ("flights and hotels booking for my trip", "travel")],
)
async def test_picks_the_route_that_means_the_input(text: str, expected: str) -> None:
    router = SemanticRouter("support", routes(), WordEmbedder())
    choice = await router.choose(text)
    assert choice.route.name == expected
    assert choice.route.target == f"{expected}-agent"
    assert choice.similarity is not None and choice.similarity > 0.2
    assert set(choice.scores) == set(ROUTES_TEXT)


async def test_route_descriptions_are_embedded_once_and_inputs_cached() -> None:
    embedder = WordEmbedder()
    router = SemanticRouter("support", routes(), embedder)
    for _ in range(3):
        await router.choose("refund please")
    await router.choose("password reset")
    assert embedder.calls == [list(ROUTES_TEXT.values()), ["refund please"], ["password reset"]]
    assert router.chosen == {"billing": 3, "tech": 1}


async def test_embedder_failure_uses_the_default_route() -> None:
    router = SemanticRouter("support", routes(), WordEmbedder(fail=True),
                            SemanticRouterConfig(default_route="tech"))
    choice = await router.choose("I was charged twice")
    assert choice.route.name == "tech" and choice.similarity is None
    assert router.embed_failures == 1


async def test_below_min_similarity_goes_to_the_default_route() -> None:
    router = SemanticRouter("support", routes(), WordEmbedder(),
                            SemanticRouterConfig(default_route="travel", min_similarity=0.3))
    assert (await router.choose("zebra quantum violin")).route.name == "travel"
    assert (await router.choose("invoices and payments")).route.name == "billing"


async def test_live_weights_blend_away_from_a_failing_route_model() -> None:
    billing_a = FakeModel("fake:billing-a", outcomes=[error()])
    billing_b = FakeModel("fake:billing-b")
    # Two routes that mean the same: health decides between them.
    same = "billing refunds invoices payments"
    router = SemanticRouter("support", [Route("a", same, billing_a), Route("b", same, billing_b)],
                            WordEmbedder(), SemanticRouterConfig(blend=0.5))
    first = await router.choose("refunds")
    assert first.route.name == "a"  # equal scores: the first wins
    with pytest.raises(ModelError):
        await complete(router, request("refunds"))
    assert router.live_weights()[0] < 1.0
    response = await complete(router, request("refunds"))
    assert response.model == "fake:billing-b"


async def test_as_a_model_it_streams_from_the_chosen_route() -> None:
    billing = FakeModel("fake:billing", text="refund issued")
    tech = FakeModel("fake:tech")
    router = SemanticRouter("support", routes({"billing": billing, "tech": tech}), WordEmbedder())
    response = await complete(router, request("I want a refund, charged twice"))
    assert response.message.content == "refund issued"
    assert (billing.calls, tech.calls) == (1, 0)
    with pytest.raises(ModelError, match="hands over to agent"):
        await complete(router, request("flights and hotels"))


async def test_with_openai_compatible_embeddings_over_http() -> None:
    async with MockOpenAIServer() as server:
        embedder = OpenAICompatEmbedder(server.base_url, "mock-embedding")
        router = SemanticRouter("support", routes(), embedder)
        try:
            assert (await router.choose("my login password fails")).route.name == "tech"
            assert (await router.choose("hotels booking for a trip")).route.name == "travel"
        finally:
            await router.aclose()
        assert server.stats.embedding_requests == 3


def test_rejects_bad_routes() -> None:
    with pytest.raises(ValueError):
        SemanticRouter("x", [], WordEmbedder())
    with pytest.raises(ValueError):
        SemanticRouter("x", [Route("a", "d", "x"), Route("a", "e", "y")], WordEmbedder())
    with pytest.raises(ValueError):
        SemanticRouter("x", [Route("a", "d", "x")], WordEmbedder(),
                       SemanticRouterConfig(default_route="nope"))
