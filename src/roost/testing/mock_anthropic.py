"""A mock Anthropic Messages API server: deterministic answers, injectable faults.

It answers `POST /v1/messages` (streamed or not, with tools) the way the mock OpenAI server
answers chat completions — same rules, same tool choice and arguments:

- tools offered, and no tool result since the last user text → ONE `tool_use` block on the
  tool that best matches the user's words, with arguments valid against its schema;
- tool results since the last user text → "Based on <tool>: <result>";
- otherwise → "You said: <user text>".

Faults come from `roost.testing.faults` (a plan on `server.faults`, `POST /_mock/faults`, or
the `X-Mock-Fault` header), played in Anthropic's shapes: `http_500` is an `api_error`,
`http_503` is Anthropic's own overload signal (HTTP 529 `overloaded_error`), `http_429` a
`rate_limit_error` with Retry-After, `malformed_json` a broken body or event,
`truncated_sse` a stream with no `message_stop`, `reset_mid_stream` an aborted connection.

    async with MockAnthropicServer() as server:
        model = AnthropicModel("mock-claude", base_url=server.url)
        server.faults.set(FaultPlan("http_429", count=1))

    python -m roost.testing.mock_anthropic --port 8002 --latency-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec
from aiohttp import web, web_protocol

from roost.testing.faults import FAULT_HEADER, FaultInjector, FaultMode, FaultPlan
from roost.testing.mock_openai import LATENCY_HEADER, MockStats, arguments_for, pick_tool

__all__ = ["MockAnthropicServer"]

DEFAULT_MODEL: Final = "mock-claude"
_JSON: Final = "application/json"
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class _Tool(msgspec.Struct):
    name: str
    description: str = ""
    input_schema: dict[str, Any] = msgspec.field(default_factory=dict)


class _MessageIn(msgspec.Struct):
    role: str
    content: str | list[dict[str, Any]]


class _RequestIn(msgspec.Struct):
    model: str
    messages: list[_MessageIn]
    max_tokens: int
    system: str | list[dict[str, Any]] | None = None
    tools: list[_Tool] | None = None
    stream: bool = False


_decode_request: Final = msgspec.json.Decoder(_RequestIn).decode
_encode: Final = msgspec.json.Encoder().encode


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = _encode({"type": "error", "error": {"type": kind, "message": message}})
    return web.Response(status=status, body=body, content_type=_JSON, headers=headers)


def _tokens(text: str) -> int:
    return len(text.split()) or (1 if text else 0)


class _Answer(msgspec.Struct):
    text: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, Any] | None = None


def _answer(request: _RequestIn) -> _Answer:
    user_text = ""
    results: list[tuple[str, str]] = []  # (tool_use_id, content) since the last user text
    names: dict[str, str] = {}
    for message in request.messages:
        blocks = (
            [{"type": "text", "text": message.content}]
            if isinstance(message.content, str)
            else message.content
        )
        if message.role == "assistant":
            for block in blocks:
                if block.get("type") == "tool_use":
                    names[str(block.get("id"))] = str(block.get("name"))
            continue
        texts = [b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)]
        if texts:
            user_text = " ".join(texts)
            results = []
        for block in blocks:
            if block.get("type") == "tool_result":
                content = block.get("content", "")
                if isinstance(content, list):
                    content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
                results.append((str(block.get("tool_use_id", "")), str(content)))
    if results:
        parts = []
        for tool_use_id, content in results:
            if len(content) > 200:
                content = content[:200] + "…"
            parts.append(f"Based on {names.get(tool_use_id, 'tool')}: {content}")
        return _Answer(text=" ".join(parts))
    if request.tools:
        chosen = request.tools[pick_tool([(t.name, t.description) for t in request.tools], user_text)]
        arguments = arguments_for(chosen.input_schema or {"type": "object"}, user_text)
        return _Answer(tool_name=chosen.name, tool_input=arguments if isinstance(arguments, dict) else {})
    if len(user_text) > 1000:
        user_text = user_text[:1000] + "…"
    return _Answer(text=f"You said: {user_text}")


def _input_tokens(request: _RequestIn) -> int:
    total = 0
    if isinstance(request.system, str):
        total += _tokens(request.system)
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            total += 3 + _tokens(content)
        else:
            total += 3 + sum(_tokens(str(b.get("text") or b.get("content") or "")) for b in content)
    for tool in request.tools or ():
        total += _tokens(tool.name) + _tokens(tool.description)
    return total


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting connections for `MockStats`."""

    def __init__(self, stats: MockStats, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stats = stats

    def connection_made(self, handler: web_protocol.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._stats.open_connections += 1
        self._stats.max_open_connections = max(self._stats.max_open_connections,
                                               self._stats.open_connections)
        self._stats._changed()

    def connection_lost(self, handler: web_protocol.RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._stats.open_connections -= 1
        self._stats._changed()


_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class MockAnthropicServer:
    """The mock Anthropic server, in-process (`async with`) or from the CLI.

        async with MockAnthropicServer(latency_s=0.05) as server:
            server.url                 # "http://127.0.0.1:PORT" (the model's base_url)
            server.faults.set(FaultPlan("http_503", rate=0.3))

    `api_key`, when set, is required in `x-api-key` (else 401 `authentication_error`).
    `token_delay_s` spaces streamed events; `stats.chat_requests` counts message requests.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        token_delay_s: float = 0.0,
        model: str = DEFAULT_MODEL,
        api_key: str | None = None,
        backlog: int = 4096,
        shutdown_timeout_s: float = 1.0,
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
        self.last_request: tuple[dict[str, str], dict[str, Any]] | None = None
        self._runner: web.ServerRunner | None = None
        self._calls = 0
        self._routes: dict[tuple[str, str], _Handler] = {
            ("POST", "/v1/messages"): self._messages,
            ("POST", "/_mock/faults"): self._set_faults,
            ("DELETE", "/_mock/faults"): self._clear_faults,
            ("GET", "/_mock/faults"): self._get_faults,
            ("GET", "/_mock/stats"): self._get_stats,
            ("POST", "/_mock/reset"): self._reset,
        }

    @property
    def url(self) -> str:
        """The server root, e.g. "http://127.0.0.1:8002" — what `AnthropicModel` takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    base_url = url

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("MockAnthropicServer is already started")
        # handler_cancellation: a client that hangs up cancels its handler, so a "timeout"
        # fault does not outlive the connection that asked for it.
        server = _CountingServer(self.stats, self._dispatch, handler_cancellation=True,
                                 access_log=None)
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

    async def __aenter__(self) -> MockAnthropicServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return _error(404, "not_found_error", f"no route {request.method} {request.path}")
        if request.path.startswith("/_mock/"):
            return await handler(request)
        stats = self.stats
        stats.requests_total += 1
        stats.open_requests += 1
        stats.max_open_requests = max(stats.max_open_requests, stats.open_requests)
        try:
            return await handler(request)
        finally:
            stats.open_requests -= 1
            stats._changed()

    def _latency(self, request: web.BaseRequest) -> float:
        override = request.headers.get(LATENCY_HEADER)
        if override is None:
            return self.latency_s
        try:
            return max(0.0, float(override) / 1000.0)
        except ValueError:
            return self.latency_s

    async def _messages(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.chat_requests += 1
        try:
            mode = self.faults.pick(request.headers.get(FAULT_HEADER))
        except ValueError as exc:
            return _error(400, "invalid_request_error", str(exc))
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if "anthropic-version" not in request.headers:
            return _error(400, "invalid_request_error", "anthropic-version header is required")
        body = await request.read()
        try:
            parsed = _decode_request(body)
        except msgspec.DecodeError as exc:
            return _error(400, "invalid_request_error", f"invalid request body: {exc}")
        if not parsed.messages:
            return _error(400, "invalid_request_error", "messages: at least one message is required")
        self.last_request = (dict(request.headers), msgspec.json.decode(body))

        plan = self.faults.plan
        delay = self._latency(request) + (plan.delay_s if mode == "slow_first_token" else 0.0)
        if delay > 0:
            await asyncio.sleep(delay)
        fault = await self._fault_before_answer(request, mode, plan)
        if fault is not None:
            return fault

        answer = _answer(parsed)
        self._calls += 1
        message_id = f"msg_mock_{self._calls:08x}"
        input_tokens = _input_tokens(parsed)
        if answer.tool_name is not None:
            tool_json = _encode(answer.tool_input or {}).decode()
            output_tokens = max(1, len(tool_json) // 4)
            content: list[dict[str, Any]] = [{
                "type": "tool_use", "id": f"toolu_mock_{self._calls:08x}",
                "name": answer.tool_name, "input": answer.tool_input or {},
            }]
            stop_reason = "tool_use"
        else:
            output_tokens = _tokens(answer.text or "")
            content = [{"type": "text", "text": answer.text or ""}]
            stop_reason = "end_turn"
        model = parsed.model or self.model
        if parsed.stream:
            return await self._stream(request, mode, message_id, model, content, stop_reason,
                                      input_tokens, output_tokens)
        payload = _encode({
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        })
        if mode == "malformed_json":
            return web.Response(body=payload[: len(payload) // 2] + b"}{", content_type=_JSON)
        if mode == "truncated_sse":
            return web.Response(body=payload[: len(payload) // 2], content_type=_JSON)
        if mode == "reset_mid_stream":
            response = web.StreamResponse(headers={"Content-Type": _JSON})
            response.content_length = len(payload)
            await response.prepare(request)
            await response.write(payload[: len(payload) // 2])
            _abort(request)
            return response
        return web.Response(body=payload, content_type=_JSON)

    async def _fault_before_answer(self, request: web.BaseRequest, mode: FaultMode,
                                   plan: FaultPlan) -> web.StreamResponse | None:
        if mode == "http_500":
            return _error(500, "api_error", "mock: internal server error")
        if mode == "http_503":
            return _error(529, "overloaded_error", "mock: Overloaded")
        if mode == "http_429":
            value = plan.retry_after_s
            header = str(int(value)) if value == int(value) else f"{value:g}"
            return _error(429, "rate_limit_error", "mock: rate limit reached",
                          headers={"Retry-After": header})
        if mode == "timeout":
            await asyncio.sleep(plan.timeout_s)
            _abort(request)
            return web.Response(status=504)
        return None

    async def _stream(self, request: web.BaseRequest, mode: FaultMode, message_id: str,
                      model: str, content: list[dict[str, Any]], stop_reason: str,
                      input_tokens: int, output_tokens: int) -> web.StreamResponse:
        def event(kind: str, data: dict[str, Any]) -> bytes:
            return b"event: " + kind.encode() + b"\ndata: " + _encode({"type": kind, **data}) + b"\n\n"

        events = [
            event("message_start", {"message": {
                "id": message_id, "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1},
            }}),
            event("ping", {}),
        ]
        block = content[0]
        if block["type"] == "tool_use":
            events.append(event("content_block_start", {"index": 0, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
            arguments = _encode(block["input"]).decode()
            middle = max(1, len(arguments) // 2)
            for fragment in (arguments[:middle], arguments[middle:]):
                events.append(event("content_block_delta", {"index": 0, "delta": {
                    "type": "input_json_delta", "partial_json": fragment}}))
        else:
            events.append(event("content_block_start", {"index": 0, "content_block": {
                "type": "text", "text": ""}}))
            for word in re.findall(r"\s*\S+", block["text"]):
                events.append(event("content_block_delta", {"index": 0, "delta": {
                    "type": "text_delta", "text": word}}))
        events.append(event("content_block_stop", {"index": 0}))
        events.append(event("message_delta", {
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens}}))
        events.append(event("message_stop", {}))

        if mode == "malformed_json":
            events.insert(3, b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, \n\n')
        elif mode in ("truncated_sse", "reset_mid_stream"):
            # Keep the start and some content; drop the end and message_stop.
            events = events[: max(4, len(events) // 2)]

        response = web.StreamResponse(headers=_SSE_HEADERS)
        try:
            await response.prepare(request)
            if self.token_delay_s <= 0:
                await response.write(b"".join(events))
            else:
                for index, item in enumerate(events):
                    if index:
                        await asyncio.sleep(self.token_delay_s)
                    await response.write(item)
            if mode == "reset_mid_stream":
                _abort(request)
                return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client left
        return response

    async def _set_faults(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            plan = FaultPlan.from_dict(msgspec.json.decode(await request.read()))
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return _error(400, "invalid_request_error", f"invalid fault plan: {exc}")
        self.faults.set(plan)
        return web.Response(body=_encode(plan.to_dict()), content_type=_JSON)

    async def _clear_faults(self, request: web.BaseRequest) -> web.StreamResponse:
        self.faults.clear()
        return web.Response(status=204)

    async def _get_faults(self, request: web.BaseRequest) -> web.StreamResponse:
        data = {**self.faults.plan.to_dict(), "remaining": self.faults.remaining}
        return web.Response(body=_encode(data), content_type=_JSON)

    async def _get_stats(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=_encode(self.stats.to_dict(self.faults)), content_type=_JSON)

    async def _reset(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset()
        return web.Response(status=204)

    def reset(self) -> None:
        """Clear the fault plan and the counters."""
        self.faults.clear()
        self.faults.reset_stats()
        self.stats.reset()
        self.last_request = None


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _serve(args: argparse.Namespace) -> None:
    server = MockAnthropicServer(host=args.host, port=args.port,
                                 latency_s=args.latency_ms / 1000.0,
                                 token_delay_s=args.token_delay_ms / 1000.0, model=args.model)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m roost.testing.mock_anthropic",
        description="A mock Anthropic Messages API server (deterministic, injectable faults).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait before the first byte")
    parser.add_argument("--token-delay-ms", type=float, default=0.0, help="wait between events")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name to report")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a default dependency off Windows
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
