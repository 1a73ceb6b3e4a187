"""API key records and the KeyStore contract, on every backend."""

from __future__ import annotations

import time

from roost.auth.auditlog import AuditRecord, AuditStore
from roost.auth.keys import (
    ApiKey,
    KeyStore,
    MemoryKeyStore,
    digest,
    key_id_of,
    matches,
    new_key,
)


def test_a_token_names_its_key_and_only_its_hash_is_kept() -> None:
    key, token = new_key("acme", "operator", "ci", ttl_s=90 * 86400, at=1000.0)
    assert key_id_of(token) == key.id
    assert token not in repr(key) and "hash" not in key.public()
    assert key.hash == digest(token) and matches(key, digest(token))
    assert not matches(key, digest(token[:-1] + ("A" if token[-1] != "A" else "B")))
    assert key.expires_at == 1000.0 + 90 * 86400
    assert key.usable(2000.0) and not key.usable(key.expires_at)
    assert key.principal().tenant == "acme" and key.principal().role == "operator"
    # 32 random bytes: two keys never share a secret.
    assert new_key("acme", "user", "x")[1] != new_key("acme", "user", "x")[1]


def test_malformed_tokens_name_no_key() -> None:
    for token in ("", "rk_", "rk_zzzzzzzzzzzz_" + "a" * 43, "Bearer rk_x", "rk_0123456789ab_short"):
        assert key_id_of(token) is None


async def test_contract(key_store: KeyStore) -> None:
    a, _ = new_key("acme", "operator", "ci", at=time.time())
    b, _ = new_key("globex", "viewer", "dash", user_id="u1", ttl_s=60, at=a.created_at + 1)
    await key_store.add(a)
    await key_store.add(b)
    assert await key_store.get(a.id) == a
    assert await key_store.get("000000000000") is None
    assert [k.id for k in await key_store.list()] == [a.id, b.id]
    assert [k.id for k in await key_store.list("globex")] == [b.id]
    assert await key_store.list("nobody") == []

    await key_store.touch({a.id: 50.0, "000000000000": 1.0})
    await key_store.touch({a.id: 40.0})  # never backwards
    got = await key_store.get(a.id)
    assert got is not None and got.last_used_at == 50.0

    assert await key_store.revoke(b.id, 123.0)
    assert not await key_store.revoke(b.id, 456.0)  # once
    assert not await key_store.revoke("000000000000", 1.0)
    revoked = await key_store.get(b.id)
    assert revoked is not None and revoked.revoked_at == 123.0 and not revoked.usable(124.0)
    assert isinstance(revoked, ApiKey) and revoked.user_id == "u1" and revoked.expires_at


async def test_memory_store_is_a_key_store() -> None:
    store: KeyStore = MemoryKeyStore()
    await store.open()
    await store.close()


# -- the audit store contract -------------------------------------------------------------
async def test_audit_store_contract(audit_store: AuditStore) -> None:
    records = [AuditRecord(at=100.0 + i, action="POST /v1/x", outcome="ok", status=200,
                           tenant=("acme", "globex", None)[i % 3], principal="api_key:k",
                           role="admin", target=f"t{i}", request_id=f"r{i}")
               for i in range(9)]
    await audit_store.append(records[:5])
    await audit_store.append(records[5:])
    await audit_store.append([])
    newest = await audit_store.query(limit=3)
    assert [r.target for r in newest] == ["t8", "t7", "t6"]
    acme = await audit_store.query("acme")
    assert [r.target for r in acme] == ["t6", "t3", "t0"] and acme[0] == records[6]
    assert [r.target for r in await audit_store.query(since=103.0, until=105.0)] == ["t4", "t3"]
    assert await audit_store.purge(104.0) == 4
    assert [r.target for r in await audit_store.query("globex")] == ["t7", "t4"]
