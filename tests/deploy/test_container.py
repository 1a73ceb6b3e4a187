"""deploy/Containerfile: non-root, a writable state volume, pinned dependencies, a health check.

No container engine runs here, so the file is read, not built; what `roost serve` does inside
the image (the examples, the store in the volume) is what tests/packaging runs from a wheel.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "deploy" / "Containerfile").read_text()


def instructions(name: str) -> list[str]:
    text = CONTAINERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in text.splitlines()
            if line.startswith(name + " ")]


def test_it_runs_as_a_non_root_user_with_a_writable_state_volume() -> None:
    (user,) = instructions("USER")
    assert user.split(":")[0] not in ("0", "root")
    assert instructions("VOLUME") == ['["/var/lib/roost"]']
    assert instructions("WORKDIR")[-1] == "/var/lib/roost"
    # Created and chowned before VOLUME, so a new named volume inherits the owner.
    assert re.search(r"install -d -o 10001 -g 10001 \S+ \S+ /var/lib/roost", CONTAINERFILE)
    env = " ".join(instructions("ENV"))
    assert "ROOST_STORE__URL=sqlite:////var/lib/roost/roost.db" in env
    assert "ROOST_SERVER__HOST=0.0.0.0" in env


def test_it_has_a_health_check_and_serves_by_default() -> None:
    (check,) = instructions("HEALTHCHECK")
    assert "/healthz" in check
    assert instructions("CMD")[-1] == '["roost", "serve"]'


def test_every_dependency_is_pinned_within_pyprojects_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in ("postgres", "redis")
               for r in project["optional-dependencies"][extra]]
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    assert "--constraint /tmp/constraints.txt" in CONTAINERFILE
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name])
