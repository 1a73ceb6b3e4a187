"""The FastAPI application: routes, problem+json errors, body limit, and the runtime's
lifespan (start on start-up; drain and close on shutdown)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from roost.runtime.runtime import Runtime
from roost.server import problems
from roost.server.limits import BodySizeLimit
from roost.server.routes import admin, agents, artifacts, health, runs, sessions


def create_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.drain()
            await runtime.close()

    app = FastAPI(title="Roost", version="0.1.0", lifespan=lifespan,
                  default_response_class=ORJSONResponse,
                  description="A production runtime for AI agents.")
    app.state.runtime = runtime
    app.state.tenant_header = settings.server.tenant_header
    problems.install(app)
    for module in (health, agents, sessions, runs, artifacts, admin):
        app.include_router(module.router)
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_body_bytes)
    return app
