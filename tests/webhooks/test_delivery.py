"""Webhook deliveries over real HTTP: a real Roost server and a real receiver on loopback, on
the memory and SQLite stores (PostgreSQL and Redis: test_outbox_contract.py, and the SIGKILL
test in tests/e2e/test_webhooks.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook

from roost.testing.live import LiveServer
from tests.server.conftest import STORES, assert_problem, new_session, serving, wait_until
from tests.webhooks.receiver import Receiver

FAST = {"allow_loopback": True, "poll_interval_s": 0.02, "backoff_base_s": 0.02,
        "backoff_max_s": 0.1, "timeout_s": 5, "lease_s": 10}


@pytest.fixture(scope="module", params=STORES)
def server(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(tmp_path_factory.mktemp("webhooks")) as start:
        yield start(store=request.param, webhooks=FAST)


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def deliveries(http: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    response = http.get(f"/v1/runs/{run_id}/deliveries")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def state_of(http: httpx.Client, run_id: str) -> str | None:
    items = deliveries(http, run_id)
    return items[0]["state"] if items else None


def verify_by_hand(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The documented algorithm, independently of any webhook library."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(f"v1,{expected}", s)
               for s in headers["webhook-signature"].split(" "))


def test_a_receiver_failing_three_times_gets_one_accepted_signed_delivery(
        http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    with Receiver(fail_first=3) as receiver:
        turn = http.post(f"/v1/sessions/{session}/turns", json={
            "input": "Weather in Paris?", "webhook": {"url": receiver.url}})
        assert turn.status_code == 200, turn.text
        run_id = turn.json()["run_id"]
        wait_until(lambda: state_of(http, run_id) == "delivered", what="the delivery")
        assert len(receiver.accepted()) == 1
        assert len(receiver.received) == 4
    got = receiver.accepted()[0]
    # The same delivery id on every attempt: what a receiver dedupes on.
    assert {r.headers["webhook-id"] for r in receiver.received} == {got.headers["webhook-id"]}
    secret = http.get("/v1/admin/webhooks/secret").json()["secret"]
    body = Webhook(secret).verify(got.body, got.headers)
    assert verify_by_hand(secret, got.headers, got.body)
    assert not verify_by_hand(secret, got.headers, got.body + b" ")
    assert body["type"] == "run.completed"
    assert body["data"]["id"] == run_id and "Paris" in body["data"]["output"]
    [item] = deliveries(http, run_id)
    assert item["id"] == got.headers["webhook-id"]
    assert [a["status_code"] for a in item["attempts"]] == [500, 500, 500, 200]
    assert [a["error"] for a in item["attempts"]][:3] == ["HTTP 500"] * 3
    assert all(a["duration_ms"] >= 0 for a in item["attempts"])
    assert item["next_attempt_at"] is None


def test_only_the_events_asked_for_are_delivered(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    with Receiver() as receiver:
        turn = http.post(f"/v1/sessions/{session}/turns", json={
            "input": "Weather in Rome?",
            "webhook": {"url": receiver.url, "events": ["run.failed"]}})
        run_id = turn.json()["run_id"]
        wait_until(lambda: state_of(http, run_id) == "skipped", what="the skip")
        assert receiver.received == []


def test_a_background_run_delivers_too(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    with Receiver() as receiver:
        queued = http.post(f"/v1/sessions/{session}/turns", json={
            "input": "Weather in Oslo?", "background": True,
            "webhook": {"url": receiver.url, "events": ["run.ended"]}})
        assert queued.status_code == 202, queued.text
        run_id = queued.json()["id"]
        wait_until(lambda: state_of(http, run_id) == "delivered", what="the delivery")
        assert orjson.loads(receiver.accepted()[0].body)["data"]["status"] == "completed"


def test_a_slow_receiver_does_not_slow_turns(http: httpx.Client) -> None:
    session = new_session(http, "weather")["id"]
    with Receiver(hold=threading.Event()) as receiver:
        assert receiver.hold is not None
        first = http.post(f"/v1/sessions/{session}/turns", json={
            "input": "Weather in Lima?", "webhook": {"url": receiver.url}})
        assert first.status_code == 200
        assert receiver.arrived.wait(10), "the delivery never reached the receiver"
        # The receiver holds that delivery; more turns (with webhooks) still answer.
        for city in ("Bern", "Kyiv", "Baku"):
            started = time.monotonic()
            turn = http.post(f"/v1/sessions/{session}/turns", json={
                "input": f"Weather in {city}?", "webhook": {"url": receiver.url}})
            assert turn.status_code == 200 and turn.json()["status"] == "completed"
            assert time.monotonic() - started < 2.0  # the held delivery waits up to 30 s
        assert receiver.accepted() == []
        receiver.hold.set()
        wait_until(lambda: state_of(http, first.json()["run_id"]) == "delivered")


@pytest.mark.parametrize("webhook,field", [
    ({"url": "ftp://example.com/hook"}, "webhook.url"),
    ({"url": "not a url"}, "webhook.url"),
    ({"url": "http://10.1.2.3/hook"}, "webhook.url"),
    ({"url": "http://169.254.169.254/latest"}, "webhook.url"),
    ({"url": "http://user:pw@example.com/"}, "webhook.url"),
    ({"url": "https://example.com/hook", "events": ["run.exploded"]}, "webhook.events"),
    ({"events": ["run.completed"]}, "webhook.url"),
])
def test_a_bad_webhook_is_a_422_naming_the_field(http: httpx.Client, webhook: dict[str, Any],
                                                  field: str) -> None:
    session = new_session(http, "weather")["id"]
    response = http.post(f"/v1/sessions/{session}/turns",
                         json={"input": "hi", "webhook": webhook})
    body = assert_problem(response, 422)
    named = body.get("field") or " ".join(
        ".".join(str(p) for p in e.get("loc", ())) for e in body.get("errors", []))
    assert field in named, body


def test_loopback_is_refused_unless_allowed(tmp_path: Any) -> None:
    with serving(tmp_path) as start:
        server = start()
        with httpx.Client(base_url=server.url, timeout=10) as http:
            session = new_session(http, "weather")["id"]
            for url in ("http://127.0.0.1:9/hook", "http://localhost/hook", "http://[::1]/"):
                assert_problem(http.post(f"/v1/sessions/{session}/turns", json={
                    "input": "hi", "webhook": {"url": url}}), 422, field="webhook.url")


def test_rotating_the_secret_changes_the_signature(http: httpx.Client) -> None:
    before = http.get("/v1/admin/webhooks/secret").json()["secret"]
    rotated = http.post("/v1/admin/webhooks/secret")
    assert rotated.status_code == 200
    after = rotated.json()["secret"]
    assert after != before and after.startswith("whsec_")
    assert http.get("/v1/admin/webhooks/secret").json()["secret"] == after


def test_one_tenants_hanging_receiver_does_not_hold_back_anothers(tmp_path: Any) -> None:
    """Four delivery slots, two per tenant: `slow`'s six hanging deliveries take two, and
    `fast`'s are delivered meanwhile (without the per-tenant bound they would wait for
    `slow`'s attempts to time out)."""
    with serving(tmp_path) as start, Receiver(hang_first=1000) as dead, Receiver() as alive:
        server = start(server={"tenant_header": "X-Tenant"}, webhooks={
            **FAST, "timeout_s": 20, "lease_s": 30, "concurrency": 4,
            "per_tenant_concurrency": 2})
        with httpx.Client(base_url=server.url, timeout=10) as http:
            runs: dict[str, list[str]] = {"slow": [], "fast": []}
            for tenant, receiver, n in (("slow", dead, 6), ("fast", alive, 3)):
                headers = {"X-Tenant": tenant}
                for _ in range(n):
                    session = http.post("/v1/agents/weather/sessions", json={},
                                        headers=headers).json()["id"]
                    turn = http.post(f"/v1/sessions/{session}/turns", headers=headers, json={
                        "input": "Weather in Riga?", "webhook": {"url": receiver.url}})
                    runs[tenant].append(turn.json()["run_id"])
                if tenant == "slow":
                    wait_until(lambda: dead.seen >= 2, what="slow's deliveries to hang")

            def delivered(run_id: str) -> bool:
                items = http.get(f"/v1/runs/{run_id}/deliveries",
                                 headers={"X-Tenant": "fast"}).json()["items"]
                return bool(items) and items[0]["state"] == "delivered"

            wait_until(lambda: all(delivered(r) for r in runs["fast"]),
                       what="fast's deliveries while slow's hang")
            assert dead.seen == 2  # never more than its two slots
            assert len(alive.accepted()) == 3
