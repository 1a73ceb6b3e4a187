"""Where audit records are kept for `GET /v1/admin/audit`: a small `AuditStore` protocol
beside each session store (memory here; SQLite in `<store>.audit.db` next to the store's
file, PostgreSQL migration 0005, Redis sorted sets).

Records arrive in batches (`AuditTrail` flushes its queue every `auth.audit_flush_s`), are
read newest first, and are deleted when older than `auth.audit_retention_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import msgspec


class AuditRecord(msgspec.Struct, kw_only=True):
    at: float
    action: str  # "POST /v1/sessions/{session_id}/turns"
    outcome: str  # ok | failed | refused
    status: int
    tenant: str | None = None
    principal: str | None = None
    role: str | None = None
    target: str | None = None
    request_id: str | None = None
    client: str | None = None
    reason: str | None = None
    suppressed: int = 0


class AuditStore(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def append(self, records: Sequence[AuditRecord]) -> None: ...
    async def query(self, tenant: str | None = None, *, since: float | None = None,
                    until: float | None = None, limit: int = 100) -> list[AuditRecord]:
        """Newest first; `tenant` None: every tenant's (and tenantless refusals)."""
        ...
    async def purge(self, before: float) -> int:
        """Delete records older than `before`; how many."""
        ...


def matches(record: AuditRecord, tenant: str | None, since: float | None,
            until: float | None) -> bool:
    return ((tenant is None or record.tenant == tenant)
            and (since is None or record.at >= since) and (until is None or record.at < until))


class MemoryAuditStore:
    def __init__(self, max_records: int = 100_000) -> None:
        self.records: list[AuditRecord] = []
        self.max_records = max_records

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, records: Sequence[AuditRecord]) -> None:
        self.records.extend(records)
        del self.records[:-self.max_records]

    async def query(self, tenant: str | None = None, *, since: float | None = None,
                    until: float | None = None, limit: int = 100) -> list[AuditRecord]:
        found = [r for r in reversed(self.records) if matches(r, tenant, since, until)]
        return found[:limit]

    async def purge(self, before: float) -> int:
        kept = [r for r in self.records if r.at >= before]
        removed = len(self.records) - len(kept)
        self.records = kept
        return removed


def open_audit_store(url: str, **options: object) -> AuditStore:
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        from roost.auth.auditlog.sqlite import SQLiteAuditStore

        # A file of its own next to the store's: SQLite has one writer per file, and the
        # audit batches must not queue the session log's appends behind them (measured:
        # p99 of the reference turn 1.9-2.6 x the floor with one file, 1.3-1.6 x apart).
        path = Path(rest[1:] if rest.startswith("/") else rest or ".roost/roost.db")
        return SQLiteAuditStore(str(path.with_name(f"{path.stem}.audit{path.suffix or '.db'}")))
    if scheme in ("postgres", "postgresql"):
        from roost.auth.auditlog.postgres import PostgresAuditStore

        schema = options.get("schema")
        return PostgresAuditStore(url, schema=schema if isinstance(schema, str) else None)
    if scheme in ("redis", "rediss"):
        from roost.auth.auditlog.redis import RedisAuditStore

        prefix = options.get("prefix")
        return RedisAuditStore(url, prefix=prefix if isinstance(prefix, str) else "roost:")
    return MemoryAuditStore()
