"""Who may do what: one table from (method, route template) to a permission, and which
roles hold each permission.

Every route the app serves is in `ROUTES` (`check_routes` refuses to build an app with a
route missing from it, and `tests/auth/test_matrix.py` walks the OpenAPI document × every
role against it). A request whose role lacks the permission gets 403; one without
credentials, 401. Tenancy is not decided here: every object is looked up in the principal's
tenant, so another tenant's object answers 404 (it does not exist for this caller).

The model for agents: agents are defined by the deployment and shared by every tenant, so
their lifecycle (pause, resume, stop) acts on every tenant at once and is `admin` only;
any role may read them. Admin statistics are scoped: operators see their tenant's share
(`stats:tenant`) and audit trail (`audit:tenant`), admins everything; the rest of `/v1/admin/*`, `/metrics` and profiling are
admin only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

from roost.auth.principal import ROLES, Role

Permission = Literal[
    "public",            # no credentials needed (health, the API docs)
    "agents:read",
    "agents:lifecycle",  # acts on every tenant: admin
    "sessions:read",     # sessions, their events, runs, artifacts
    "sessions:write",    # create, patch, delete sessions; turns; cancel and resume runs
    "usage:read",
    "stats:tenant",      # /v1/admin/stats, scoped to the caller's tenant unless admin
    "keys:admin",
    "audit:tenant",      # /v1/admin/audit, scoped to the caller's tenant unless admin
    "admin",             # /metrics, profiling
]

GRANTS: dict[Role, frozenset[Permission]] = {
    "viewer": frozenset({"public", "agents:read", "sessions:read"}),
    "user": frozenset({"public", "agents:read", "sessions:read", "sessions:write"}),
    "operator": frozenset({"public", "agents:read", "sessions:read", "sessions:write",
                           "usage:read", "stats:tenant", "audit:tenant"}),
    "admin": frozenset({"public", "agents:read", "agents:lifecycle", "sessions:read",
                        "sessions:write", "usage:read", "stats:tenant", "audit:tenant",
                        "keys:admin", "admin"}),
}
assert set(GRANTS) == set(ROLES)

ROUTES: dict[tuple[str, str], Permission] = {
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/docs/oauth2-redirect"): "public",
    ("GET", "/redoc"): "public",
    ("GET", "/docs/assets/{name}"): "public",
    ("GET", "/v1/agents"): "agents:read",
    ("GET", "/v1/agents/{name}"): "agents:read",
    ("POST", "/v1/agents/{name}/pause"): "agents:lifecycle",
    ("POST", "/v1/agents/{name}/resume"): "agents:lifecycle",
    ("POST", "/v1/agents/{name}/stop"): "agents:lifecycle",
    ("POST", "/v1/agents/{name}/sessions"): "sessions:write",
    ("GET", "/v1/agents/{name}/schedules"): "sessions:read",
    ("POST", "/v1/agents/{name}/schedules"): "sessions:write",
    ("GET", "/v1/agents/{name}/schedules/{schedule_id}"): "sessions:read",
    ("PATCH", "/v1/agents/{name}/schedules/{schedule_id}"): "sessions:write",
    ("DELETE", "/v1/agents/{name}/schedules/{schedule_id}"): "sessions:write",
    ("GET", "/v1/sessions"): "sessions:read",
    ("GET", "/v1/sessions/{session_id}"): "sessions:read",
    ("PATCH", "/v1/sessions/{session_id}"): "sessions:write",
    ("DELETE", "/v1/sessions/{session_id}"): "sessions:write",
    ("GET", "/v1/sessions/{session_id}/events"): "sessions:read",
    ("POST", "/v1/sessions/{session_id}/turns"): "sessions:write",
    ("GET", "/v1/runs"): "sessions:read",
    ("GET", "/v1/runs/{run_id}"): "sessions:read",
    ("GET", "/v1/runs/{run_id}/events"): "sessions:read",
    ("POST", "/v1/runs/{run_id}/cancel"): "sessions:write",
    ("POST", "/v1/runs/{run_id}/resume"): "sessions:write",
    ("POST", "/v1/runs/{run_id}/approvals"): "sessions:write",
    ("GET", "/v1/artifacts/{artifact_id}"): "sessions:read",
    ("GET", "/v1/usage"): "usage:read",
    ("GET", "/v1/admin/stats"): "stats:tenant",
    ("GET", "/v1/admin/audit"): "audit:tenant",
    ("GET", "/v1/admin/profile"): "admin",
    ("GET", "/v1/admin/keys"): "keys:admin",
    ("POST", "/v1/admin/keys"): "keys:admin",
    ("DELETE", "/v1/admin/keys/{key_id}"): "keys:admin",
    ("GET", "/metrics"): "admin",
    # The protocol adapters (roost.protocols), served in front of FastAPI: not in the
    # OpenAPI document (PROTOCOL_ROUTES lists them for the role x route test).
    ("GET", "/v1/models"): "agents:read",
    ("GET", "/v1/models/{model}"): "agents:read",
    ("POST", "/v1/chat/completions"): "sessions:write",
    ("POST", "/v1/responses"): "sessions:write",
    ("GET", "/v1/responses/{response_id}"): "sessions:read",
    ("POST", "/mcp"): "sessions:write",
    ("GET", "/mcp"): "sessions:write",
    ("DELETE", "/mcp"): "sessions:write",
    ("POST", "/a2a/{agent}"): "sessions:write",
    # Agent cards are how A2A clients discover an agent and how to authenticate to it.
    ("GET", "/a2a/{agent}/.well-known/agent-card.json"): "public",
    ("GET", "/.well-known/agent-card.json"): "public",
}


PROTOCOL_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("GET", "/v1/models"), ("GET", "/v1/models/{model}"), ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"), ("GET", "/v1/responses/{response_id}"), ("POST", "/mcp"),
    ("GET", "/mcp"), ("DELETE", "/mcp"), ("POST", "/a2a/{agent}"),
    ("GET", "/a2a/{agent}/.well-known/agent-card.json"), ("GET", "/.well-known/agent-card.json"),
})
assert PROTOCOL_ROUTES.issubset(ROUTES)


def allowed(role: Role, permission: Permission) -> bool:
    return permission in GRANTS[role]


class RouteTable:
    """Matches a request's method and path to its template and permission in a few µs:
    literal paths by one dict lookup, templated ones by regex within their method and
    segment count (at most a handful each)."""

    def __init__(self, routes: dict[tuple[str, str], Permission] = ROUTES) -> None:
        self._exact: dict[tuple[str, str], tuple[str, Permission]] = {}
        self._patterns: dict[tuple[str, int], list[tuple[re.Pattern[str], str, Permission]]] = {}
        for (method, template), permission in routes.items():
            methods = (method, "HEAD") if method == "GET" else (method,)
            for m in methods:
                if "{" not in template:
                    self._exact[(m, template)] = (template, permission)
                else:
                    pattern = re.compile(re.sub(r"\{[^}]+\}", "([^/]+)", template))
                    bucket = self._patterns.setdefault((m, template.count("/")), [])
                    bucket.append((pattern, template, permission))

    def match(self, method: str, path: str) -> tuple[str, Permission, str | None] | None:
        """(template, permission, first path parameter) or None for an unknown route."""
        found = self._exact.get((method, path))
        if found is not None:
            return found[0], found[1], None
        for pattern, template, permission in self._patterns.get((method, path.count("/")), ()):
            m = pattern.fullmatch(path)
            if m is not None:
                return template, permission, m[1]
        return None


def check_routes(routes: Iterable[tuple[str, str]],
                 table: dict[tuple[str, str], Permission] = ROUTES) -> None:
    """Raise when a served (method, template) has no permission: a route cannot be added
    without saying who may call it."""
    missing = sorted({(m, p) for m, p in routes if m != "HEAD" and (m, p) not in table})
    if missing:
        raise RuntimeError("routes without a permission in roost.auth.permissions.ROUTES: "
                           + ", ".join(f"{m} {p}" for m, p in missing))
