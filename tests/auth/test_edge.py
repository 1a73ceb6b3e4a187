"""The ASGI edge: 401 without or with bad credentials, 403 when the role forbids, the tenant
header only from admins, user scoping, revocation, last-used times and the audit log."""

from __future__ import annotations

import logging
import time

import pytest

from tests.auth.conftest import Secured

JSON = {"Content-Type": "application/json"}


async def _session(app: Secured, role: str = "user", tenant: str = "acme",
                   user_id: str | None = None) -> str:
    r = await app.client.post("/v1/agents/echo/sessions", json={"user_id": user_id},
                              headers=app.as_(role, tenant))
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.parametrize("path,method", [("/v1/sessions", "GET"),
                                         ("/v1/sessions/ses_x/turns", "POST"),
                                         ("/v1/agents/echo/sessions", "POST"),
                                         ("/metrics", "GET"), ("/nowhere", "GET")])
async def test_no_credentials_is_401_with_a_challenge(secured: Secured, path: str,
                                                      method: str) -> None:
    r = await secured.client.request(method, path, json={"input": "hi"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"].endswith("unauthenticated")


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer rk_0123456789ab_" + "A" * 43},
    {"Authorization": "Bearer nonsense"},
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"X-API-Key": "rk_0123456789ab_" + "A" * 43},
])
async def test_bad_credentials_are_401(secured: Secured, headers: dict[str, str]) -> None:
    r = await secured.client.get("/v1/sessions", headers=headers)
    assert r.status_code == 401


async def test_a_tampered_key_is_401(secured: Secured) -> None:
    token = secured.tokens[("admin", "acme")]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    r = await secured.client.get("/v1/sessions", headers={"X-API-Key": tampered})
    assert r.status_code == 401
    assert (await secured.client.get("/v1/sessions", headers={"X-API-Key": token})
            ).status_code == 200


async def test_health_and_docs_need_no_key(secured: Secured) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert (await secured.client.get(path)).status_code == 200, path


async def test_a_viewer_reads_but_may_not_write(secured: Secured) -> None:
    session_id = await _session(secured)
    viewer = secured.as_("viewer")
    assert (await secured.client.get(f"/v1/sessions/{session_id}", headers=viewer)
            ).status_code == 200
    r = await secured.client.post(f"/v1/sessions/{session_id}/turns", json={"input": "hi"},
                                  headers=viewer)
    assert r.status_code == 403 and r.json()["type"].endswith("forbidden")
    assert (await secured.client.post("/v1/agents/echo/sessions", json={}, headers=viewer)
            ).status_code == 403
    assert (await secured.runtime.read_events("acme", session_id, after=0, limit=10)) == []


async def test_only_admins_may_pause_an_agent_for_everyone(secured: Secured) -> None:
    for role in ("operator", "user", "viewer"):
        r = await secured.client.post("/v1/agents/echo/pause", headers=secured.as_(role))
        assert r.status_code == 403, role
    assert secured.runtime.agents.hosted("echo").state != "paused"
    r = await secured.client.post("/v1/agents/echo/pause", headers=secured.as_("admin"))
    assert r.status_code == 200 and r.json()["state"] == "paused"


async def test_the_tenant_header_is_honoured_only_from_admins(secured: Secured) -> None:
    theirs = await _session(secured, tenant="globex")
    r = await secured.client.get(f"/v1/sessions/{theirs}",
                                 headers=secured.as_("operator", "acme", **{"X-Tenant": "globex"}))
    assert r.status_code == 403
    r = await secured.client.get(f"/v1/sessions/{theirs}",
                                 headers=secured.as_("admin", "acme", **{"X-Tenant": "globex"}))
    assert r.status_code == 200 and r.json()["tenant"] == "globex"
    # Naming one's own tenant is harmless.
    mine = await _session(secured)
    r = await secured.client.get(f"/v1/sessions/{mine}",
                                 headers=secured.as_("viewer", "acme", **{"X-Tenant": "acme"}))
    assert r.status_code == 200


async def test_the_tenant_header_from_a_trusted_proxy(secured: Secured) -> None:
    from roost.auth.chain import Auth

    proxy = Auth(secured.auth.config.model_copy(update={"trusted_proxies": ["127.0.0.0/8"]}),
                 secured.auth.keys, "X-Tenant")
    assert proxy.trusted_proxy(("127.0.0.1", 5000))
    assert not proxy.trusted_proxy(("10.0.0.1", 5000)) and not proxy.trusted_proxy(None)
    assert not secured.auth.trusted_proxy(("127.0.0.1", 5000))


