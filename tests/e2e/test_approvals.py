"""Human in the loop across a fleet: real `roost serve` processes on PostgreSQL or Redis.
A run pauses on one instance; the decision arrives at another (or after the first was
killed) and the run resumes there, once."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import HERE, ServerProcess, start_server
from tests.e2e.test_fleet import kill9, wait_for
from tests.e2e.test_shared_store import store_config

pytestmark = pytest.mark.e2e

KINDS = ["postgres", "redis"]
AGENTS = str(HERE / "approval_agent.py")
FAST = "[runtime]\nlease_ttl_s = 2\ntakeover_interval_s = 0.2\n"


def fleet(tmp_path: Path, servers: list[ServerProcess], kind: str, extra: str = "",
          n: int = 2) -> list[ServerProcess]:
    config = store_config(kind) + FAST + extra
    env = {"TRANSFER_MARKER": str(tmp_path / "transfers.txt")}
    for i in range(n):
        servers.append(start_server(tmp_path, config, env=env, agents=AGENTS, name=f"i{i}"))
    return servers[-n:]


def pause(url: str, agent: str = "banker", **turn: object) -> dict[str, object]:
    session = httpx.post(f"{url}/v1/agents/{agent}/sessions", json={}).json()["id"]
    body = httpx.post(f"{url}/v1/sessions/{session}/turns",
                      json={"input": "pay Bob", **turn}, timeout=30).json()
    assert body["status"] == "waiting", body
    return {"session": session, **body}


def run_status(url: str, run_id: str) -> str:
    return str(httpx.get(f"{url}/v1/runs/{run_id}").json()["status"])


def transfers(tmp_path: Path) -> list[str]:
    path = tmp_path / "transfers.txt"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("kind", KINDS)
def test_approval_through_another_instance_resumes_the_run_there_once(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    a, b = fleet(tmp_path, servers, kind)
    paused = pause(a.url)
    run_id = str(paused["run_id"])
    events = paused["events"]
    assert isinstance(events, list)
    required = [e for e in events if e["type"] == "approval.required"]
    assert len(required) == 1 and required[0]["data"]["name"] == "transfer"
    assert events[-1]["type"] == "run.waiting"
    assert run_status(b.url, run_id) == "waiting" and not transfers(tmp_path)
    # Two decisions race through both instances: one resumes the run, the other is 409.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(
            lambda url: httpx.post(f"{url}/v1/runs/{run_id}/approvals",
                                   json={"decision": "approve"}, timeout=30),
            [a.url, b.url]))
    assert sorted(r.status_code for r in answers) == [202, 409], [r.text for r in answers]
    wait_for(lambda: run_status(b.url, run_id) == "completed", what="the approved run to end")
    assert len(transfers(tmp_path)) == 1, "the approved call ran exactly once"
    log = httpx.get(f"{a.url}/v1/sessions/{paused['session']}/events",
                    params={"limit": 1000}).json()["items"]
    assert [e["data"]["decision"] for e in log if e["type"] == "approval.decided"] == ["approve"]


@pytest.mark.parametrize("kind", KINDS)
def test_approval_after_the_pausing_instance_was_killed(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    a, b = fleet(tmp_path, servers, kind)
    paused = pause(a.url)
    run_id = str(paused["run_id"])
    kill9(a)
    # Nothing to take over: a waiting run has no owner. The decision resumes it on b.
    answer = httpx.post(f"{b.url}/v1/runs/{run_id}/approvals",
                        json={"decision": "reject", "reason": "Bob was paid already"},
                        timeout=30)
    assert answer.status_code == 202, answer.text
    wait_for(lambda: run_status(b.url, run_id) == "completed", what="the rejected run to end")
    assert not transfers(tmp_path)
    log = httpx.get(f"{b.url}/v1/sessions/{paused['session']}/events",
                    params={"limit": 1000}).json()["items"]
    result = next(e for e in log if e["type"] == "tool.result")
    assert result["data"]["content"] == "Rejected by a person: Bob was paid already"
    assert result["data"]["outcome"] == "rejected"


@pytest.mark.parametrize("kind", ["postgres"])
def test_edited_arguments_stream_and_follow(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    a, b = fleet(tmp_path, servers, kind)
    session = httpx.post(f"{a.url}/v1/agents/banker/sessions", json={}).json()["id"]
    # The stream shows the waiting state and ends cleanly with it.
    with httpx.stream("POST", f"{a.url}/v1/sessions/{session}/turns",
                      json={"input": "pay Bob", "stream": True}, timeout=30) as stream:
        text = "".join(stream.iter_text())
    frames = [line.removeprefix("event: ") for line in text.splitlines()
              if line.startswith("event: ")]
    assert frames[-2:] == ["approval.required", "run.waiting"], frames
    run_id = stream.headers["X-Run-Id"]
    last_seq = max(int(line.removeprefix("id: ")) for line in text.splitlines()
                   if line.startswith("id: "))
    bad = httpx.post(f"{b.url}/v1/runs/{run_id}/approvals",
                     json={"decision": "approve", "arguments": {"amount": "lots", "to": "Al"}})
    assert bad.status_code == 422, bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert "arguments.amount" in bad.text
    other_tenant = httpx.post(f"{b.url}/v1/runs/run_nope/approvals",
                              json={"decision": "approve"})
    assert other_tenant.status_code == 404
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        # A client follows the run from where its stream ended, through the other instance.
        follower = pool.submit(lambda: httpx.get(
            f"{a.url}/v1/runs/{run_id}/events", headers={"Last-Event-ID": str(last_seq)},
            timeout=30).text)
        good = httpx.post(f"{b.url}/v1/runs/{run_id}/approvals",
                          json={"decision": "approve", "arguments": {"amount": 7, "to": "Al"}})
        assert good.status_code == 202, good.text
        followed = follower.result()
    assert "event: tool.result" in followed and "event: run.completed" in followed
    assert transfers(tmp_path) == ["7 Al"]


@pytest.mark.parametrize("kind", KINDS)
def test_an_expired_approval_takes_its_configured_outcome_on_the_fleet(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    extra = ('[agents.banker.policies.approval]\ntimeout_s = 1\non_timeout = "reject"\n')
    a, b = fleet(tmp_path, servers, kind, extra)
    paused = pause(a.url)
    run_id = str(paused["run_id"])
    kill9(a)  # the instance that paused it is gone: the survivor applies the timeout
    wait_for(lambda: run_status(b.url, run_id) == "completed", what="the timeout outcome")
    log = httpx.get(f"{b.url}/v1/sessions/{paused['session']}/events",
                    params={"limit": 1000}).json()["items"]
    decided = [e["data"] for e in log if e["type"] == "approval.decided"]
    assert [(d["decision"], d["by"]) for d in decided] == [("reject", "timeout")]
    assert not transfers(tmp_path)


@pytest.mark.parametrize("kind", ["postgres"])
def test_ask_user_answer_through_another_instance(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    a, b = fleet(tmp_path, servers, kind)
    paused = pause(a.url, agent="asker")
    run_id = str(paused["run_id"])
    events = paused["events"]
    assert isinstance(events, list)
    assert events[-2]["data"]["kind"] == "question"
    answer = httpx.post(f"{b.url}/v1/runs/{run_id}/approvals", json={"answer": "Oslo"})
    assert answer.status_code == 202, answer.text
    wait_for(lambda: run_status(a.url, run_id) == "completed", what="the answered run")
    log = httpx.get(f"{a.url}/v1/sessions/{paused['session']}/events",
                    params={"limit": 1000}).json()["items"]
    assert next(e for e in log if e["type"] == "tool.result")["data"]["content"] == "Oslo"


@pytest.mark.parametrize("kind", ["postgres"])
def test_a_turn_budget_stops_the_run(kind: str, tmp_path: Path,
                                     servers: list[ServerProcess]) -> None:
    (a,) = fleet(tmp_path, servers, kind, n=1)
    session = httpx.post(f"{a.url}/v1/agents/asker/sessions", json={}).json()["id"]
    body = httpx.post(f"{a.url}/v1/sessions/{session}/turns",
                      json={"input": "hi", "max_tool_calls": 0}, timeout=30).json()
    assert body["status"] == "budget_exceeded", body
    assert body["error"]["budget"] == "max_tool_calls"
    bad = httpx.post(f"{a.url}/v1/sessions/{session}/turns",
                     json={"input": "hi", "max_cost": -1}, timeout=30)
    assert bad.status_code == 422 and "max_cost" in bad.text
