"""The semantic router configured in roost.toml: `[models.X] policy.semantic`."""

from __future__ import annotations

import pytest

from roost.config import Settings
from roost.errors import ConfigError
from roost.models.base import Message, ModelRequest, ModelResponse
from roost.models.registry import ModelRegistry
from roost.models.wrappers import SemanticRouter
from roost.testing.mock_openai import MockOpenAIServer


def settings(base_url: str, embedder: str = "mock:mock-embedding") -> Settings:
    return Settings.model_validate({
        "providers": {"mock": {"base_url": base_url}},
        "models": {
            "billing": {"provider": "mock", "model": "billing-model"},
            "tech": {"provider": "mock", "model": "tech-model"},
            "support": {"provider": "mock", "model": "unused", "policy": {"semantic": {
                "embedder": embedder, "default_route": "tech", "blend": 0.0,
                "routes": [
                    {"name": "billing", "description": "refund my order, invoices, charges",
                     "model": "billing"},
                    {"name": "tech", "description": "reset my password, login errors",
                     "model": "tech"}]}}}}})


async def test_a_configured_semantic_router_routes_by_meaning() -> None:
    async with MockOpenAIServer() as server:
        config = settings(server.base_url)
        registry = ModelRegistry(config.providers, config.models)
        try:
            support = registry.resolve("support")  # retried (the alias's retry policy)
            router = getattr(support, "inner", None)
            assert isinstance(router, SemanticRouter)
            request = ModelRequest(messages=[Message(role="user", content="refund my order")])
            responses = [item async for item in support.stream(request)
                         if isinstance(item, ModelResponse)]
        finally:
            await registry.aclose()
    assert router.chosen == {"billing": 1}
    assert responses and responses[-1].model == "billing-model"


@pytest.mark.parametrize("embedder", ["nocolon", "anthropic:embed", "missing:embed"])
def test_a_bad_embedder_is_a_config_error(embedder: str) -> None:
    config = settings("http://127.0.0.1:9/v1", embedder)
    with pytest.raises(ConfigError, match="embedder"):
        ModelRegistry(config.providers, config.models).resolve("support")


def test_routes_are_required() -> None:
    config = settings("http://127.0.0.1:9/v1")
    config.models["support"].policy["semantic"]["routes"] = []
    with pytest.raises(ConfigError):
        ModelRegistry(config.providers, config.models).resolve("support")
