"""Run the app on uvicorn with Roost's shutdown: drain first, then stop listening.

On SIGTERM (or the first Ctrl-C) the runtime starts draining at once — `/readyz` answers 503
and new turns 503 — while the server keeps listening so load balancers see it go unready;
in-flight runs get the grace period, leftovers are interrupted (resumable), then uvicorn
exits. A second signal exits immediately.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from types import FrameType

import uvicorn

from roost.observability import Observability
from roost.runtime.runtime import Runtime
from roost.server.app import create_app
from roost.server.notify import SystemdNotifier
from roost.server.transport import uvicorn_options

log = logging.getLogger("roost.server")


class RoostServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self._drain_task: asyncio.Future[None] | None = None
        self.systemd = SystemdNotifier.from_environment()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets and self.started:
            # uvicorn announces the address only when it binds the socket itself; the CLI
            # binds first (a port in use must fail before the runtime starts).
            host, port = sockets[0].getsockname()[:2]
            log.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, port)
        if self.started:  # the runtime is up and the socket accepts: Type=notify's READY
            self.systemd.notify(f"READY=1\nSTATUS=serving\nMAINPID={os.getpid()}")

    async def on_tick(self, counter: int) -> bool:
        self.systemd.tick(time.monotonic())
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None or not self.started:
            super().handle_exit(sig, frame)  # second signal, or not serving yet: stop now
            return
        log.info("received %s: draining (grace %.0f s)", signal.Signals(sig).name,
                 self.runtime.settings.server.shutdown_grace_s)
        self.runtime.draining = True
        self.systemd.notify("STOPPING=1\nSTATUS=draining")
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
          log_level: str = "info", sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM. `sock`: a socket the caller already bound and listens on (so a
    port in use fails before the runtime starts); otherwise uvicorn binds host:port."""
    # log_config=None: Roost's logging (structlog, JSON in production) owns the loggers;
    # the access log comes from the observability middleware.
    # The transport options choose the HTTP protocol (httptools, with a header-read timeout
    # and a per-client cap), keep-alive and TLS.
    config = uvicorn.Config(create_app(runtime, observability), host=host, port=port,
                            loop="auto", log_level=log_level, access_log=False,
                            log_config=None, timeout_graceful_shutdown=5, lifespan="on",
                            backlog=runtime.settings.server.backlog,
                            **uvicorn_options(runtime.settings.transport))
    RoostServer(config, runtime).run(sockets=[sock] if sock is not None else None)
