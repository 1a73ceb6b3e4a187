"""`/v1/admin/keys`: create, list and revoke API keys over HTTP (admin only; see
`permissions.py`); the secret is in the creation response and nowhere else.
`/v1/admin/audit`: the audit trail, newest first (operators: their tenant's)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from roost.auth.budgets import Budget
from roost.auth.chain import Auth
from roost.auth.keys import new_key
from roost.auth.principal import PRINCIPAL, Role
from roost.errors import InvalidInput
from roost.server.problems import problem
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response
from roost.server.routes.usage import parse_time

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=StrictJSONRoute)


class KeyCreate(BaseModel):
    tenant: str = Field(min_length=1, max_length=200)
    role: Role
    name: str = Field(min_length=1, max_length=200)
    user_id: str | None = None
    expires_in_s: float | None = Field(None, gt=0)
    budget: Budget | None = Field(None, description="the key's own day/month limits on "
                                  "tokens and cost (429 budget_exceeded once spent)")


def _auth(request: Request) -> Auth:
    return request.app.state.auth  # type: ignore[no-any-return]


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> Response:
    """A new key; `token` is shown this once (only its hash is stored)."""
    budget = body.budget.model_dump(exclude_none=True) if body.budget else None
    key, token = new_key(body.tenant, body.role, body.name, user_id=body.user_id,
                         ttl_s=body.expires_in_s, budget=budget)
    await _auth(request).keys.add(key)
    return json_response({**key.public(), "token": token}, status=201)


@router.get("/keys")
async def list_keys(request: Request, tenant: str | None = Query(None)) -> Response:
    keys = await _auth(request).keys.list(tenant)
    return json_response({"items": [k.public() for k in keys]})


@router.delete("/keys/{key_id}", status_code=204)
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke at once here; every other instance refuses it within `auth.api_keys.cache_ttl_s`."""
    if len(key_id) > 64:
        raise InvalidInput("not a key id", field="key_id")
    auth = _auth(request)
    if not await auth.keys.revoke(key_id, time.time()):
        return problem(404, "key_not_found", f"no active key {key_id}")
    auth.api_keys.forget(key_id)
    return Response(status_code=204)


@router.get("/audit")
async def audit_trail(request: Request, tenant: str | None = Query(None),
                      since: str | None = Query(None, description="epoch seconds or ISO-8601"),
                      until: str | None = Query(None, description="epoch seconds or ISO-8601"),
                      limit: int = Query(100, ge=1, le=1000)) -> Response:
    """State-changing calls and refusals, newest first. Admins see every tenant (or
    `tenant`); operators only theirs. Records reach the store within `auth.audit_flush_s`."""
    principal = request.scope.get(PRINCIPAL)
    if principal is not None and not principal.is_admin:
        tenant = principal.tenant
    store = _auth(request).audit.store
    if store is None:
        return problem(404, "audit_not_stored", "the audit trail is not kept in the store "
                       "(auth.enabled and auth.audit_store turn it on)")
    records = await store.query(tenant, since=parse_time(since, "since"),
                                until=parse_time(until, "until"), limit=limit)
    return json_response({"items": records})
