"""A schema fuzzer (schemathesis) over the whole API of a real server: no 5xx, and every
response keeps to its declared status codes, content type and schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from roost.testing.live import LiveServer
from tests.server.conftest import demo

__all__ = ["demo"]

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300),
              pytest.mark.skipif(SCHEMATHESIS is None,
                                 reason="pip install schemathesis (in the dev extra)")]


def test_the_api_keeps_its_schema_under_fuzzing(demo: LiveServer, tmp_path: Path) -> None:
    assert SCHEMATHESIS is not None
    result = subprocess.run(
        [SCHEMATHESIS, "run", f"{demo.url}/openapi.json", "--max-examples", "10",
         "--seed", "1", "--exclude-path", "/v1/admin/profile",  # sleeps for its duration
         # The protocol routes' payloads are the protocols' (tests/protocols/test_openapi.py
         # checks what they answer against the document).
         "--exclude-tag", "openai", "--exclude-tag", "mcp", "--exclude-tag", "a2a",
         "--checks", "not_a_server_error,response_schema_conformance,"
                     "content_type_conformance,status_code_conformance"],
        capture_output=True, text=True, timeout=280,
        cwd=tmp_path)  # its .schemathesis/ cache goes there, not into the checkout
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