async def test_stats_show_an_operator_only_their_tenant(secured: Secured) -> None:
    secured.runtime.settings.admission.tenants  # noqa: B018 - exists
    r = await secured.client.get("/v1/admin/stats", headers=secured.as_("operator"))
    assert r.status_code == 200
    body = r.json()
    assert body["tenant"] == "acme" and "rejected" not in body and "cache" not in body
    assert set(body["running_by_tenant"]) <= {"acme"}
    assert (await secured.client.get("/v1/admin/stats", headers=secured.as_("user"))
            ).status_code == 403
    full = (await secured.client.get("/v1/admin/stats", headers=secured.as_("admin"))).json()
    assert "cache" in full and "tenant" not in full


async def test_keys_over_http_and_revocation_here_is_immediate(secured: Secured) -> None:
    admin = secured.as_("admin")
    r = await secured.client.post("/v1/admin/keys", headers=admin,
                                  json={"tenant": "acme", "role": "viewer", "name": "dash"})
    assert r.status_code == 201
    created = r.json()
    token, key_id = created["token"], created["id"]
    assert "hash" not in created
    listed = (await secured.client.get("/v1/admin/keys?tenant=acme", headers=admin)).json()
    assert key_id in [k["id"] for k in listed["items"]]
    assert all("token" not in k and "hash" not in k for k in listed["items"])
    assert (await secured.client.get("/v1/sessions", headers={"X-API-Key": token})
            ).status_code == 200
    assert (await secured.client.delete(f"/v1/admin/keys/{key_id}", headers=admin)
            ).status_code == 204
    assert (await secured.client.get("/v1/sessions", headers={"X-API-Key": token})
            ).status_code == 401
    assert (await secured.client.delete(f"/v1/admin/keys/{key_id}", headers=admin)
            ).status_code == 404
    assert (await secured.client.get("/v1/admin/keys", headers=secured.as_("operator"))
            ).status_code == 403


async def test_an_expired_key_is_refused(secured: Secured) -> None:
    from roost.auth.keys import new_key

    key, token = new_key("acme", "admin", "old", ttl_s=1, at=time.time() - 10)
    await secured.auth.keys.add(key)
    assert (await secured.client.get("/v1/sessions", headers={"X-API-Key": token})
            ).status_code == 401


async def test_revocation_elsewhere_takes_effect_within_the_cache_ttl(
        secured: Secured) -> None:
    token = secured.tokens[("operator", "acme")]
    headers = {"X-API-Key": token}
    assert (await secured.client.get("/v1/sessions", headers=headers)).status_code == 200
    key_id = token.split("_")[1]
    # Another instance revokes it in the shared store: this one's cache still trusts it...
    assert await secured.auth.keys.revoke(key_id, time.time())
    assert (await secured.client.get("/v1/sessions", headers=headers)).status_code == 200
    # ... until its entry is older than cache_ttl_s.
    ttl = secured.auth.config.api_keys.cache_ttl_s
    later = time.monotonic() + ttl + 0.001
    secured.auth.api_keys.clock = lambda: later
    assert (await secured.client.get("/v1/sessions", headers=headers)).status_code == 401


async def test_last_used_is_written_in_batches(secured: Secured) -> None:
    token = secured.tokens[("viewer", "acme")]
    key_id = token.split("_")[1]
    for _ in range(3):
        await secured.client.get("/v1/sessions", headers={"X-API-Key": token})
    key = await secured.auth.keys.get(key_id)
    assert key is not None and key.last_used_at is None  # nothing written per request
    assert secured.auth.api_keys.statistics().pending_last_used >= 1
    await secured.auth.api_keys.flush_last_used()
    key = await secured.auth.keys.get(key_id)
    assert key is not None and key.last_used_at is not None
    assert key.last_used_at <= time.time()


async def test_user_scoped_users_see_only_their_sessions() -> None:
    from tests.auth.conftest import secured_app

    async with secured_app({"url": "memory://"}, user_scoped=True) as app:
        ada = await app.add_key("acme", "user", user_id="ada")
        bob = await app.add_key("acme", "user", user_id="bob")
        theirs = await _session(app, "operator", user_id="bob")
        mine = await _session(app, "operator", user_id="ada")
        as_ada = {"X-API-Key": ada}
        for method, path in (("GET", f"/v1/sessions/{theirs}"),
                             ("GET", f"/v1/sessions/{theirs}/events"),
                             ("DELETE", f"/v1/sessions/{theirs}"),
                             ("POST", f"/v1/sessions/{theirs}/turns")):
            r = await app.client.request(method, path, headers=as_ada, json={"input": "x"})
            assert r.status_code == 404, (method, path)
            assert r.json()["type"].endswith("session_not_found")
        assert (await app.client.get(f"/v1/sessions/{mine}", headers=as_ada)).status_code == 200
        listed = (await app.client.get("/v1/sessions?user_id=bob", headers=as_ada)).json()
        assert [s["id"] for s in listed["items"]] == [mine]
        turn = await app.client.post(f"/v1/sessions/{theirs}/turns", json={"input": "hi"},
                                     headers={"X-API-Key": bob})
        assert turn.status_code == 200
        run_id = turn.json()["run_id"]
        assert (await app.client.get(f"/v1/runs/{run_id}", headers=as_ada)).status_code == 404
        assert (await app.client.get(f"/v1/runs/{run_id}", headers={"X-API-Key": bob})
                ).status_code == 200
        # A user creates sessions for themselves only.
        r = await app.client.post("/v1/agents/echo/sessions", headers=as_ada)
        assert r.status_code == 201 and r.json()["user_id"] == "ada"
        r = await app.client.post("/v1/agents/echo/sessions", json={"state": {"a": 1}},
                                  headers=as_ada)
        assert r.status_code == 201 and r.json()["user_id"] == "ada"
        r = await app.client.post("/v1/agents/echo/sessions", json={"user_id": "bob"},
                                  headers=as_ada)
        assert r.status_code == 403
        r = await app.client.post("/v1/agents/echo/sessions", content=b"{nope",
                                  headers={**as_ada, **JSON})
        assert r.status_code == 400
        # An operator sees every session of the tenant.
        assert (await app.client.get(f"/v1/sessions/{theirs}", headers=app.as_("operator"))
                ).status_code == 200


