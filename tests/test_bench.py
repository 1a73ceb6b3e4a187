"""`roost bench`: the reference scenario against the mock model, or a running deployment."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from roost.bench import percentile, summarise
from roost.testing.live import LiveServer
from tests.server.conftest import demo
from tests.test_cli import roost

__all__ = ["demo"]

ROOST = Path(sys.executable).parent / "roost"


def test_summary_against_the_floor() -> None:
    result = summarise([0.1, 0.2, 0.3, 0.4], ["boom"], 2.0, floor_s=0.1)
    assert (result.turns, result.errors, result.turns_per_s) == (4, 1, 2.0)
    assert result.p50_ms == 300.0 and result.p99_over_floor == 4.0
    assert percentile([], 0.5) != percentile([], 0.5)  # nan: no turns, no percentile


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_bench_starts_a_server_and_the_mock_and_measures(tmp_path: Path) -> None:
    out = subprocess.run([str(ROOST), "bench", "--sessions", "4", "--turns", "2",
                          "--concurrency", "2", "--warmup", "1", "--latency-ms", "5", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["turns"] == 8 and result["errors"] == 0
    assert result["floor_ms"] == 10.0 and result["p50_ms"] >= 10.0
    assert result["cpu_ms_per_turn"] > 0 and result["rss_mib"] > 0
    assert result["store"] == "sqlite"


def test_bench_url_loads_a_running_deployment(demo: LiveServer) -> None:
    result = roost("bench", "--url", demo.url, "--sessions", "3", "--turns", "2",
                   "--concurrency", "2", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["turns"] == 6 and body["errors"] == 0
    assert body["cpu_ms_per_turn"] is None and body["floor_ms"] is None


def test_bench_reports_errors_and_exits_1(demo: LiveServer) -> None:
    result = roost("bench", "--url", demo.url, "--agent", "nobody", "--sessions", "2",
                   "--warmup", "0")
    assert result.exit_code == 1
    assert "create session: 404" in result.stderr
