"""Run the app on uvicorn with Roost's shutdown: drain first, then stop listening.

On SIGTERM (or the first Ctrl-C) the runtime starts draining at once — `/readyz` answers 503
and new turns 503 — while the server keeps listening so load balancers see it go unready;
in-flight runs get the grace period, leftovers are interrupted (resumable), then uvicorn
exits. A second signal exits immediately.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

import uvicorn

from roost.observability import Observability
from roost.runtime.runtime import Runtime
from roost.server.app import create_app
from roost.server.transport import uvicorn_options

log = logging.getLogger("roost.server")


class RoostServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self._drain_task: asyncio.Future[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or not serving yet: stop now
            return
        log.info("received %s: draining (grace %.0f s)", signal.Signals(sig).name,
                 self.runtime.settings.server.shutdown_grace_s)
        self.runtime.draining = True
        loop = asyncio.get_event_loop()
        # A signal handler runs between bytecodes: schedule the drain, waking the loop.
        self._drain_task = loop.create_future()  # placeholder: marks "drain requested"
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain_task = asyncio.get_event_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.runtime.drain()
        finally:
            self.should_exit = True


def serve(runtime: Runtime, observability: Observability | None = None, *, host: str, port: int,
          log_level: str = "info") -> None:
    # log_config=None: Roost's logging (structlog, JSON in production) owns the loggers;
    # the access log comes from the observability middleware.
    # The transport options choose the HTTP protocol (httptools, with a header-read timeout
    # and a per-client cap), keep-alive and TLS.
    config = uvicorn.Config(create_app(runtime, observability), host=host, port=port,
                            loop="auto", log_level=log_level, access_log=False,
                            log_config=None, timeout_graceful_shutdown=5, lifespan="on",
                            backlog=runtime.settings.server.backlog,
                            **uvicorn_options(runtime.settings.transport))
    RoostServer(config, runtime).run()
