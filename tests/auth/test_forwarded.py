"""X-Forwarded-For / Forwarded from trusted proxies only, over a real uvicorn on loopback
(the test client's peer address is 127.0.0.1: "trusted" or not by configuration)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from roost import Agent, Runtime, Settings
from roost.auth.chain import Auth
from roost.auth.keys import new_key
from roost.errors import ConfigError
from roost.server.app import create_app
from roost.server.forwarded import ForwardedClient
from roost.testing.live import LiveServer
from roost.testing.scripted import ScriptedModel
from tests.server.conftest import WAIT_S, assert_problem


def forwarded(trusted: list[str]) -> ForwardedClient:
    return ForwardedClient(lambda *a: None, trusted)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize("hops,client", [
    (["203.0.113.7"], "203.0.113.7"),
    (["203.0.113.7", "10.0.0.2"], "203.0.113.7"),          # through a second trusted proxy
    (["198.51.100.1", "203.0.113.7", "10.0.0.2"], "203.0.113.7"),  # spoofed left part ignored
    (["203.0.113.7:4711"], "203.0.113.7"),
    (['"[2001:db8::1]:80"'], "2001:db8::1"),
    (["unknown", "203.0.113.7"], "203.0.113.7"),
    (["203.0.113.7", "garbage"], None),                     # unparseable nearest hop: none
    (["10.0.0.3", "10.0.0.2"], "10.0.0.3"),                 # all proxies: the leftmost
])
def test_client_of(hops: list[str], client: str | None) -> None:
    assert forwarded(["10.0.0.0/8"])._client_of(hops) == client


def test_bad_proxy_list_is_a_config_error() -> None:
    with pytest.raises((ConfigError, ValueError), match="not an IP address"):
        Settings.model_validate({"transport": {"trusted_proxies": ["10.0.0.0/33"]}})


@pytest.fixture
def audited() -> Iterator[Any]:
    """A live server with auth and the audit trail on; `start(trusted_proxies=…)`."""
    servers: list[tuple[LiveServer, httpx.Client]] = []

    def start(transport: dict[str, Any], agent: Agent | None = None
              ) -> tuple[httpx.Client, str]:
        settings = Settings.model_validate({
            "store": {"url": "memory://"}, "server": {"shutdown_grace_s": 0},
            "auth": {"enabled": True, "audit_flush_s": 0.05}, "transport": transport})
        runtime = Runtime(settings, [agent or Agent(name="echo", model=ScriptedModel(
            ["hi"], repeat_last=True))])
        gate = Auth.from_settings(settings)
        key, token = new_key("acme", "admin", "t")
        asyncio.run(gate.keys.add(key))  # a dict insert: no loop of its own to mind
        server = LiveServer(runtime, app=create_app(runtime, auth=gate)).__enter__()
        client = httpx.Client(base_url=server.url, timeout=WAIT_S,
                              headers={"Authorization": f"Bearer {token}"})
        servers.append((server, client))
        return client, token

    yield start
    for server, client in servers:
        client.close()
        server.__exit__(None, None, None)


def audit_clients(http: httpx.Client, count: int) -> list[str]:
    deadline = time.monotonic() + WAIT_S
    while True:
        items = http.get("/v1/admin/audit").json()["items"]
        mine = [r["client"] for r in items if r["action"] == "POST /v1/agents/{name}/sessions"]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.02)


def test_trusted_proxy_names_the_client_in_audit(audited: Any) -> None:
    http, _ = audited({"trusted_proxies": ["127.0.0.1/32"]})
    http.post("/v1/agents/echo/sessions", json={},
              headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.7"})
    http.post("/v1/agents/echo/sessions", json={},
              headers={"Forwarded": 'for=192.0.2.60;proto=https, for="[2001:db8::5]"'})
    assert sorted(audit_clients(http, 2)) == ["2001:db8::5", "203.0.113.7"]


def test_untrusted_peer_headers_are_ignored(audited: Any) -> None:
    http, _ = audited({"trusted_proxies": ["10.0.0.0/8"]})
    http.post("/v1/agents/echo/sessions", json={}, headers={"X-Forwarded-For": "203.0.113.7"})
    http.post("/v1/agents/echo/sessions", json={}, headers={"Forwarded": "for=203.0.113.8"})
    assert audit_clients(http, 2) == ["127.0.0.1", "127.0.0.1"]


def test_without_trusted_proxies_loopback_cannot_spoof(audited: Any) -> None:
    # uvicorn alone would trust X-Forwarded-For from 127.0.0.1: Roost turns that off.
    http, _ = audited({})
    http.post("/v1/agents/echo/sessions", json={}, headers={"X-Forwarded-For": "203.0.113.7"})
    assert audit_clients(http, 1) == ["127.0.0.1"]


def test_forwarded_clients_are_capped_per_client_not_per_proxy(audited: Any) -> None:
    gate = threading.Event()

    model = ScriptedModel(["late"], repeat_last=True, delay_s=0.5)
    http, _ = audited({"trusted_proxies": ["127.0.0.1"], "max_connections_per_client": 1},
                      Agent(name="slow", model=model))
    sid = http.post("/v1/agents/slow/sessions", json={}).json()["id"]
    other = http.post("/v1/agents/slow/sessions", json={}).json()["id"]
    results: list[httpx.Response] = []

    def first() -> None:
        gate.set()
        results.append(http.post(f"/v1/sessions/{sid}/turns", json={"input": "a"},
                                 headers={"X-Forwarded-For": "203.0.113.7"}))

    thread = threading.Thread(target=first)
    thread.start()
    assert gate.wait(WAIT_S)
    deadline = time.monotonic() + WAIT_S
    while model.calls == 0 and time.monotonic() < deadline:  # the first is in flight
        time.sleep(0.005)
    refused = http.post(f"/v1/sessions/{other}/turns", json={"input": "b"},
                        headers={"X-Forwarded-For": "203.0.113.7"})
    assert_problem(refused, 429, "too_many_requests")
    # Another client through the same proxy (and the same connection pool) is served.
    served = http.post(f"/v1/sessions/{other}/turns", json={"input": "c"},
                       headers={"X-Forwarded-For": "203.0.113.99"})
    assert served.status_code == 200, served.text
    thread.join(WAIT_S)
    assert results and results[0].status_code == 200
