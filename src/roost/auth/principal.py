"""Who is asking: the principal every request carries.

    Principal(tenant="acme", role="operator", user_id=None, key_id="k_3f9c…")

Roles, from most to least trusted (what each may do is in `permissions.py`):

    admin     every tenant, API keys, admin routes, metrics, profiling
    operator  their tenant: all its sessions and runs, usage, its share of admin stats
    user      their tenant's sessions (with `auth.user_scoped`, only those with their user_id)
    viewer    read only

With `[auth]` off the embedded default serves only on loopback, and every request is the
anonymous admin of tenant `default` (`ANONYMOUS`), so the README's commands need no key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from roost.sessions.records import DEFAULT_TENANT

if TYPE_CHECKING:
    from roost.auth.budgets import Budget

Role = Literal["admin", "operator", "user", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `key_id` names the API key it presented (None for OIDC
    tokens and the anonymous principal); `subject` says how it was authenticated."""

    tenant: str
    role: Role
    user_id: str | None = None
    key_id: str | None = None
    subject: Literal["anonymous", "api_key", "oidc"] = "api_key"
    # The API key's own budget (roost.auth.keybudgets); not part of who the caller is.
    budget: Budget | None = field(default=None, compare=False, hash=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def in_tenant(self, tenant: str) -> Principal:
        """The same caller acting in `tenant` (an admin, or a trusted proxy's tenant header)."""
        if tenant == self.tenant:
            return self
        return Principal(tenant, self.role, self.user_id, self.key_id, self.subject,
                         self.budget)


#: The ASGI scope key under which `roost.auth.edge.AuthEdge` leaves the request's principal.
PRINCIPAL = "roost.principal"

ANONYMOUS = Principal(DEFAULT_TENANT, "admin", None, None, "anonymous")
