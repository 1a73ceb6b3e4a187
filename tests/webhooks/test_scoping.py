"""The deliveries route and the signing secrets are tenant-scoped: another tenant's run
answers 404, and each tenant has its own secret, readable and rotated by admins only."""

from __future__ import annotations

from tests.auth.conftest import secured_app
from tests.auth.test_edge import _session


async def test_deliveries_and_secrets_are_tenant_scoped() -> None:
    async with secured_app({"url": "memory://"}) as app:
        acme, other = app.as_("operator", "acme"), app.as_("operator", "globex")
        session = await _session(app, "operator", "acme")
        turn = await app.client.post(f"/v1/sessions/{session}/turns", headers=acme, json={
            "input": "hi", "webhook": {"url": "https://example.com/hook"}})
        assert turn.status_code == 200, turn.text
        path = f"/v1/runs/{turn.json()['run_id']}/deliveries"
        mine = await app.client.get(path, headers=acme)
        assert mine.status_code == 200 and len(mine.json()["items"]) == 1
        assert (await app.client.get(path, headers=app.as_("viewer", "acme"))).status_code == 200
        theirs = await app.client.get(path, headers=other)
        assert theirs.status_code == 404, theirs.text
        assert (await app.client.get("/v1/runs/run_nope/deliveries", headers=acme)
                ).status_code == 404
        secrets = {}
        for tenant in ("acme", "globex"):
            r = await app.client.get("/v1/admin/webhooks/secret",
                                     headers=app.as_("admin", tenant))
            assert r.status_code == 200 and r.json()["tenant"] == tenant
            secrets[tenant] = r.json()["secret"]
        assert secrets["acme"] != secrets["globex"]
        rotated = await app.client.post("/v1/admin/webhooks/secret",
                                        headers=app.as_("admin", "globex"))
        assert rotated.json()["secret"] != secrets["globex"]
        again = await app.client.get("/v1/admin/webhooks/secret", headers=app.as_("admin", "acme"))
        assert again.json()["secret"] == secrets["acme"]  # untouched by globex's rotation
        for role in ("operator", "user", "viewer"):
            r = await app.client.post("/v1/admin/webhooks/secret", headers=app.as_(role, "acme"))
            assert r.status_code == 403, role
