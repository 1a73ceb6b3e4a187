"""`/docs` and `/redoc` render in a real browser with every host but loopback unreachable:
the pages need nothing from a CDN. Headless Chromium (Debian's `chromium`), skipped without it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from roost.testing.live import LiveServer
from tests.server.conftest import demo

__all__ = ["demo"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120),
              pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt install chromium)")]


def rendered(url: str) -> str:
    """The page's DOM after its scripts ran (a virtual-time budget lets them finish)."""
    assert CHROMIUM is not None
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         # Offline: every name but loopback fails to resolve.
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=10000", "--dump-dom", url],
        capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_swagger_ui_renders_the_operations_offline(demo: LiveServer) -> None:
    dom = rendered(f"{demo.url}/docs")
    assert "opblock" in dom, dom[-2000:]  # an operation block: the UI ran and read the schema
    assert "/v1/sessions/{session_id}/turns" in dom


def test_redoc_renders_offline(demo: LiveServer) -> None:
    dom = rendered(f"{demo.url}/redoc")
    assert "createTurn" in dom or "Create Turn" in dom, dom[-2000:]
