"""The OpenAPI document declares how to authenticate (so `/docs` offers "Authorize" for a
key or token) and, per operation, the permission it needs (from `permissions.ROUTES`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from roost.auth.permissions import GRANTS, ROUTES

SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "an API key (`rk_…`, from `roost keys create`) or an OIDC token"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def declare_security(app: FastAPI) -> None:
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {})["securitySchemes"] = SCHEMES
        for path, item in schema.get("paths", {}).items():
            for method, operation in item.items():
                permission = ROUTES.get((method.upper(), path))
                if permission is None or permission == "public":
                    operation["security"] = []
                    continue
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                roles = ", ".join(r for r, granted in GRANTS.items() if permission in granted)
                note = f"Permission `{permission}` (roles: {roles})."
                operation["description"] = (f"{operation.get('description', '')}\n\n{note}"
                                             .strip())
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
