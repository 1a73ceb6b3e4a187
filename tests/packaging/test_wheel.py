"""The wheel a user installs: built here, installed into a fresh virtualenv, then `roost serve`
from an empty directory must serve the bundled examples.

Slow (a wheel build and a dependency install: ~25 s here), so marked e2e; `.ci/run` runs it.
"""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import httpx
import pytest

from roost.testing.live import free_port
from tests.server.conftest import WAIT_S, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=180)
    (built,) = out.glob("roost-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel and its dependencies only (no extras)."""
    env = tmp_path_factory.mktemp("venv")
    venv.create(env, with_pip=True)
    subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                   check=True, capture_output=True, timeout=180)
    return env / "bin"


def test_the_wheel_ships_the_examples_and_the_license(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "roost/_examples/weather.py" in names
    assert "roost/_examples/calculator.py" in names
    assert "roost/__main__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Provides-Extra: testing" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert not any("aiohttp" in line and "extra ==" not in line for line in requires)


def test_roost_serve_from_an_empty_directory_serves_the_examples(installed: Path,
                                                                  tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    port = free_port()
    server = subprocess.Popen([str(installed / "roost"), "serve", "--port", str(port)],
                              cwd=empty, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S) as http:

            def ready() -> bool:
                try:
                    return http.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(lambda: ready() or server.poll() is not None, timeout=30)
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            names = sorted(a["name"] for a in http.get("/v1/agents").json()["items"])
            assert names == ["calculator", "weather"]
        assert (empty / ".roost" / "roost.db").exists()  # the default SQLite store
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=WAIT_S)
    assert server.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_python_dash_m_and_the_testing_extra_hint(installed: Path) -> None:
    python = str(installed / "python")
    version = subprocess.run([python, "-m", "roost", "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("roost "), version.stderr
    missing = subprocess.run([python, "-c", "from roost.testing import MockOpenAIServer"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert "pip install 'roost[testing]'" in missing.stderr
