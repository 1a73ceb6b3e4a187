"""What every mock model server shares: the counting HTTP server, its statistics, the
control endpoints, fault playing and the command line.

`MockOpenAIServer` and `MockAnthropicServer` subclass `MockServer` and write only their API:
the model routes, the answer's shape, the error body's shape (`_error_response`) and which
statuses a fault comes as (`_FAULT_ERRORS`). What they get:

- in-process use: `async with server:` (`start()` / `stop()`), `url`, `faults`, `stats`,
  `last_request`, `reset()`;
- control endpoints `POST|DELETE|GET /_mock/faults`, `GET /_mock/stats`, `POST /_mock/reset`,
  never counted as API requests;
- faults played the same way by both: latency (`X-Mock-Latency-Ms` overrides the server's),
  `slow_first_token`, `timeout`, HTTP errors (`_before_answer`), then a broken JSON body
  (`_json_answer`) or a broken stream (`_write_stream`);
- `run_cli(...)`: argparse, uvloop, SIGINT/SIGTERM, a raised open-files limit.

It sits on aiohttp's low-level server (no router, no middlewares, no access log): the mock
OpenAI server must hold 10,000 open connections in the C10K benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Final, Self

import msgspec

try:
    from aiohttp import web, web_protocol
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("roost.testing's mock servers need aiohttp: "
                      "pip install 'roost[testing]'") from exc

from roost.testing.faults import FaultInjector, FaultMode, FaultPlan

__all__ = ["LATENCY_HEADER", "CountingServer", "MockServer", "MockStats", "run_cli"]

#: Per-request override of the server's latency, in milliseconds.
LATENCY_HEADER: Final = "X-Mock-Latency-Ms"

JSON: Final = "application/json"
SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_encode: Final = msgspec.json.Encoder().encode

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class MockStats:
    """Live counters of a mock server; `to_dict()` is what `GET /_mock/stats` returns.

    `open_requests` counts API requests being handled (a streamed answer is open until its
    last byte); `open_connections` counts TCP connections, idle keep-alive ones included.
    """

    __slots__ = (
        "_waiters",
        "chat_requests",
        "embedding_requests",
        "max_open_connections",
        "max_open_requests",
        "open_connections",
        "open_requests",
        "requests_total",
        "started_at",
    )

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []
        self.open_connections = 0
        self.open_requests = 0
        self.reset()

    def reset(self) -> None:
        """Zero the totals and maxima; what is open now stays counted."""
        self.requests_total = 0
        self.chat_requests = 0
        self.embedding_requests = 0
        self.max_open_requests = self.open_requests
        self.max_open_connections = self.open_connections
        self.started_at = time.time()

    def notify(self) -> None:
        """Wake `wait_for` callers: a server calls it after changing a counter."""
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    _changed = notify  # the name the Anthropic mock first used

    async def wait_for(self, predicate: Callable[[MockStats], bool]) -> None:
        """Wait until `predicate(stats)` holds, re-checked whenever a request or a connection
        opens or closes. Bound it with a timeout:

            async with asyncio.timeout(5):
                await server.stats.wait_for(lambda s: s.open_connections == 0)
        """
        loop = asyncio.get_running_loop()
        while not predicate(self):
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter

    def to_dict(self, faults: FaultInjector | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "requests_total": self.requests_total,
            "chat_requests": self.chat_requests,
            "embedding_requests": self.embedding_requests,
            "open_requests": self.open_requests,
            "max_open_requests": self.max_open_requests,
            "open_connections": self.open_connections,
            "max_open_connections": self.max_open_connections,
            "uptime_s": round(time.time() - self.started_at, 3),
        }
        if faults is not None:
            data["faults"] = faults.stats.to_dict()
        return data


class CountingServer(web.Server):
    """aiohttp's low-level server, counting connections in a `MockStats` as they open and
    close. Shared by the mock servers."""

    def __init__(self, stats: MockStats, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats = stats

    def connection_made(
        self, handler: web_protocol.RequestHandler, transport: asyncio.Transport
    ) -> None:
        super().connection_made(handler, transport)
        stats = self._stats
        stats.open_connections += 1
        if stats.open_connections > stats.max_open_connections:
            stats.max_open_connections = stats.open_connections
        stats.notify()

    def connection_lost(
        self, handler: web_protocol.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self._stats.open_connections -= 1
        self._stats.notify()


def abort(request: web.BaseRequest) -> None:
    """Drop the connection without a word, as a crashed upstream would."""
    transport = request.transport
    if transport is not None:
        transport.abort()


class MockServer:
    """Base of the mock model servers: lifecycle, dispatch, control endpoints, faults.

        class MockThing(MockServer):
            _FAULT_ERRORS = {"http_500": (500, "server_error", "mock: boom"), ...}

            def __init__(self, **kwargs):
                super().__init__(model="mock-thing", **kwargs)
                self._routes["POST", "/v1/generate"] = self._generate

            def _error_response(self, status, kind, message, headers=None): ...

    A subclass's model handlers record `self._last_raw = (request.headers, body)`, count
    `self.stats.chat_requests`, and play faults through `_before_answer`, `_json_answer`
    and `_write_stream`.
    """

    #: fault mode -> (HTTP status, error type, message) for faults answered with an error.
    _FAULT_ERRORS: ClassVar[Mapping[str, tuple[int, str, str]]] = {}

    def __init__(
        self,
        *,
        host: str,
        port: int,
        latency_s: float,
        token_delay_s: float,
        model: str,
        api_key: str | None,
        backlog: int,
        shutdown_timeout_s: float,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_s = latency_s
        self.token_delay_s = token_delay_s
        self.model = model
        self.api_key = api_key
        self.backlog = backlog
        self.shutdown_timeout_s = shutdown_timeout_s
        self.faults = FaultInjector()
        self.stats = MockStats()
        # The newest model request, raw: one reference swap per request costs nothing under
        # load; `last_request` decodes it when a test asks.
        self._last_raw: tuple[Mapping[str, str], bytes] | None = None
        self._runner: web.ServerRunner | None = None
        self._calls = 0
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/_mock/faults"): self._set_faults,
            ("DELETE", "/_mock/faults"): self._clear_faults,
            ("GET", "/_mock/faults"): self._get_faults,
            ("GET", "/_mock/stats"): self._get_stats,
            ("POST", "/_mock/reset"): self._reset,
        }

    # what a subclass says

    def _error_response(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        """An error in the mocked API's own shape; `kind` is its error type."""
        raise NotImplementedError

    def _no_route(self, request: web.BaseRequest) -> web.Response:
        return self._error_response(
            404, "not_found_error", f"no route {request.method} {request.path}"
        )

    def _deny(self, request: web.BaseRequest) -> web.Response | None:
        """An answer that refuses an API request before its handler runs (bad key), or None."""
        return None

    # lifecycle

    @property
    def url(self) -> str:
        """The server root, e.g. "http://127.0.0.1:8001"."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def last_request(self) -> tuple[dict[str, str], dict[str, Any]] | None:
        """The newest model request as (headers, JSON body), or None."""
        if self._last_raw is None:
            return None
        headers, body = self._last_raw
        return dict(headers), msgspec.json.decode(body)

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        server = CountingServer(
            self.stats,
            self._dispatch,
            # A client that hangs up mid-answer cancels its handler: a "timeout" fault or a
            # long stream must not outlive the connection that asked for it.
            handler_cancellation=True,
            access_log=None,
        )
        runner = web.ServerRunner(server, shutdown_timeout=self.shutdown_timeout_s)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=self.backlog)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def reset(self) -> None:
        """Clear the fault plan and the counters (open requests and connections stay)."""
        self.faults.clear()
        self.faults.reset_stats()
        self.stats.reset()
        self._last_raw = None

    # dispatch

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return self._no_route(request)
        if request.path.startswith("/_mock/"):
            return await handler(request)
        stats = self.stats
        stats.requests_total += 1
        stats.open_requests += 1
        if stats.open_requests > stats.max_open_requests:
            stats.max_open_requests = stats.open_requests
        stats.notify()
        try:
            denied = self._deny(request)
            if denied is not None:
                return denied
            return await handler(request)
        finally:
            stats.open_requests -= 1
            stats.notify()

    def _latency(self, request: web.BaseRequest) -> float:
        override = request.headers.get(LATENCY_HEADER)
        if override is None:
            return self.latency_s
        try:
            return max(0.0, float(override) / 1000.0)
        except ValueError:
            return self.latency_s

    # faults

    async def _before_answer(
        self, request: web.BaseRequest, mode: FaultMode
    ) -> web.StreamResponse | None:
        """Wait the latency (plus a `slow_first_token` delay); then the answer a fault puts
        in place of the real one, or None to answer."""
        plan = self.faults.plan
        delay = self._latency(request)
        if mode == "slow_first_token":
            delay += plan.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        if mode == "none" or mode == "slow_first_token":
            return None
        error = self._FAULT_ERRORS.get(mode)
        if error is not None:
            status, kind, message = error
            headers = None
            if mode == "http_429":
                value = plan.retry_after_s
                headers = {"Retry-After": str(int(value)) if value == int(value) else f"{value:g}"}
            return self._error_response(status, kind, message, headers)
        if mode == "timeout":
            # Hold the request; handler_cancellation ends this early if the client leaves.
            await asyncio.sleep(plan.timeout_s)
            abort(request)
            return web.Response(status=504)
        return None

    async def _json_answer(
        self, request: web.BaseRequest, mode: FaultMode, payload: bytes
    ) -> web.StreamResponse:
        """A non-streamed answer, broken as `mode` says."""
        if mode == "malformed_json":
            return web.Response(body=payload[: len(payload) // 2] + b"}{", content_type=JSON)
        if mode == "truncated_sse":
            # Not a stream: the closest thing is a complete HTTP body holding half a document.
            return web.Response(body=payload[: len(payload) // 2], content_type=JSON)
        if mode == "reset_mid_stream":
            response = web.StreamResponse(headers={"Content-Type": JSON})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            abort(request)
            return response
        return web.Response(body=payload, content_type=JSON)

    async def _write_stream(
        self, request: web.BaseRequest, mode: FaultMode, events: list[bytes]
    ) -> web.StreamResponse:
        """Send SSE `events` (already cut or broken for `mode`), `token_delay_s` apart; a
        `reset_mid_stream` drops the connection instead of ending the stream."""
        response = web.StreamResponse(headers=SSE_HEADERS)
        try:
            await response.prepare(request)
            if self.token_delay_s <= 0:
                await response.write(b"".join(events))
            else:
                for index, event in enumerate(events):
                    if index:
                        await asyncio.sleep(self.token_delay_s)
                    await response.write(event)
            if mode == "reset_mid_stream":
                abort(request)
                return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client left: nothing to answer
        return response

    # control endpoints

    async def _set_faults(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            plan = FaultPlan.from_dict(msgspec.json.decode(await request.read()))
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return self._error_response(400, "invalid_request_error", f"invalid fault plan: {exc}")
        self.faults.set(plan)
        return web.Response(body=_encode(plan.to_dict()), content_type=JSON)

    async def _clear_faults(self, request: web.BaseRequest) -> web.StreamResponse:
        self.faults.clear()
        return web.Response(status=204)

    async def _get_faults(self, request: web.BaseRequest) -> web.StreamResponse:
        data = {**self.faults.plan.to_dict(), "remaining": self.faults.remaining}
        return web.Response(body=_encode(data), content_type=JSON)

    async def _get_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=_encode(self.stats.to_dict(self.faults)), content_type=JSON)

    async def _reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset()
        return web.Response(status=204)


# --- CLI -------------------------------------------------------------------------------------


def _raise_open_files_limit() -> None:
    # Each client connection is a file descriptor: C10K needs more than the usual soft 1024.
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(server: MockServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()


def run_cli(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    port: int,
    model: str,
    between: str,
    make_server: Callable[[argparse.Namespace], MockServer],
    backlog: bool = False,
) -> None:
    """Parse `argv` (`--host --port --latency-ms --token-delay-ms [--backlog] --model`) and
    serve `make_server(args)` until SIGINT or SIGTERM, on uvloop when it is installed.

    `between` names what `--token-delay-ms` separates ("chunks", "events").
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before the first byte")
    parser.add_argument(
        "--token-delay-ms", type=float, default=0.0, help=f"wait between {between}"
    )
    if backlog:
        parser.add_argument("--backlog", type=int, default=4096, help="listen() backlog")
    parser.add_argument("--model", default=model, help="model name to report")
    args = parser.parse_args(argv)
    _raise_open_files_limit()

    async def serve() -> None:
        # Built inside the loop, like everything that may touch it.
        await _serve(make_server(args))

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a default dependency off Windows
        asyncio.run(serve())
    else:
        uvloop.run(serve())
