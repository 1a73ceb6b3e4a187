"""The FastAPI application: routes, problem+json errors, body limit, and the runtime's
lifespan (start on start-up; drain and close on shutdown)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from roost.observability import Observability, ObservabilityMiddleware
from roost.runtime.runtime import Runtime
from roost.server import problems
from roost.server.limits import BodySizeLimit
from roost.server.routes import admin, agents, artifacts, health, observe, runs, sessions, usage
from roost.server.turns import TurnEndpoint


def create_app(runtime: Runtime, observability: Observability | None = None) -> FastAPI:
    """The HTTP app for `runtime`. With `observability` (see `roost.server.assemble`): the
    request middleware, `/metrics`, and `/v1/admin/profile`."""
    settings = runtime.settings

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if observability is not None:
            await observability.start()
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
            yield
        finally:
            await runtime.drain()
            await runtime.close()
            if observability is not None:
                await observability.shutdown()

    app = FastAPI(title="Roost", version="0.1.0", lifespan=lifespan,
                  default_response_class=ORJSONResponse,
                  description="A production runtime for AI agents.")
    app.state.runtime = runtime
    app.state.tenant_header = settings.server.tenant_header
    problems.install(app)
    for module in (health, agents, sessions, runs, artifacts, admin, usage):
        app.include_router(module.router)
    # Innermost first: the turn hot path sits inside the body limit and observability.
    app.add_middleware(TurnEndpoint, runtime=runtime, tenant_header=settings.server.tenant_header)
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_body_bytes)
    if observability is not None:
        app.state.observability = observability
        app.include_router(observe.router)
        # Added last, so outermost: it sees every request, rejected ones included.
        app.add_middleware(ObservabilityMiddleware, observability=observability)
    return app
