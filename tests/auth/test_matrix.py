"""The role × route matrix: every route of the OpenAPI document (and /metrics), called by
every role and without credentials, gets exactly what the permission table grants."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from roost import Runtime, Settings
from roost.auth.chain import Auth
from roost.auth.keys import new_key
from roost.auth.permissions import GRANTS, PROTOCOL_ROUTES, ROUTES, RouteTable, check_routes
from roost.server.app import create_app
from roost.server.assemble import assemble
from tests.auth.conftest import ROLES, echo_agent

# Ids that exist nowhere: an allowed call gets 404 or 422, never a side effect.
PARAMS = {"name": "nope", "session_id": "ses_nope", "run_id": "run_nope",
          "artifact_id": "art_nope", "key_id": "000000000000", "model": "nope",
          "response_id": "resp_nope", "agent": "nope", "schedule_id": "sch_nope"}
# Calls that would do real work when allowed get an invalid argument instead.
QUERY = {"/v1/admin/profile": "?seconds=0"}


@pytest.fixture
async def app() -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    settings = Settings.model_validate({"store": {"url": "memory://"},
                                        "auth": {"enabled": True}})
    runtime, observability = assemble(settings, [echo_agent()])
    auth = Auth.from_settings(settings)
    await runtime.start()
    tokens = {}
    for role in ROLES:
        key, tokens[role] = new_key("acme", role, "matrix")  # type: ignore[arg-type]
        await auth.keys.add(key)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(runtime, observability, auth=auth)),
        base_url="http://roost")
    try:
        yield client, tokens
    finally:
        await client.aclose()
        await runtime.close()


async def test_every_route_times_every_role(app: tuple[httpx.AsyncClient, dict[str, str]]
                                            ) -> None:
    client, tokens = app
    spec = (await client.get("/openapi.json")).json()
    operations = [(method.upper(), path) for path, item in spec["paths"].items()
                  for method in item]
    operations.append(("GET", "/metrics"))
    operations.extend(sorted(PROTOCOL_ROUTES))  # served in front of FastAPI, not in OpenAPI
    assert set(operations) <= set(ROUTES), set(operations) - set(ROUTES)
    # Everything in the table is served (the docs pages are not operations).
    assert {r for r, p in ROUTES.items() if p != "public"} <= set(operations)
    checked = 0
    for method, template in operations:
        permission = ROUTES[(method, template)]
        path = re.sub(r"\{(\w+)\}", lambda m: PARAMS[m[1]], template) + QUERY.get(template, "")
        anonymous = await client.request(method, path, json={})
        if permission == "public":
            assert anonymous.status_code not in (401, 403), (method, template)
            continue
        assert anonymous.status_code == 401, (method, template)
        assert "www-authenticate" in anonymous.headers
        for role in ROLES:
            call = client.request(method, path, json={},
                                  headers={"Authorization": f"Bearer {tokens[role]}"})
            if (method, template) == ("GET", "/mcp") and permission in GRANTS[role]:  # type: ignore[index]
                # Allowed, it opens MCP's event stream, which stays open: past the edge.
                with contextlib.suppress(TimeoutError):
                    r = await asyncio.wait_for(call, 1.0)
                    assert r.status_code not in (401, 403), (role, method, template)
                checked += 1
                continue
            r = await call
            if permission in GRANTS[role]:  # type: ignore[index]
                assert r.status_code not in (401, 403), (role, method, template, r.text)
            else:
                assert r.status_code == 403, (role, method, template, r.status_code)
                assert r.headers["content-type"] == "application/problem+json"
            checked += 1
    assert checked >= 4 * 20


async def test_openapi_declares_the_security_schemes(
        app: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, _ = app
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    turn = spec["paths"]["/v1/sessions/{session_id}/turns"]["post"]
    assert turn["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "sessions:write" in turn["description"]
    assert spec["paths"]["/healthz"]["get"]["security"] == []


def test_an_app_with_an_undeclared_route_does_not_build() -> None:
    with pytest.raises(RuntimeError, match="GET /v1/secret"):
        check_routes([("GET", "/v1/agents"), ("GET", "/v1/secret"), ("HEAD", "/v1/x")])


def test_a_server_builds_only_with_every_route_declared() -> None:
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"}}), [echo_agent()])
    create_app(runtime)  # does not raise


def test_the_route_table_matches_templates() -> None:
    table = RouteTable()
    assert table.match("POST", "/v1/sessions/ses_1/turns") == (
        "/v1/sessions/{session_id}/turns", "sessions:write", "ses_1")
    assert table.match("GET", "/v1/sessions") == ("/v1/sessions", "sessions:read", None)
    assert table.match("HEAD", "/v1/agents/x") == ("/v1/agents/{name}", "agents:read", "x")
    assert table.match("GET", "/v1/sessions/a/b/c") is None
    assert table.match("PUT", "/v1/sessions/ses_1") is None
