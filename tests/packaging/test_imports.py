"""What `import roost` costs: the observability stack and the test doubles' server load only
when used."""

from __future__ import annotations

import subprocess
import sys

import roost.observability

HEAVY = ("opentelemetry", "prometheus_client", "structlog", "aiohttp", "pyinstrument")


def test_import_roost_does_not_import_the_observability_stack() -> None:
    code = ("import sys, roost, roost.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = [name for name in HEAVY if f"'{name}'" in out]
    assert loaded == []


def test_observability_exports_resolve_lazily() -> None:
    for name in roost.observability.__all__:
        assert getattr(roost.observability, name) is not None
    from roost.observability import logs  # a submodule, not an export

    assert logs.__name__ == "roost.observability.logs"


def test_the_opentelemetry_sdk_is_in_the_pinned_tested_range() -> None:
    """observability/spans.py reads the SDK's private span processor list: the range in
    pyproject.toml is the one these tests ran on, and the attribute is still there."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor
    from packaging.requirements import Requirement

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    requirements = [Requirement(r) for r in
                    tomllib.loads(pyproject.read_text())["project"]["dependencies"]]
    (sdk,) = [r for r in requirements if r.name == "opentelemetry-sdk"]
    assert sdk.specifier.contains(importlib.metadata.version("opentelemetry-sdk"))
    assert any(spec.operator == "<" for spec in sdk.specifier)  # an upper bound: pinned
    assert isinstance(SynchronousMultiSpanProcessor()._span_processors, tuple)
