"""Runs listings and schedules are tenant-scoped (another tenant's schedule is a 404), and a
user-scoped user lists only the runs of their own sessions."""

from __future__ import annotations

from tests.auth.conftest import secured_app
from tests.auth.test_edge import _session


async def test_runs_and_schedules_are_tenant_scoped() -> None:
    async with secured_app({"url": "memory://"}) as app:
        acme, other = app.as_("operator", "acme"), app.as_("operator", "globex")
        session = await _session(app, "operator", "acme")
        turn = await app.client.post(f"/v1/sessions/{session}/turns", json={"input": "hi"},
                                     headers=acme)
        assert turn.status_code == 200, turn.text
        runs = (await app.client.get("/v1/runs", headers=acme)).json()["items"]
        assert [r["id"] for r in runs] == [turn.json()["run_id"]]
        assert (await app.client.get("/v1/runs", headers=other)).json()["items"] == []
        created = await app.client.post("/v1/agents/echo/schedules", headers=acme,
                                        json={"cron": "0 9 * * *", "input": "x"})
        assert created.status_code == 201, created.text
        item = f"/v1/agents/echo/schedules/{created.json()['id']}"
        for method, body in (("GET", None), ("PATCH", {"enabled": False}), ("DELETE", None)):
            r = await app.client.request(method, item, headers=other, json=body)
            assert r.status_code == 404, (method, r.text)
        assert (await app.client.get("/v1/agents/echo/schedules", headers=other)
                ).json()["items"] == []
        # A fixed session of another tenant does not exist for this one.
        r = await app.client.post("/v1/agents/echo/schedules", headers=other, json={
            "cron": "0 9 * * *", "input": "x", "session_policy": "fixed", "session_id": session})
        assert r.status_code == 404
        assert (await app.client.get(item, headers=acme)).status_code == 200
        viewer = await app.client.post("/v1/agents/echo/schedules", headers=app.as_("viewer"),
                                       json={"cron": "0 9 * * *", "input": "x"})
        assert viewer.status_code == 403


async def test_a_user_scoped_user_lists_runs_of_their_own_sessions() -> None:
    async with secured_app({"url": "memory://"}, user_scoped=True) as app:
        ada = {"X-API-Key": await app.add_key("acme", "user", user_id="ada")}
        mine = await _session(app, "operator", user_id="ada")
        theirs = await _session(app, "operator", user_id="bob")
        assert (await app.client.post(f"/v1/sessions/{mine}/turns", json={"input": "hi"},
                                      headers=ada)).status_code == 200
        listed = await app.client.get("/v1/runs", params={"session_id": mine}, headers=ada)
        assert listed.status_code == 200 and len(listed.json()["items"]) == 1
        hidden = await app.client.get("/v1/runs", params={"session_id": theirs}, headers=ada)
        assert hidden.status_code == 404
        unbounded = await app.client.get("/v1/runs", headers=ada)
        assert unbounded.status_code == 422 and "session_id" in unbounded.text
        # An operator lists the whole tenant.
        everything = await app.client.get("/v1/runs", headers=app.as_("operator"))
        assert len(everything.json()["items"]) == 1
