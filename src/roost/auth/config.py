"""`[auth]` settings: who may call the server, and how they prove it.

    [auth]
    enabled = true
    user_scoped = false                 # users see only sessions with their user_id
    trusted_proxies = ["10.0.0.5"]      # may name the tenant with server.tenant_header

    [auth.api_keys]
    cache_ttl_s = 5                     # a revoked key is refused everywhere within this

    [auth.oidc]
    issuer = "https://login.example.com/"
    audience = "roost"
    jwks_url = "https://login.example.com/.well-known/jwks.json"
    tenant_claim = "tenant"
    role_claim = "roost_role"

Without `enabled`, every request is the anonymous admin and the server binds only loopback
addresses unless `insecure = true` says that is meant.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from roost.auth.budgets import BudgetsConfig
from roost.auth.principal import Role


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ApiKeysConfig(_Section):
    cache_ttl_s: float = Field(5.0, ge=0, description="verified keys are trusted this long "
                               "without asking the store: the delay before a revocation "
                               "reaches every instance")
    negative_cache_ttl_s: float = Field(1.0, ge=0, description="unknown keys are refused "
                                        "this long without asking the store again")
    cache_max_entries: int = Field(100_000, ge=1)
    last_used_flush_s: float = Field(30.0, gt=0, description="last-used times are written "
                                     "in one batch this often, never per request")
    url: str | None = Field(None, description="where keys are stored (default: store.url)")


class OIDCConfig(_Section):
    issuer: str
    audience: str
    jwks_url: str
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"])
    tenant_claim: str = "tenant"
    role_claim: str = "role"
    user_claim: str = "sub"
    default_tenant: str | None = Field(None, description="when the tenant claim is absent "
                                       "(None: such tokens are refused)")
    default_role: Role | None = Field("user", description="when the role claim is absent or "
                                      "not a Roost role (None: refused)")
    jwks_cache_s: float = Field(300.0, gt=0, description="how long a fetched JWKS is used")
    jwks_min_refetch_s: float = Field(10.0, ge=0, description="an unknown kid refetches the "
                                      "JWKS at most this often")
    leeway_s: float = Field(30.0, ge=0, description="clock skew allowed on exp/nbf/iat")
    fetch_timeout_s: float = Field(5.0, gt=0)


class AuthConfig(_Section):
    enabled: bool = False
    insecure: bool = Field(False, description="serve a non-loopback address without auth")
    user_scoped: bool = False
    trusted_proxies: list[str] = Field(default_factory=list, description="client addresses "
                                       "whose server.tenant_header is honoured")
    api_keys: ApiKeysConfig = Field(default_factory=lambda: ApiKeysConfig())
    oidc: OIDCConfig | None = None
    audit: Literal["log", "off"] = Field("log", description="state-changing calls and "
                                         "refusals on the roost.audit logger")
    audit_store: bool = Field(True, description="also keep them in the store, for "
                              "GET /v1/admin/audit")
    audit_retention_s: float = Field(30 * 86400, gt=0)
    audit_flush_s: float = Field(1.0, gt=0, description="records are written in batches")
    budgets: BudgetsConfig = Field(default_factory=lambda: BudgetsConfig())
