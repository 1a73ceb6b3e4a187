"""Model references → `Model` instances, from config.

A reference is `demo`, an alias declared under `[models.<alias>]`, or `provider:model`
(`openai:gpt-4o-mini`, `local:llama3`) naming a provider under `[providers.<name>]`
(`openai` and `anthropic` work without a section, with their public endpoints and the
`OPENAI_API_KEY` / `ANTHROPIC_API_KEY` variables). Instances are built once and shared:
each provider holds one connection pool.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from roost.errors import ConfigError
from roost.models.base import Model
from roost.models.demo import DemoModel

if TYPE_CHECKING:
    from roost.config import ModelAliasConfig, ProviderConfig

_DEFAULT_PROVIDERS: dict[str, dict[str, Any]] = {
    "openai": {"type": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
    "anthropic": {"type": "anthropic", "base_url": "https://api.anthropic.com",
                  "api_key_env": "ANTHROPIC_API_KEY"},
}


def _suggest(ref: str, aliases: dict[str, ModelAliasConfig]) -> str:
    """What to write instead of an unknown bare model name: `openai:gpt-4o`, not `gpt-4o`."""
    provider = "anthropic" if ref.lower().startswith("claude") else "openai"
    known = f" or an alias ({', '.join(sorted(aliases))})" if aliases else " or an alias from [models]"
    return f"did you mean '{provider}:{ref}'? Use provider:model, 'demo',{known}"


class ModelRegistry:
    def __init__(self, providers: dict[str, ProviderConfig] | None = None,
                 aliases: dict[str, ModelAliasConfig] | None = None) -> None:
        self.providers = providers or {}
        self.aliases = aliases or {}
        self._models: dict[str, Model] = {}
        # Breakers, retry budgets and rate limiters shared by every alias of this registry,
        # created lazily (importing the wrappers only when a policy is configured).
        self._policy_state: Any = None

    def resolve(self, ref: str | Model) -> Model:
        if not isinstance(ref, str):
            return ref
        model = self._models.get(ref)
        if model is None:
            model = self._build(ref, ())
            self._models[ref] = model
        return model

    @property
    def policy_state(self) -> Any:
        """The shared wrapper state (breakers, budgets, limiters) for metrics; None if unused."""
        return self._policy_state

    def _resolve_in(self, ref: str, seen: tuple[str, ...]) -> Model:
        model = self._models.get(ref)
        if model is None:
            model = self._build(ref, seen)
            self._models[ref] = model
        return model

    def _build(self, ref: str, seen: tuple[str, ...]) -> Model:
        if ref in seen:
            raise ConfigError(f"model alias cycle: {' -> '.join((*seen, ref))}",
                              [(f"models.{ref}", "alias cycle")])
        if ref == "demo":
            return DemoModel()
        alias = self.aliases.get(ref)
        if alias is not None:
            base = self._provider_model(alias.provider, alias.model, alias.settings, f"models.{ref}")
            if alias.policy:
                from roost.models.wrappers import PolicyState, apply_policies

                if self._policy_state is None:
                    self._policy_state = PolicyState()
                return apply_policies(base, alias.policy,
                                      resolve=lambda name: self._resolve_in(name, (*seen, ref)),
                                      shared=self._policy_state, key=f"models.{ref}.policy",
                                      embedder=self._embedder)
            return base
        provider, sep, name = ref.partition(":")
        if not sep or not name:
            hint = _suggest(ref, self.aliases)
            raise ConfigError(f"unknown model {ref!r}: {hint}", [("model", f"unknown model "
                                                                  f"{ref!r}: {hint}")])
        return self._provider_model(provider, name, {}, "model")

    def _provider_model(self, provider: str, model: str, settings: dict[str, Any], key: str) -> Model:
        config = self.providers.get(provider)
        if config is not None:
            spec = config.model_dump()
        elif provider in _DEFAULT_PROVIDERS:
            spec = dict(_DEFAULT_PROVIDERS[provider])
        else:
            raise ConfigError(f"unknown provider {provider!r}",
                              [(key, f"no [providers.{provider}] section")])
        api_key = os.environ.get(spec["api_key_env"]) if spec.get("api_key_env") else None
        base_url = spec.get("base_url") or _DEFAULT_PROVIDERS.get(spec["type"], {}).get("base_url")
        common: dict[str, Any] = {"base_url": base_url, "api_key": api_key}
        for option in ("headers", "max_connections", "connect_timeout_s", "read_timeout_s"):
            if spec.get(option) is not None:
                common[option] = spec[option]
        if spec["type"] == "anthropic":
            from roost.models.anthropic import AnthropicModel

            return AnthropicModel(model, provider=provider, settings=settings or None, **common)
        from roost.models.openai_compat import OpenAICompatModel

        return OpenAICompatModel(model, provider=provider, settings=settings or None, **common)

    def _embedder(self, ref: str) -> Any:
        """The embedding model `ref` ("<provider>:<model>") of an OpenAI-compatible provider."""
        provider, sep, model = ref.partition(":")
        config = self.providers.get(provider)
        spec = (config.model_dump() if config is not None
                else dict(_DEFAULT_PROVIDERS.get(provider) or {}))
        if not sep or not model or not spec or spec["type"] != "openai":
            raise ConfigError(f"embedder {ref!r}: use '<provider>:<model>' of an "
                              "OpenAI-compatible provider", [("embedder", ref)])
        from roost.models.embeddings import OpenAICompatEmbedder

        api_key = os.environ.get(spec["api_key_env"]) if spec.get("api_key_env") else None
        return OpenAICompatEmbedder(spec.get("base_url") or _DEFAULT_PROVIDERS["openai"]["base_url"],
                                    model, api_key, provider=provider,
                                    headers=spec.get("headers") or None)

    async def aclose(self) -> None:
        for model in self._models.values():
            close = getattr(model, "aclose", None)
            if close is not None:
                await close()
        self._models.clear()
