"""The audit trail: every state-changing call and every refused credential, as one
structured record on the `roost.audit` logger.

    {"event": "audit", "logger": "roost.audit", "action": "POST /v1/sessions/{session_id}/turns",
     "outcome": "ok", "status": 200, "principal": "api_key:3f9c0a1b2c3d", "role": "operator",
     "tenant": "acme", "target": "ses_…", "request_id": "…", "client": "10.0.0.7"}

`outcome` is `ok` (2xx/3xx), `refused` (401/403/404 decided by auth), `failed` (any other
4xx/5xx). The JSON log pipeline (observability/logs.py) renders the `extra` fields.
"""

from __future__ import annotations

import logging

from roost.auth.principal import Principal

log = logging.getLogger("roost.audit")

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def record(*, action: str, outcome: str, status: int, principal: Principal | None,
           tenant: str | None, target: str | None, request_id: str | None,
           client: str | None, reason: str | None = None) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    who = None
    if principal is not None:
        who = f"{principal.subject}:{principal.key_id or principal.user_id or '-'}"
    log.info("audit", extra={
        "action": action, "outcome": outcome, "status": status, "principal": who,
        "role": principal.role if principal is not None else None, "tenant": tenant,
        "target": target, "request_id": request_id, "client": client, "reason": reason,
    })
