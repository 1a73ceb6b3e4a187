"""A 1,000-step run on real processes: its context is compacted as it grows, and it survives
the SIGKILL of its instance in the middle (another instance resumes it from the log)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.test_fleet import kill9, wait_for
from tests.e2e.test_shared_store import store_config

pytestmark = pytest.mark.e2e

AGENTS = str(Path(__file__).resolve().parents[1] / "runtime" / "long_run_agent.py")
STEPS = 1000


def _post_quietly(url: str, body: dict[str, object]) -> None:
    # The instance is killed while this request waits: its connection breaks.
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url, json=body, timeout=120)


@pytest.mark.parametrize("kind", ["postgres", "redis"])
def test_a_thousand_step_run_survives_sigkill_and_compacts(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    marker = tmp_path / "steps.txt"
    config = store_config(kind) + "[runtime]\nlease_ttl_s = 2\ntakeover_interval_s = 0.2\n"
    env = {"LONG_RUN_STEPS": str(STEPS), "LONG_RUN_MARKER": str(marker)}
    for name in ("a", "b"):
        servers.append(start_server(tmp_path, config, env=env, agents=AGENTS, name=name))
    a, b = servers[-2:]
    session = httpx.post(f"{a.url}/v1/agents/long/sessions", json={}).json()["id"]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(_post_quietly, f"{a.url}/v1/sessions/{session}/turns", {"input": "go"})

        def steps_done() -> int:
            return len(marker.read_text().splitlines()) if marker.exists() else 0

        wait_for(lambda: steps_done() >= STEPS // 3, timeout=60, what="a third of the steps")
        kill9(a)
        killed_at = steps_done()
        assert killed_at < STEPS, "the run ended before the kill"

    def ended() -> bool:
        return _last_event(b.url, session)["type"] == "run.completed"

    wait_for(ended, timeout=90, what="the run to complete on the other instance")
    elapsed = time.monotonic() - started
    log = _all_events(b.url, session)
    results = [e["data"]["content"] for e in log if e["type"] == "tool.result"]
    # Each step recorded exactly once (at-least-once execution: the step in flight at the
    # kill may have run twice, its result is recorded once).
    assert results == [f"step {n} done" for n in range(1, STEPS + 1)]
    compactions = [e for e in log if e["type"] == "compaction"]
    assert len(compactions) >= 20, len(compactions)
    run_id = log[-1]["run_id"]
    run = httpx.get(f"{b.url}/v1/runs/{run_id}").json()
    assert run["status"] == "completed" and run["attempt"] >= 2
    assert run["output"] == f"all {STEPS} steps done"
    print(f"{kind}: {STEPS} steps, killed at {killed_at}, {len(compactions)} compactions, "
          f"{elapsed:.1f} s")


def _last_event(url: str, session: str) -> dict[str, object]:
    last_seq = httpx.get(f"{url}/v1/sessions/{session}").json()["last_seq"]
    items = httpx.get(f"{url}/v1/sessions/{session}/events",
                      params={"after": last_seq - 1, "limit": 1}).json()["items"]
    return dict(items[0]) if items else {"type": None}


def _all_events(url: str, session: str) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    after = 0
    while True:
        page = httpx.get(f"{url}/v1/sessions/{session}/events",
                         params={"after": after, "limit": 1000}).json()["items"]
        if not page:
            return events
        events.extend(page)
        after = page[-1]["seq"]
