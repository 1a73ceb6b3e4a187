"""The audit trail: every state-changing call and every refused credential, as one
structured record on the `roost.audit` logger and in the store (`auditlog/`).

    {"event": "audit", "logger": "roost.audit", "action": "POST /v1/sessions/{session_id}/turns",
     "outcome": "ok", "status": 200, "principal": "api_key:3f9c0a1b2c3d", "role": "operator",
     "tenant": "acme", "target": "ses_…", "request_id": "…", "client": "10.0.0.7"}

`outcome` is `ok` (2xx/3xx), `refused` (401/403/404 decided by auth), `failed` (any other
4xx/5xx). The JSON log pipeline (observability/logs.py) renders the `extra` fields.

Refusals are capped at `REFUSALS_PER_S` records a second (the rest are counted and the next
record says how many were `suppressed`): a JSON line costs ~35 µs, several times the refusal
itself (~6 µs), so a flood of bad keys must not buy a log line each.

Records for the store are queued and written in one batch per `auth.audit_flush_s` by
`run` (owned by the app's lifespan through `Auth`), which also deletes records older than
`auth.audit_retention_s` once an hour. A crash loses at most one batch from the store;
the log line was written at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from roost.auth.auditlog import AuditRecord, AuditStore
from roost.auth.principal import Principal

log = logging.getLogger("roost.audit")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSALS_PER_S = 100
PURGE_EVERY_S = 3600.0
MAX_QUEUED = 100_000  # records waiting for the store; beyond this (a long outage) dropped


class _RefusalBudget:
    """At most `rate` refusal records per one-second window; counts the rest."""

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.window = 0
        self.used = 0
        self.suppressed = 0

    def take(self) -> int | None:
        """None: do not record; else the number suppressed since the last record."""
        window = int(self.clock())
        if window != self.window:
            self.window, self.used = window, 0
        if self.used >= self.rate:
            self.suppressed += 1
            return None
        self.used += 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


_refusals = _RefusalBudget(REFUSALS_PER_S)


class AuditTrail:
    """Writes records to the log (`log_records`) and queues them for `store`."""

    def __init__(self, store: AuditStore | None, *, log_records: bool = True,
                 flush_s: float = 1.0, retention_s: float = 30 * 86400) -> None:
        self.store = store
        self.log_records = log_records
        self.flush_s = flush_s
        self.retention_s = retention_s
        self._queue: list[AuditRecord] = []
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return self.store is not None or (self.log_records and log.isEnabledFor(logging.INFO))

    def record(self, *, action: str, outcome: str, status: int, principal: Principal | None,
               tenant: str | None, target: str | None, request_id: str | None,
               client: str | None, reason: str | None = None) -> None:
        if not self.enabled:
            return
        suppressed = 0
        if outcome == "refused":
            taken = _refusals.take()
            if taken is None:
                return
            suppressed = taken
        who = None
        if principal is not None:
            who = f"{principal.subject}:{principal.key_id or principal.user_id or '-'}"
        entry = AuditRecord(at=time.time(), action=action, outcome=outcome, status=status,
                            tenant=tenant, principal=who,
                            role=principal.role if principal is not None else None,
                            target=target, request_id=request_id, client=client,
                            reason=reason, suppressed=suppressed)
        if self.log_records and log.isEnabledFor(logging.INFO):
            fields = {f: getattr(entry, f) for f in entry.__struct_fields__
                      if f not in ("at", "suppressed")}
            if suppressed:
                fields["suppressed"] = suppressed
            log.info("audit", extra=fields)
        if self.store is not None:
            if len(self._queue) >= MAX_QUEUED:
                self.dropped += 1
            else:
                self._queue.append(entry)

    async def flush(self) -> None:
        if self.store is not None and self._queue:
            batch, self._queue = self._queue, []
            try:
                await self.store.append(batch)
            except BaseException:
                self._queue[:0] = batch  # keep them for the next round
                raise

    async def run(self) -> None:
        """Flush every `flush_s` and purge old records every hour, until cancelled."""
        last_purge = float("-inf")
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
                if self.store is not None and time.monotonic() - last_purge > PURGE_EVERY_S:
                    last_purge = time.monotonic()
                    await self.store.purge(time.time() - self.retention_s)
            except Exception:  # a store outage: the records wait in the queue
                logging.getLogger("roost.auth").warning("could not write the audit trail",
                                                        exc_info=True)
