"""The application uvicorn serves: the turn hot path, then the FastAPI app (routes,
problem+json errors, the runtime's lifespan: start on start-up; drain and close on shutdown).

    observability ─▶ body limit ─▶ AuthEdge ─▶ HotPath ─▶ FastAPI (error middleware, routes)

Turns are most of the traffic, and under overload so are their refusals, so they (and the
creation of sessions) are answered in front of FastAPI: its own middleware (error pages,
telemetry, body limit) wraps every request and every `send` of a response, an SSE stream's
frames included. What they must have -- the access log, metrics and spans, the body limit,
problem+json for every error, the principal and its permission -- is in the plain-ASGI
layers they pass.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from roost.auth import routes as auth_routes
from roost.auth.chain import Auth
from roost.auth.edge import AuthEdge
from roost.auth.openapi import declare_security
from roost.auth.permissions import check_routes
from roost.observability import Observability, ObservabilityMiddleware
from roost.protocols.mount import Protocols
from roost.protocols.openapi import add_protocol_paths
from roost.runtime.runtime import Runtime
from roost.server import problems
from roost.server.hotpath import HotPath
from roost.server.limits import BodySizeLimit
from roost.server.routes import (
    admin,
    agents,
    artifacts,
    docs,
    health,
    observe,
    runs,
    schedules,
    sessions,
    usage,
)
from roost.server.schemas import Problem
from roost.server.transport import harden

# Every error is problem+json (problems.py): documented once for every route.
PROBLEM_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": Problem, "description": description,
           "content": {problems.PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for code, description in (("4XX", "the request cannot be served as sent (RFC 9457 problem)"),
                              ("5XX", "overloaded, unavailable or failed (RFC 9457 problem)"))
}


def _problems_only_as_problem_json(app: FastAPI) -> None:
    """FastAPI documents a response `model` under the route's media type (application/json)
    too; an error body is only ever problem+json."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema["paths"].values():
                for operation in path.values():
                    for code in PROBLEM_RESPONSES:
                        content = operation.get("responses", {}).get(code, {}).get("content", {})
                        content.pop("application/json", None)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def operation_id(route: APIRoute) -> str:
    """`createTurn` for the function `create_turn`: readable names for generated clients."""
    head, *rest = route.name.split("_")
    return head + "".join(word.capitalize() for word in rest)


class RoostApp:
    """The ASGI app of one runtime: `api` is the FastAPI app behind the turn hot path (its
    routes, OpenAPI schema, state and lifespan)."""

    def __init__(self, api: FastAPI, entry: ASGIApp) -> None:
        self.api = api
        self._entry = entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._entry(scope, receive, send)


def create_app(runtime: Runtime, observability: Observability | None = None, *,
               auth: Auth | None = None) -> RoostApp:
    """The HTTP app for `runtime`. With `observability` (see `roost.server.assemble`): the
    request middleware, `/metrics`, and `/v1/admin/profile`. `auth` defaults to what
    `settings.auth` describes (keys in the configured store)."""
    settings = runtime.settings
    if auth is None:
        auth = Auth.from_settings(settings)

    protocols = Protocols(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if observability is not None:
            await observability.start()
        await auth.start()
        await runtime.start()
        # Everything allocated so far (modules, app, agents) lives for the whole process:
        # freezing it keeps full collections short (measured: 42 ms pauses under load,
        # which were most of one tenant's p99 in bench/fairness.py, down to under 3 ms).
        gc.collect()
        gc.freeze()
        if settings.server.gc_thresholds is not None:
            # Python's defaults collect the young generation every 700 allocations and the
            # whole heap every 100 of those (when it grew by a quarter): with thousands of
            # runs alive the full collections walk millions of objects. Measured with
            # bench/c10k.py (3,000 streams): GC took 1.9 s of 8.5 s of CPU with pauses up to
            # 310 ms; with (20000, 20, 100), 0.33 s and no full collection.
            gc.set_threshold(*settings.server.gc_thresholds)
        try:
            async with protocols.lifespan():
                yield
        finally:
            await runtime.drain()
            await runtime.close()
            await auth.close()
            if observability is not None:
                await observability.shutdown()

    app = FastAPI(title="Roost", version="0.1.0", lifespan=lifespan,
                  default_response_class=ORJSONResponse,
                  description="A production runtime for AI agents.",
                  docs_url=None, redoc_url=None,  # routes/docs.py: the assets offline
                  generate_unique_id_function=operation_id)
    app.state.runtime = runtime
    app.state.tenant_header = settings.server.tenant_header
    app.state.auth = auth
    problems.install(app)
    for module in (health, agents, sessions, runs, schedules, artifacts, admin, auth_routes,
                   usage):
        app.include_router(module.router, responses=PROBLEM_RESPONSES)
    app.include_router(docs.router)
    _problems_only_as_problem_json(app)
    if observability is not None:
        app.state.observability = observability
        app.include_router(observe.router, responses=PROBLEM_RESPONSES)
    # Every route must say who may call it (roost.auth.permissions.ROUTES).
    check_routes((method, getattr(route, "path", "")) for route in app.routes
                 for method in getattr(route, "methods", None) or ())
    add_protocol_paths(app, mcp=protocols.mcp, a2a=protocols.a2a)
    declare_security(app)
    entry: ASGIApp = HotPath(app, runtime=runtime, tenant_header=settings.server.tenant_header)
    # OpenAI-compatible API, MCP and A2A: plain ASGI like the turn route, same runtime,
    # behind the same auth edge (their routes are in the permission table too).
    entry = protocols.wrap(entry)
    edge = AuthEdge(entry, auth, runtime)
    app.state.budgets = edge.budgets  # shown by GET /v1/usage
    entry = edge
    entry = BodySizeLimit(entry, max_bytes=settings.server.max_body_bytes)
    entry = harden(entry, settings.transport)
    if observability is not None:
        # Outermost: it sees every request, refused and malformed ones included.
        entry = ObservabilityMiddleware(entry, observability=observability)
    return RoostApp(app, entry)
