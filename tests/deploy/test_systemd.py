"""deploy/roost.service: Type=notify with a watchdog, a state directory, keys from a file,
hardened; `systemd-analyze verify` finds nothing to say about it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "roost.service"


def service() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return dict(parser["Service"])


def test_the_unit_is_notify_with_a_watchdog_state_and_hardening() -> None:
    unit = service()
    assert unit["Type"] == "notify" and unit["NotifyAccess"] == "main"
    assert int(unit["WatchdogSec"]) > 0
    assert unit["StateDirectory"] == "roost" and unit["WorkingDirectory"] == "/var/lib/roost"
    assert unit["EnvironmentFile"].lstrip("-") == "/etc/roost/roost.env"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": ""}.items():
        assert unit[key] == value, key
    assert unit["MemoryMax"] and unit["TasksMax"]
    # The drain (server.shutdown_grace_s, 30 s by default) ends before systemd's SIGKILL.
    assert int(unit["TimeoutStopSec"]) > 30


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    roost = Path(sys.executable).parent / "roost"  # verify wants ExecStart to exist
    unit = tmp_path / "roost.service"
    unit.write_text(UNIT.read_text().replace("/opt/roost/.venv/bin/roost", str(roost)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