async def test_state_changes_and_refusals_are_audited(
        secured: Secured, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="roost.audit")
    session_id = await _session(secured, "operator")
    await secured.client.get("/v1/sessions", headers={"X-API-Key": "rk_bad"})
    await secured.client.post("/v1/agents/echo/stop", headers=secured.as_("viewer"))
    await secured.client.get(f"/v1/sessions/{session_id}", headers=secured.as_("viewer"))
    records = [r for r in caplog.records if r.name == "roost.audit"]
    fields = [(r.action, r.outcome, r.status, r.tenant, r.target)  # type: ignore[attr-defined]
              for r in records]
    assert fields == [
        ("POST /v1/agents/{name}/sessions", "ok", 201, "acme", "echo"),
        ("GET /v1/sessions", "refused", 401, None, None),
        ("POST /v1/agents/{name}/stop", "refused", 403, "acme", "echo"),
    ]
    assert records[0].principal.startswith("api_key:")  # type: ignore[attr-defined]
    assert records[0].role == "operator"  # type: ignore[attr-defined]


async def test_a_flood_of_refusals_is_audited_at_a_capped_rate(
        secured: Secured, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.auth import audit

    caplog.set_level(logging.INFO, logger="roost.audit")
    window = [100.0]
    monkeypatch.setattr(audit, "_refusals", audit._RefusalBudget(3, clock=lambda: window[0]))
    secured.auth.audit.store = None  # the log only
    for _ in range(10):
        assert (await secured.client.get("/v1/sessions")).status_code == 401
    assert len([r for r in caplog.records if r.name == "roost.audit"]) == 3
    window[0] = 101.0
    await secured.client.get("/v1/sessions")
    records = [r for r in caplog.records if r.name == "roost.audit"]
    assert len(records) == 4 and records[-1].suppressed == 7  # type: ignore[attr-defined]


async def test_the_audit_trail_is_kept_and_scoped(secured: Secured) -> None:
    await _session(secured, "operator", "acme")
    await _session(secured, "user", "globex")
    await secured.client.get("/v1/sessions", headers={"X-API-Key": "rk_bad"})
    await secured.client.post("/v1/agents/echo/pause", headers=secured.as_("operator"))
    await secured.auth.audit.flush()  # what the background flush does every audit_flush_s
    mine = (await secured.client.get("/v1/admin/audit",
                                     headers=secured.as_("operator"))).json()["items"]
    assert [(r["action"], r["outcome"], r["tenant"]) for r in mine] == [
        ("POST /v1/agents/{name}/pause", "refused", "acme"),
        ("POST /v1/agents/{name}/sessions", "ok", "acme")]
    everything = (await secured.client.get("/v1/admin/audit?limit=10",
                                           headers=secured.as_("admin"))).json()["items"]
    assert [r["tenant"] for r in everything] == ["acme", None, "globex", "acme"]
    theirs = (await secured.client.get("/v1/admin/audit?tenant=globex",
                                       headers=secured.as_("operator"))).json()["items"]
    assert {r["tenant"] for r in theirs} == {"acme"}  # an operator's filter is their tenant
    assert (await secured.client.get("/v1/admin/audit", headers=secured.as_("user"))
            ).status_code == 403


async def test_websockets_are_refused_when_auth_is_on(secured: Secured) -> None:
    from roost.auth.edge import AuthEdge

    reached = []

    async def app(scope: object, receive: object, send: object) -> None:
        reached.append(scope)

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    await AuthEdge(app, secured.auth)({"type": "websocket", "path": "/ws", "headers": []},
                                      receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}] and reached == []
