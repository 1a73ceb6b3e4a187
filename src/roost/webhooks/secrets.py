"""The tenants' signing secrets: created on first use, rotated by an admin (HTTP or CLI).

HMAC needs the secret itself, so it is stored as it is (not hashed), in the store's own
table, readable only through admin routes (`keys:admin`) and the CLI; protect the store as
you protect your sessions (docs/webhooks.md)."""

from __future__ import annotations

from roost.webhooks.signing import new_secret
from roost.webhooks.store import WebhookStore


async def secret_of(store: WebhookStore, tenant: str) -> str:
    """The tenant's secret; a first one when it has none (two instances agree on one)."""
    stored = await store.get_secret(tenant)
    if stored is None:
        stored = await store.put_secret(tenant, new_secret(), replace=False)
    return stored


async def rotate(store: WebhookStore, tenant: str) -> str:
    """A new secret; every instance signs with it from its next attempt on."""
    return await store.put_secret(tenant, new_secret())
