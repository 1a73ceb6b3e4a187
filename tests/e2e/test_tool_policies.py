"""Tool policies over real processes: a tenant's denied tool, and an exactly-once side effect
that survives a SIGKILL and a takeover re-running its step."""

from __future__ import annotations

import concurrent.futures
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.test_fleet import _post_quietly, kill9, wait_for
from tests.e2e.test_shared_store import store_config

pytestmark = pytest.mark.e2e

REFUNDS = Path(__file__).resolve().parents[2] / "examples" / "exactly_once" / "refunds.py"


def test_a_tenants_denied_tool_is_never_offered_or_run(
        tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "calls.txt"
    config = ('[tool_policies.tenants.default]\ndeny = ["slow_task"]\n'
              '[tool_policies.limits.slow_task]\nmax_concurrency = 1\n')
    server = start_server(tmp_path, config, env={"SLOW_TOOL_MARKER": str(marker)})
    servers.append(server)
    session = httpx.post(f"{server.url}/v1/agents/researcher/sessions", json={}).json()["id"]
    answer = httpx.post(f"{server.url}/v1/sessions/{session}/turns",
                        json={"input": "research slow task Topic"}, timeout=30)
    assert answer.status_code == 200, answer.text
    events = httpx.get(f"{server.url}/v1/sessions/{session}/events").json()["items"]
    assert events[-1]["type"] == "run.completed"
    assert [e for e in events if e["type"].startswith("tool.")] == []
    assert not marker.exists()


def ledger(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as connection:
        try:
            return connection.execute("SELECT orders, key FROM ledger").fetchall()
        except sqlite3.OperationalError:  # the table is not created yet
            return []


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_a_side_effect_keyed_by_idempotency_key_happens_once_across_a_takeover(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    """The refund commits, then its instance is killed before the result is recorded; the
    instance that takes the run over runs the call again with the same key: one ledger row."""
    db = tmp_path / "refunds.db"
    config = store_config(kind) + "[runtime]\nlease_ttl_s = 2\ntakeover_interval_s = 0.2\n"
    a = start_server(tmp_path, config, agents=str(REFUNDS), name="a",
                     env={"REFUNDS_DB": str(db), "REFUND_PAUSE_S": "60"})
    servers.append(a)
    b = start_server(tmp_path, config, agents=str(REFUNDS), name="b",
                     env={"REFUNDS_DB": str(db), "REFUND_PAUSE_S": "60"})
    servers.append(b)
    session = httpx.post(f"{a.url}/v1/agents/payments/sessions", json={}).json()["id"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_post_quietly, f"{a.url}/v1/sessions/{session}/turns",
                    {"input": "refund order A17"})
        wait_for(lambda: len(ledger(db)) == 1, what="the refund committed")
        run_id = httpx.get(f"{b.url}/v1/sessions/{session}/events").json()["items"][0]["run_id"]
        kill9(a)

    wait_for(lambda: httpx.get(f"{b.url}/v1/runs/{run_id}").json()["status"] == "completed",
             timeout=30, what="the run taken over to complete")
    run = httpx.get(f"{b.url}/v1/runs/{run_id}").json()
    assert run["attempt"] == 2  # the step ran again …
    assert ledger(db) == [("A17", f"{run_id}:call_1_0")]  # … the refund did not
    events = httpx.get(f"{b.url}/v1/sessions/{session}/events").json()["items"]
    [result] = [e for e in events if e["type"] == "tool.result"]
    assert result["data"]["content"] == "refunded 17 on order A17"
