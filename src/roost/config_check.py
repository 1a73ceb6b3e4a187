"""`roost config check`: everything `roost serve` would refuse, found without serving.

`Settings` validates each key on its own. What only shows when the pieces meet is checked here,
and every problem is collected (not just the first of a section):

1. the agent files and modules of `load` import and define agents;
2. every `[agents.NAME]` names an agent that is loaded (or bundled, when nothing is loaded);
3. its `limits` and `policies` are known fields with valid values, each checked on its own;
4. every model reference (aliases, agents, overrides) resolves to a provider;
5. a model setting that is one letter off a known one (`temprature`) is a typo — providers
   accept vendor extensions, so other unknown settings pass;
6. a provider in use whose API key variable is unset is a warning (local servers need none).

    problems, warnings = check(settings)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from typing import Any

from roost.agent import Agent, Limits, Policies
from roost.config import Settings
from roost.errors import ConfigError

Problem = tuple[str, str]

# Chat-completions and Messages API request fields, plus common OpenAI-compatible extensions.
KNOWN_MODEL_SETTINGS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "max_tokens", "max_completion_tokens",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "stop", "stop_sequences",
    "seed", "n", "logit_bias", "logprobs", "top_logprobs", "response_format", "tool_choice",
    "parallel_tool_calls", "user", "reasoning_effort", "service_tier", "store", "metadata",
    "stream_options", "modalities", "prediction", "thinking", "system", "extra_body",
})


def check(settings: Settings, agents: list[Agent] | None = None
          ) -> tuple[list[Problem], list[Problem]]:
    """(problems, warnings) of `settings` as `roost serve` would meet them; `agents`: those
    already loaded (else `settings.load`, or the bundled examples, are loaded here)."""
    from roost.models.registry import ModelRegistry

    problems: list[Problem] = []
    warnings: list[Problem] = []
    if agents is None:
        agents = _load(settings, problems)
    registry = ModelRegistry(settings.providers, settings.models)

    def resolve(ref: str, key: str) -> None:
        try:
            registry._build(ref, ())
        except ConfigError as exc:
            problems.extend((key if k == "model" else k, m)
                            for k, m in exc.problems or [(key, exc.message)])

    for alias, spec in settings.models.items():
        resolve(alias, f"models.{alias}")
        problems.extend(_typos(spec.settings, f"models.{alias}.settings"))
    names = {a.name: a for a in agents}
    for agent in agents:
        if isinstance(agent.model, str) and agent.name not in settings.agents:
            resolve(agent.model, f"agents.{agent.name}.model")
        problems.extend(_typos(agent.model_settings or {}, f"agents.{agent.name}.model_settings"))
    for name, override in settings.agents.items():
        key = f"agents.{name}"
        if agents and name not in names:
            problems.append((key, f"no agent {name!r} is loaded (agents: "
                                  f"{', '.join(sorted(names))})"))
        problems.extend(_fields(Limits, override.limits, f"{key}.limits"))
        problems.extend(_fields(Policies, override.policies, f"{key}.policies"))
        model = override.model or (names[name].model if name in names else None)
        if isinstance(model, str):
            resolve(model, f"{key}.model")
    warnings.extend(_missing_keys(settings, agents))
    return problems, warnings


def _load(settings: Settings, problems: list[Problem]) -> list[Agent]:
    from roost.loader import bundled_examples, load_agents

    agents: list[Agent] = []
    for target in settings.load or [str(p) for p in bundled_examples()]:
        try:
            agents.extend(load_agents([target]))
        except ConfigError as exc:
            problems.extend(exc.problems or [("load", exc.message)])
    return agents


def _fields(cls: type[Limits] | type[Policies], values: dict[str, Any], key: str) -> list[Problem]:
    """Each override on its own, so that every bad one is reported."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    problems: list[Problem] = []
    for name, value in values.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(fields)})"
            problems.append((f"{key}.{name}", f"unknown setting{hint}"))
            continue
        choices = typing.get_args(hints[name]) if typing.get_origin(hints[name]) is typing.Literal \
            else ()
        if choices and value not in choices:
            problems.append((f"{key}.{name}", f"{value!r} is not one of "
                                              f"{', '.join(map(repr, choices))}"))
            continue
        try:
            cls(**{name: value})
        except (TypeError, ValueError) as exc:
            problems.append((f"{key}.{name}", str(exc)))
    return problems


def _typos(settings: dict[str, Any], key: str) -> list[Problem]:
    problems: list[Problem] = []
    for name in settings:
        if name in KNOWN_MODEL_SETTINGS:
            continue
        close = difflib.get_close_matches(name, KNOWN_MODEL_SETTINGS, n=1, cutoff=0.8)
        if close:
            problems.append((f"{key}.{name}", f"unknown model setting; did you mean {close[0]!r}?"))
    return problems


def _missing_keys(settings: Settings, agents: list[Agent]) -> list[Problem]:
    """Providers some model uses whose `api_key_env` variable is unset."""
    from roost.models.registry import _DEFAULT_PROVIDERS

    used: set[str] = {spec.provider for spec in settings.models.values()}
    refs = [a.model for a in agents if isinstance(a.model, str)]
    refs += [o.model for o in settings.agents.values() if o.model]
    used |= {ref.partition(":")[0] for ref in refs if ":" in ref and ref not in settings.models}
    warnings: list[Problem] = []
    for provider in sorted(used):
        config = settings.providers.get(provider)
        env = (config.api_key_env if config is not None
               else _DEFAULT_PROVIDERS.get(provider, {}).get("api_key_env"))
        if env and not os.environ.get(env):
            warnings.append((f"providers.{provider}", f"${env} is not set: requests will be "
                                                      "refused by the provider"))
    return warnings
