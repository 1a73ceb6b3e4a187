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

What it shares with the OpenAI mock (lifecycle, stats, control endpoints, fault playing,
CLI) is `roost.testing.mock_server.MockServer`.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

import msgspec

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("roost.testing's mock servers need aiohttp: "
                      "pip install 'roost[testing]'") from exc

from roost.testing.faults import FAULT_HEADER, FaultMode
from roost.testing.mock_openai import arguments_for, pick_tool
from roost.testing.mock_server import JSON, MockServer, run_cli

__all__ = ["MockAnthropicServer"]

DEFAULT_MODEL: Final = "mock-claude"


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
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


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


class MockAnthropicServer(MockServer):
    """The mock Anthropic server, in-process (`async with`) or from the CLI.

        async with MockAnthropicServer(latency_s=0.05) as server:
            server.url                 # "http://127.0.0.1:PORT" (the model's base_url)
            server.faults.set(FaultPlan("http_503", rate=0.3))

    `api_key`, when set, is required in `x-api-key` (else 401 `authentication_error`).
    `token_delay_s` spaces streamed events; `stats.chat_requests` counts message requests.
    """

    _FAULT_ERRORS: ClassVar = {
        "http_500": (500, "api_error", "mock: internal server error"),
        # Anthropic's own overload signal, not a 503.
        "http_503": (529, "overloaded_error", "mock: Overloaded"),
        "http_429": (429, "rate_limit_error", "mock: rate limit reached"),
    }

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
        super().__init__(
            host=host, port=port, latency_s=latency_s, token_delay_s=token_delay_s,
            model=model, api_key=api_key, backlog=backlog, shutdown_timeout_s=shutdown_timeout_s,
        )
        self._routes["POST", "/v1/messages"] = self._messages

    @property
    def base_url(self) -> str:
        """The server root, e.g. "http://127.0.0.1:8002" — what `AnthropicModel` takes."""
        return self.url

    def _error_response(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return _error(status, kind, message, headers)

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
        self._last_raw = (request.headers, body)

        fault = await self._before_answer(request, mode)
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
        return await self._json_answer(request, mode, payload)

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

        return await self._write_stream(request, mode, events)


def main(argv: list[str] | None = None) -> None:
    run_cli(
        argv,
        prog="python -m roost.testing.mock_anthropic",
        description="A mock Anthropic Messages API server (deterministic, injectable faults).",
        port=8002,
        model=DEFAULT_MODEL,
        between="events",
        make_server=lambda args: MockAnthropicServer(
            host=args.host, port=args.port, latency_s=args.latency_ms / 1000.0,
            token_delay_s=args.token_delay_ms / 1000.0, model=args.model,
        ),
    )


if __name__ == "__main__":
    main()
