"""Another tenant's objects do not exist: every probe by id answers 404 (never 403 or 409)
and changes nothing, on every store backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.auth.conftest import BACKENDS, drop, secured_app, store_settings


@pytest.mark.parametrize("kind", BACKENDS)
async def test_cross_tenant_probes_answer_404_and_change_nothing(kind: str,
                                                                 tmp_path: Path) -> None:
    settings = store_settings(kind, tmp_path)
    try:
        async with secured_app(settings) as app:
            acme = app.as_("operator", "acme")
            r = await app.client.post("/v1/agents/echo/sessions", json={"state": {"n": 1}},
                                      headers=acme)
            session_id = r.json()["id"]
            turn = await app.client.post(f"/v1/sessions/{session_id}/turns",
                                         json={"input": "hi"}, headers=acme)
            assert turn.status_code == 200 and turn.json()["status"] == "completed"
            run_id = turn.json()["run_id"]
            before = (await app.client.get(f"/v1/sessions/{session_id}", headers=acme)).json()
            events_before = (await app.client.get(f"/v1/sessions/{session_id}/events",
                                                  headers=acme)).json()["items"]
            # A finished run's own tenant is told why it cannot be resumed ...
            assert (await app.client.post(f"/v1/runs/{run_id}/resume", headers=acme)
                    ).status_code == 409

            for role in ("operator", "user", "viewer"):
                globex = app.as_(role, "globex")
                probes = [("GET", f"/v1/sessions/{session_id}", None),
                          ("GET", f"/v1/sessions/{session_id}/events", None),
                          ("GET", f"/v1/runs/{run_id}", None),
                          ("GET", f"/v1/runs/{run_id}/events", None),
                          ("GET", "/v1/artifacts/art_0123456789", None)]
                if role != "viewer":
                    probes += [("PATCH", f"/v1/sessions/{session_id}", {"state": {"n": 2}}),
                               ("POST", f"/v1/sessions/{session_id}/turns", {"input": "x"}),
                               ("POST", f"/v1/runs/{run_id}/cancel", None),
                               # ... another tenant is not even told it exists.
                               ("POST", f"/v1/runs/{run_id}/resume", None),
                               ("DELETE", f"/v1/sessions/{session_id}", None)]
                for method, path, body in probes:
                    r = await app.client.request(method, path, json=body, headers=globex)
                    assert r.status_code == 404, (kind, role, method, path, r.text)
                listed = await app.client.get("/v1/sessions", headers=globex)
                assert listed.json()["items"] == []
                if role == "operator":
                    usage = await app.client.get("/v1/usage?group_by=", headers=globex)
                    assert all(i["runs"] == 0 for i in usage.json()["items"])

            after = (await app.client.get(f"/v1/sessions/{session_id}", headers=acme)).json()
            assert after == before
            events_after = (await app.client.get(f"/v1/sessions/{session_id}/events",
                                                 headers=acme)).json()["items"]
            assert events_after == events_before
            run = (await app.client.get(f"/v1/runs/{run_id}", headers=acme)).json()
            assert run["status"] == "completed"
            usage = (await app.client.get("/v1/usage?group_by=", headers=acme)).json()
            assert usage["items"][0]["runs"] == 1
    finally:
        await drop(kind, settings)
