"""Find agents in Python files or modules: `roost serve examples/weather.py mypkg.agents`."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from roost.agent import Agent, agents_in
from roost.errors import ConfigError


def bundled_examples() -> list[Path]:
    """The example agents: shipped inside the wheel, or the checkout's examples/ folder."""
    here = Path(__file__).resolve().parent
    for folder in (here / "_examples", here.parents[1] / "examples"):
        files = sorted(p for p in folder.glob("*.py") if not p.name.startswith("_"))
        if files:
            return files
    return []


def load_agents(targets: list[str]) -> list[Agent]:
    """Import each file or module and collect the `Agent` objects it defines."""
    agents: list[Agent] = []
    for target in targets:
        module_agents = agents_in(vars(_import(target)))
        if not module_agents:
            raise ConfigError(f"{target} defines no Agent", [("load", f"{target}: no Agent found")])
        agents.extend(module_agents)
    return agents


def _import(target: str) -> object:
    path = Path(target)
    if path.suffix == ".py" or path.exists():
        if not path.is_file():
            raise ConfigError(f"no such file: {target}", [("load", f"{target}: not found")])
        # A stable unique module name so two files called agents.py do not collide.
        name = f"roost_user_{path.stem}_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import {target}", [("load", target)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise ConfigError(f"importing {target} failed: {type(exc).__name__}: {exc}",
                              [("load", f"{target}: {exc}")]) from exc
        return module
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {target}: {exc}", [("load", str(exc))]) from exc
