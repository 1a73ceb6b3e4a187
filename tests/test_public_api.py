"""`roost.__all__` is the public API: pinned here so that adding or removing an export is a
deliberate change (as httpx's tests/test_exported_members.py does)."""

from __future__ import annotations

import importlib.metadata
import inspect
import re
import types

import roost

PUBLIC_API = [
    "Agent",
    "Event",
    "FunctionTool",
    "Limits",
    "Message",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "Policies",
    "RoostError",
    "RunHandle",
    "RunRecord",
    "Runtime",
    "Session",
    "Settings",
    "TextDelta",
    "Tool",
    "ToolCall",
    "ToolContext",
    "Usage",
    "__version__",
    "load_settings",
    "tool",
]


def test_all_is_pinned() -> None:
    assert roost.__all__ == PUBLIC_API


def test_all_is_sorted_and_unique() -> None:
    assert roost.__all__ == sorted(set(roost.__all__))


def test_every_public_attribute_is_exported() -> None:
    """Nothing public is reachable on `roost` without being in `__all__` (subpackages, which
    importing loads as attributes, are not exports)."""
    public = sorted(
        (name for name, value in vars(roost).items()
         if (not name.startswith("_") or name == "__version__")
         and not isinstance(value, types.ModuleType)))
    assert public == roost.__all__


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from roost import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == sorted(roost.__all__)


def test_exports_are_roost_objects() -> None:
    for name in roost.__all__:
        value = getattr(roost, name)
        if name == "__version__":
            continue
        assert getattr(value, "__module__", "").startswith("roost."), name


def test_version_matches_the_package_metadata() -> None:
    assert roost.__version__ == importlib.metadata.version("roost")


def test_the_module_docstring_example_runs() -> None:
    doc = roost.__doc__ or ""
    code = "\n".join(line[4:] for line in doc.splitlines() if line.startswith("    "))
    code = re.sub(r"#.*$", "", code, flags=re.MULTILINE)
    namespace: dict[str, object] = {}
    exec(code, namespace)
    agent = namespace["agent"]
    assert isinstance(agent, roost.Agent)
    assert agent.name == "weather"
    assert [t.name for t in agent.tools] == ["get_weather"]


def test_every_export_has_a_docstring() -> None:
    missing = []
    for name in roost.__all__:
        value = getattr(roost, name)
        if isinstance(value, str):
            continue
        doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
        if not (doc and doc.strip()):
            missing.append(name)
    assert missing == [], f"exports without their own docstring: {missing}"

