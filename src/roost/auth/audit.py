"""The audit trail: every state-changing call and every refused credential, as one
structured record on the `roost.audit` logger.

    {"event": "audit", "logger": "roost.audit", "action": "POST /v1/sessions/{session_id}/turns",
     "outcome": "ok", "status": 200, "principal": "api_key:3f9c0a1b2c3d", "role": "operator",
     "tenant": "acme", "target": "ses_…", "request_id": "…", "client": "10.0.0.7"}

`outcome` is `ok` (2xx/3xx), `refused` (401/403/404 decided by auth), `failed` (any other
4xx/5xx). The JSON log pipeline (observability/logs.py) renders the `extra` fields.

Refusals are capped at `REFUSALS_PER_S` records a second (the rest are counted and the next
record says how many were `suppressed`): a JSON line costs ~35 µs, several times the refusal
itself (~6 µs), so a flood of bad keys must not buy a log line each.
"""

from __future__ import annotations

import logging
import time

from roost.auth.principal import Principal

log = logging.getLogger("roost.audit")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSALS_PER_S = 100


class _RefusalBudget:
    """At most `rate` refusal records per one-second window; counts the rest."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.window = 0
        self.used = 0
        self.suppressed = 0

    def take(self) -> int | None:
        """None: do not log; else the number suppressed since the last record."""
        window = int(time.monotonic())
        if window != self.window:
            self.window, self.used = window, 0
        if self.used >= self.rate:
            self.suppressed += 1
            return None
        self.used += 1
        suppressed, self.suppressed = self.suppressed, 0
        return suppressed


_refusals = _RefusalBudget(REFUSALS_PER_S)


def record(*, action: str, outcome: str, status: int, principal: Principal | None,
           tenant: str | None, target: str | None, request_id: str | None,
           client: str | None, reason: str | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
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
    log.info("audit", extra={
        "action": action, "outcome": outcome, "status": status, "principal": who,
        "role": principal.role if principal is not None else None, "tenant": tenant,
        "target": target, "request_id": request_id, "client": client, "reason": reason,
        **({"suppressed": suppressed} if suppressed else {}),
    })
