"""`LiveServer`: a real uvicorn serving a Runtime on a free loopback port, in a thread.

    with LiveServer(Runtime(Settings(store={"url": "memory://"}), [agent])) as server:
        httpx.post(f"{server.url}/v1/agents/weather/sessions", json={})

The server runs its own event loop in a background thread (owned by the context manager and
joined on exit), so synchronous and asynchronous clients in the test can both talk to it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from roost.runtime.runtime import Runtime
from roost.server.app import create_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    def __init__(self, runtime: Runtime, *, port: int | None = None,
                 startup_timeout_s: float = 10.0, app: ASGIApp | None = None) -> None:
        self.runtime = runtime
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_timeout_s = startup_timeout_s
        # `app`: the runtime's app built otherwise (with observability, auth, …)
        config = uvicorn.Config(app or create_app(runtime), host="127.0.0.1", port=self.port,
                                log_level=None, access_log=False, lifespan="on",
                                log_config=None, proxy_headers=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, name="roost-live-server",
                                        daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=30)

    # From async tests: start and stop without blocking the test's own event loop (which
    # may be serving something the server needs, such as a proxy to its store).
    async def __aenter__(self) -> LiveServer:
        await asyncio.to_thread(self.__enter__)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.__exit__, exc_type, exc, tb)
