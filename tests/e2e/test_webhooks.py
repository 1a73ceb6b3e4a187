"""A webhook delivery survives SIGKILL of the instance that ran the run, between the run's
end and a delivery the receiver accepted: another instance on the same PostgreSQL or Redis
delivers it, once accepted, with the same delivery id and a valid signature."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from tests.e2e.conftest import ServerProcess, start_server
from tests.e2e.test_fleet import KINDS, kill9, wait_for
from tests.e2e.test_shared_store import store_config
from tests.webhooks.receiver import Receiver

pytestmark = pytest.mark.e2e

WEBHOOKS = ("[webhooks]\nallow_loopback = true\nlease_s = 3\ntimeout_s = 2\n"
            "poll_interval_s = 0.1\nbackoff_base_s = 0.1\nwatch_interval_s = 1\n")


@pytest.mark.parametrize("kind", KINDS)
def test_a_delivery_survives_sigkill_between_run_end_and_delivery(
        kind: str, tmp_path: Path, servers: list[ServerProcess]) -> None:
    config = store_config(kind) + WEBHOOKS
    env = {"SLOW_TOOL_S": "0.05"}
    a = start_server(tmp_path, config, env=env, name="a")
    servers.append(a)
    # The receiver never answers a's attempt: the run has ended, its delivery is in flight.
    with Receiver(hang_first=1) as receiver:
        session = httpx.post(f"{a.url}/v1/agents/researcher/sessions", json={}).json()["id"]
        turn = httpx.post(f"{a.url}/v1/sessions/{session}/turns", timeout=30, json={
            "input": "research Otters", "webhook": {"url": receiver.url}})
        assert turn.status_code == 200 and turn.json()["status"] == "completed", turn.text
        run_id = turn.json()["run_id"]
        assert receiver.arrived.wait(20), "a never attempted the delivery"
        kill9(a)
        b = start_server(tmp_path, config, env=env, name="b")
        servers.append(b)

        def delivered() -> bool:
            items = httpx.get(f"{b.url}/v1/runs/{run_id}/deliveries").json()["items"]
            return bool(items) and items[0]["state"] == "delivered"

        wait_for(delivered, timeout=30, what="b to deliver a's run end")
        accepted = receiver.accepted()
        assert len(accepted) == 1
    [got] = accepted
    secret = httpx.get(f"{b.url}/v1/admin/webhooks/secret").json()["secret"]
    body = Webhook(secret).verify(got.body, got.headers)
    assert body["data"]["id"] == run_id and body["type"] == "run.completed"
    [item] = httpx.get(f"{b.url}/v1/runs/{run_id}/deliveries").json()["items"]
    assert item["id"] == got.headers["webhook-id"]
    assert [a["status_code"] for a in item["attempts"]] == [200]  # a died before recording
