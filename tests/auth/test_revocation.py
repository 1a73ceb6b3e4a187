"""A key revoked through one instance is refused by another sharing the store within
`auth.api_keys.cache_ttl_s` (no message between instances: the cache entry expires)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.auth.conftest import drop, secured_app, store_settings


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "redis"])
async def test_revoked_through_one_instance_refused_by_another(
        kind: str, tmp_path: Path) -> None:
    settings = store_settings(kind, tmp_path)
    shared = {"url": settings["url"], "options": {k: v for k, v in settings.get("options", {}).items()
                                                  if k in ("schema", "prefix")}}
    try:
        async with secured_app(settings) as one, secured_app(shared) as two:
            token = await one.add_key("acme", "viewer", name="shared")
            key_id = token.split("_")[1]
            headers = {"X-API-Key": token}
            assert (await two.client.get("/v1/sessions", headers=headers)).status_code == 200
            r = await one.client.delete(f"/v1/admin/keys/{key_id}", headers=one.as_("admin"))
            assert r.status_code == 204
            assert (await one.client.get("/v1/sessions", headers=headers)).status_code == 401
            # The other instance trusts its cached check until the TTL has passed ...
            assert (await two.client.get("/v1/sessions", headers=headers)).status_code == 200
            ttl = two.auth.config.api_keys.cache_ttl_s
            later = time.monotonic() + ttl + 0.001
            two.auth.api_keys.clock = lambda: later
            # ... and not a moment longer.
            assert (await two.client.get("/v1/sessions", headers=headers)).status_code == 401
            listed = (await two.client.get("/v1/admin/keys", headers=two.as_("admin"))).json()
            assert [k["revoked_at"] is not None for k in listed["items"]
                    if k["id"] == key_id] == [True]
    finally:
        await drop(kind, settings)
