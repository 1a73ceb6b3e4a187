"""Who may do what: principals, API keys, OIDC tokens, the permission table, the ASGI edge
that applies them, and the audit log.

    principal.py    Principal, roles, the anonymous admin of the loopback default
    keys.py         API key records, tokens, the KeyStore protocol (+ keystores/)
    apikeys.py      the cached hot check and batched last-used times
    oidc.py         JWT bearer tokens against a JWKS
    chain.py        the authenticators of one server, and their lifecycle
    permissions.py  the (method, route) → permission table and role grants
    edge.py         the ASGI middleware: 401 / 403 / 404, tenant, audit
    audit.py        the `roost.audit` log
    bind.py         no unauthenticated server on a non-loopback address
"""

from __future__ import annotations

from roost.auth.config import AuthConfig
from roost.auth.principal import ANONYMOUS, ROLES, Principal, Role

__all__ = ["ANONYMOUS", "ROLES", "AuthConfig", "Principal", "Role"]
