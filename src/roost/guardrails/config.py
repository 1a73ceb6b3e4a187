"""Guardrails from roost.toml: a list of tables per agent, applied after the agent's own
(`Agent(guardrails=[...])`), in order.

    [[agents.support.guardrails]]
    type = "max_input_tokens"
    limit = 4000

    [[agents.support.guardrails]]
    type = "deny_list"
    patterns = ['\\bproject falcon\\b']
    stages = ["input", "output"]
    mode = "reject"                     # or "redact"

    [[agents.support.guardrails]]
    type = "pii"
    mode = "redact"                     # or "reject"
    kinds = ["email", "phone", "card", "iban"]

    [[agents.support.guardrails]]
    type = "prompt_injection"
    mode = "flag"                       # or "reject"
    tools = ["fetch_*"]                 # besides tools marked untrusted

    [[agents.support.guardrails]]
    type = "mypackage.checks:Toxicity"  # any importable factory taking the table's keys
    threshold = 0.8

Every key but `type` goes to the guardrail's constructor; a bad table is a `ConfigError`
naming `agents.NAME.guardrails[i]`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from roost.errors import ConfigError
from roost.guardrails.base import Guardrail
from roost.guardrails.denylist import DenyList
from roost.guardrails.injection import PromptInjection
from roost.guardrails.pii import PII
from roost.guardrails.tokens import MaxInputTokens

BUILT_INS: dict[str, Callable[..., Guardrail]] = {
    "max_input_tokens": MaxInputTokens,
    "deny_list": DenyList,
    "pii": PII,
    "prompt_injection": PromptInjection,
}


def guardrail_from_config(table: Mapping[str, Any], where: str) -> Guardrail:
    options = dict(table)
    kind = options.pop("type", None)
    if not isinstance(kind, str) or not kind:
        raise ConfigError(f"{where}: give the guardrail's type",
                          [(f"{where}.type", f"one of {', '.join(BUILT_INS)} or "
                                             "'module:factory'")])
    factory = BUILT_INS.get(kind) or _import(kind, where)
    try:
        guardrail = factory(**options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}", [(where, str(exc))]) from None
    if not isinstance(guardrail, Guardrail):
        raise ConfigError(f"{where}: {kind} did not make a guardrail",
                          [(f"{where}.type", "needs name, stages and check()")])
    return guardrail


def _import(ref: str, where: str) -> Callable[..., Guardrail]:
    module_name, _, attribute = ref.partition(":")
    if not attribute:
        raise ConfigError(f"{where}: unknown guardrail type {ref!r}",
                          [(f"{where}.type", f"one of {', '.join(BUILT_INS)} or "
                                             "'module:factory'")])
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import {ref}: {exc}",
                          [(f"{where}.type", str(exc))]) from None
    if not callable(factory):
        raise ConfigError(f"{where}: {ref} is not callable", [(f"{where}.type", ref)])
    return factory  # type: ignore[no-any-return]
