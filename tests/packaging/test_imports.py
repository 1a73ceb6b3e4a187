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
