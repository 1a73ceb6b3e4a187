"""Test doubles Roost ships for its users' tests and its own.

- `ScriptedModel` / `call`: a `Model` that plays back a script.
- `MockOpenAIServer`: an OpenAI-compatible server over real HTTP (latency, tools, streaming,
  embeddings) with fault injection (`FaultPlan`).
- `LiveServer`: a real uvicorn serving a Runtime on a free port.

The mock servers need aiohttp: `pip install 'roost[testing]'` (an ImportError says so).

Imports are lazy so that `roost.testing.scripted` does not pull in aiohttp's server.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ScriptedModel": "roost.testing.scripted",
    "call": "roost.testing.scripted",
    "MockOpenAIServer": "roost.testing.mock_openai",
    "FaultPlan": "roost.testing.faults",
    "FaultInjector": "roost.testing.faults",
    "FaultMode": "roost.testing.faults",
    "FAULT_HEADER": "roost.testing.faults",
    "LiveServer": "roost.testing.live",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'roost.testing' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
