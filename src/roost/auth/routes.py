"""`/v1/admin/keys`: create, list and revoke API keys over HTTP (admin only; see
`permissions.py`). The secret is in the creation response and nowhere else."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from roost.auth.chain import Auth
from roost.auth.keys import new_key
from roost.auth.principal import Role
from roost.errors import InvalidInput
from roost.server.problems import problem
from roost.server.requests import StrictJSONRoute
from roost.server.respond import json_response

router = APIRouter(prefix="/v1/admin/keys", tags=["admin"], route_class=StrictJSONRoute)


class KeyCreate(BaseModel):
    tenant: str = Field(min_length=1, max_length=200)
    role: Role
    name: str = Field(min_length=1, max_length=200)
    user_id: str | None = None
    expires_in_s: float | None = Field(None, gt=0)


def _auth(request: Request) -> Auth:
    return request.app.state.auth  # type: ignore[no-any-return]


@router.post("", status_code=201)
async def create_key(body: KeyCreate, request: Request) -> Response:
    """A new key; `token` is shown this once (only its hash is stored)."""
    key, token = new_key(body.tenant, body.role, body.name, user_id=body.user_id,
                         ttl_s=body.expires_in_s)
    await _auth(request).keys.add(key)
    return json_response({**key.public(), "token": token}, status=201)


@router.get("")
async def list_keys(request: Request, tenant: str | None = Query(None)) -> Response:
    keys = await _auth(request).keys.list(tenant)
    return json_response({"items": [k.public() for k in keys]})


@router.delete("/{key_id}", status_code=204)
async def revoke_key(key_id: str, request: Request) -> Response:
    """Revoke at once here; every other instance refuses it within `auth.api_keys.cache_ttl_s`."""
    if len(key_id) > 64:
        raise InvalidInput("not a key id", field="key_id")
    auth = _auth(request)
    if not await auth.keys.revoke(key_id, time.time()):
        return problem(404, "key_not_found", f"no active key {key_id}")
    auth.api_keys.forget(key_id)
    return Response(status_code=204)
