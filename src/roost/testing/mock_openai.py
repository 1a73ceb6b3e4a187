"""A mock OpenAI-compatible server: deterministic answers, injectable faults, no GPU.

It speaks enough of the OpenAI HTTP API for Roost's provider, the OpenAI SDKs and load
generators: `POST /v1/chat/completions` (streamed or not, with tool calls), `POST
/v1/embeddings`, `GET /v1/models`. Answers are a pure function of the request:

- tools offered, and no tool result since the last user message → ONE call to the tool whose
  name and description best match the user's words (else the first tool), with arguments
  generated from its JSON schema (`arguments_for`);
- tool results since the last user message → "Based on <tool>: <result>";
- otherwise → "You said: <user text>".

Control endpoints drive tests and benchmarks: `POST /_mock/faults` (a `FaultPlan` as JSON),
`DELETE /_mock/faults`, `GET /_mock/stats`, `POST /_mock/reset`. Per-request headers:
`X-Mock-Fault: <mode>` and `X-Mock-Latency-Ms: <ms>`.

In a test:

    async with MockOpenAIServer() as server:
        model = OpenAICompatModel("mock-gpt", base_url=server.base_url)
        server.faults.set(FaultPlan("http_503", count=1))

From a shell (uvloop when available):

    python -m roost.testing.mock_openai --port 8001 --latency-ms 50

It must hold 10,000 open connections in the C10K benchmark, so it sits on aiohttp's low-level
server (no router, no middlewares, no access log) and does O(request size) work per request.
The server scaffolding it shares with the Anthropic mock (lifecycle, stats, control
endpoints, fault playing, CLI) is `roost.testing.mock_server.MockServer`.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
import time
import zlib
from typing import Any, ClassVar, Final

import msgspec

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("roost.testing's mock servers need aiohttp: "
                      "pip install 'roost[testing]'") from exc

from roost.testing.faults import FAULT_HEADER, FaultMode
from roost.testing.mock_server import (
    JSON,
    LATENCY_HEADER,
    CountingServer,
    MockServer,
    MockStats,
    run_cli,
)

__all__ = [
    "LATENCY_HEADER",
    "CountingServer",
    "MockOpenAIServer",
    "MockStats",
    "arguments_for",
    "embed",
    "pick_tool",
]

DEFAULT_MODEL: Final = "mock-gpt"
DEFAULT_EMBEDDING_MODEL: Final = "mock-embedding"

# --- request shapes ----------------------------------------------------------------------
# Lenient where real clients differ (content as parts, arguments as objects); strict enough
# that a malformed request gets a 400 rather than an exception inside the server.


class _FunctionCall(msgspec.Struct):
    name: str = ""
    arguments: str | dict[str, Any] = ""


class _ToolCallIn(msgspec.Struct):
    id: str = ""
    type: str = "function"
    function: _FunctionCall = msgspec.field(default_factory=_FunctionCall)


class _MessageIn(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _FunctionSpec(msgspec.Struct):
    name: str
    description: str = ""
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class _ToolIn(msgspec.Struct):
    function: _FunctionSpec
    type: str = "function"


class _StreamOptions(msgspec.Struct):
    include_usage: bool = False


class _ChatIn(msgspec.Struct):
    messages: list[_MessageIn]
    model: str = ""
    tools: list[_ToolIn] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None


class _EmbeddingsIn(msgspec.Struct):
    input: str | list[str]
    model: str = ""
    dimensions: int | None = None
    encoding_format: str = "float"


_chat_decoder: Final = msgspec.json.Decoder(_ChatIn)
_embeddings_decoder: Final = msgspec.json.Decoder(_EmbeddingsIn)
_encode: Final = msgspec.json.Encoder().encode


# --- the deterministic "model" -------------------------------------------------------------

_WORD_RE: Final = re.compile(r"[A-Za-z0-9]+")
_NUMBER_RE: Final = re.compile(r"-?\d+(?:\.\d+)?")
_CAPITALIZED_RE: Final = re.compile(r"(?<![\w'])([A-Z][a-zA-Z]+)")
_SENTENCE_START_RE: Final = re.compile(r"(?:^|[.!?]\s+)\s*[\"'(]*([A-Z][a-zA-Z]*)")
_STOPWORDS: Final = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from",
        "get", "how", "i", "in", "is", "it", "me", "my", "of", "on", "or", "please", "show",
        "tell", "that", "the", "this", "to", "use", "what", "whats", "when", "where", "which",
        "who", "why", "will", "with", "you", "your",
    }
)  # fmt: skip
# Depth bound for nested / recursive ($ref) schemas: deeper levels get their minimal value.
_MAX_SCHEMA_DEPTH: Final = 8


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD_RE.findall(text)]


def _content_text(content: str | list[Any] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # OpenAI content parts: [{"type": "text", "text": "..."}, {"type": "image_url", ...}]
    return " ".join(
        part["text"]
        for part in content
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def pick_tool(tools: list[tuple[str, str]], text: str) -> int:
    """Index of the (name, description) that best matches `text`; 0 when nothing matches.

    A word of the user's text found in the tool's name counts twice, in its description once;
    common words count for nothing. Ties go to the earlier tool.
    """
    wanted = {w for w in _words(text) if w not in _STOPWORDS}
    best, best_score = 0, 0
    for index, (name, description) in enumerate(tools):
        name_words = set(_words(name.replace("_", " ")))
        score = 2 * len(wanted & name_words) + len(wanted & set(_words(description)))
        if score > best_score:
            best, best_score = index, score
    return best


def _string_from(text: str) -> str:
    """A capitalized word that does not merely start a sentence (a name: "Paris"), else the text."""
    starts = {m.start(1) for m in _SENTENCE_START_RE.finditer(text)}
    for match in _CAPITALIZED_RE.finditer(text):
        if match.start(1) not in starts:
            return match.group(1)
    return text.strip() or "text"


def arguments_for(schema: dict[str, Any], text: str) -> Any:
    """A value valid against JSON `schema`, taken from the user's `text` where it can be.

    Objects get their required properties only (recursively); strings a capitalized word
    of the text, else the text; numbers the first number in the text, else 1 (clamped to
    minimum/maximum); booleans true; enums and consts their first value; arrays one item.
    Local `$ref`s (`#/$defs/...`, `#/definitions/...`) are followed.

        >>> arguments_for({"type": "object", "required": ["city"],
        ...                "properties": {"city": {"type": "string"}}}, "Weather in Paris?")
        {'city': 'Paris'}
    """
    return _value_for(schema, schema, text, 0)


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    if not ref.startswith("#/"):
        return {}
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node if isinstance(node, dict) else {}


def _schema_type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _value_for(schema: Any, root: dict[str, Any], text: str, depth: int) -> Any:
    if not isinstance(schema, dict):
        return text  # `true` / `{}`-like schemas accept anything
    if "$ref" in schema:
        if depth >= 2 * _MAX_SCHEMA_DEPTH:
            return {}  # a chain of refs that never reaches a type
        return _value_for(_resolve(schema["$ref"], root), root, text, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return _value_for((non_null or options)[0], root, text, depth + 1)
    kind = _schema_type(schema)
    if kind == "object":
        if depth >= _MAX_SCHEMA_DEPTH:
            return {}
        properties = schema.get("properties") or {}
        required = schema.get("required") or []
        return {
            name: _value_for(properties.get(name, {}), root, text, depth + 1)
            for name in required
            if isinstance(name, str)
        }
    if kind == "array":
        if depth >= _MAX_SCHEMA_DEPTH or schema.get("maxItems") == 0:
            return []
        item = _value_for(schema.get("items", {}), root, text, depth + 1)
        return [item] * max(1, int(schema.get("minItems", 1)))
    if kind in ("number", "integer"):
        return _number_for(schema, kind, text)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _text_for(schema, text)


def _number_for(schema: dict[str, Any], kind: str, text: str) -> int | float:
    match = _NUMBER_RE.search(text)
    value = float(match.group()) if match else 1.0
    if kind == "integer":
        value = float(int(value))
    # Exclusive bounds step inside by 1 for integers, by half a unit for numbers.
    step = 1.0 if kind == "integer" else 0.5
    bounds = {
        key: value if isinstance(value, int | float) and not isinstance(value, bool) else None
        for key in _BOUND_KEYS
        for value in (schema.get(key),)
    }
    low, high = bounds["minimum"], bounds["maximum"]
    low_ex, high_ex = bounds["exclusiveMinimum"], bounds["exclusiveMaximum"]
    if low is not None and value < low:
        value = float(low)
    if low_ex is not None and value <= low_ex:
        value = float(low_ex) + step
    if high is not None and value > high:
        value = float(high)
    if high_ex is not None and value >= high_ex:
        value = float(high_ex) - step
    return int(value) if kind == "integer" else value


_BOUND_KEYS: Final = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


_FORMAT_EXAMPLES: Final = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _text_for(schema: dict[str, Any], text: str) -> str:
    value = _FORMAT_EXAMPLES.get(schema.get("format", ""), "") or _string_from(text)
    min_length, max_length = schema.get("minLength"), schema.get("maxLength")
    if isinstance(max_length, int) and len(value) > max_length:
        value = value[:max_length]
    if isinstance(min_length, int) and len(value) < min_length:
        value = value + "x" * (min_length - len(value))
    return value


def embed(text: str, dimensions: int = 64) -> list[float]:
    """A deterministic unit vector for `text`: its words hashed into signed buckets.

    Texts sharing words share buckets, so cosine similarity tracks word overlap; common words
    ("the", "on", ...) are left out unless there is nothing else, so they do not make unrelated
    texts look alike. Stable across processes (crc32, not `hash()`).
    """
    vector = [0.0] * dimensions
    words = _words(text)
    content = [w for w in words if w not in _STOPWORDS]
    for word in content or words:
        h = zlib.crc32(word.encode())
        vector[h % dimensions] += 1.0 if (h >> 31) & 1 else -1.0
    norm = sum(v * v for v in vector) ** 0.5
    if norm == 0.0:
        vector[0] = 1.0  # empty text: still a unit vector, as real providers return
        return vector
    return [v / norm for v in vector]


def _count_tokens(text: str) -> int:
    # Roughly a token per word, as good as a mock needs; never 0 for non-empty text.
    return len(text.split()) or (1 if text else 0)


class _Answer(msgspec.Struct):
    text: str | None = None
    tool_name: str | None = None
    tool_arguments: str | None = None

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_name is not None else "stop"


def _answer(chat: _ChatIn) -> _Answer:
    messages = chat.messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    user_text = _content_text(messages[last_user].content) if last_user >= 0 else ""
    tool_results = [m for m in messages[last_user + 1 :] if m.role == "tool"]
    if tool_results:
        names: dict[str, str] = {}
        for message in messages:
            for call in message.tool_calls or ():
                names[call.id] = call.function.name
        parts = []
        for result in tool_results:
            name = result.name or names.get(result.tool_call_id or "", "") or "tool"
            content = _content_text(result.content)
            if len(content) > 200:
                content = content[:200] + "…"
            parts.append(f"Based on {name}: {content}")
        return _Answer(text=" ".join(parts))
    if chat.tools:
        functions = [tool.function for tool in chat.tools]
        chosen = functions[pick_tool([(f.name, f.description) for f in functions], user_text)]
        arguments = arguments_for(chosen.parameters or {"type": "object"}, user_text)
        return _Answer(tool_name=chosen.name, tool_arguments=_encode(arguments).decode())
    if len(user_text) > 1000:
        user_text = user_text[:1000] + "…"
    return _Answer(text=f"You said: {user_text}")


def _prompt_tokens(chat: _ChatIn) -> int:
    total = 0
    for message in chat.messages:
        total += 3 + _count_tokens(_content_text(message.content))  # 3: role framing
    for tool in chat.tools or ():
        total += _count_tokens(tool.function.name) + _count_tokens(tool.function.description)
    return total


# --- the server ----------------------------------------------------------------------------

def _error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = _encode({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return web.Response(status=status, body=body, content_type=JSON, headers=headers)


def _context_overflow(window: int, tokens: int) -> web.Response:
    # OpenAI's own wording and code, which clients match on.
    message = (
        f"This model's maximum context length is {window} tokens. However, your messages "
        f"resulted in {tokens} tokens. Please reduce the length of the messages."
    )
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    return web.Response(status=400, body=_encode(body), content_type=JSON)


class MockOpenAIServer(MockServer):
    """The mock OpenAI-compatible server, in-process (`async with`) or from the CLI.

        async with MockOpenAIServer(latency_s=0.05) as server:
            server.base_url          # "http://127.0.0.1:PORT/v1"
            server.faults.set(FaultPlan("http_429", count=1))
            await server.stats.wait_for(lambda s: s.open_requests == 0)  # under a timeout

    `latency_s` is the wait before the first byte of every answer; `token_delay_s` the wait
    between streamed chunks (0: the whole stream is written at once). With `context_window`
    set, a prompt of more (rough) tokens gets OpenAI's 400 `context_length_exceeded`. With
    `api_key` set, model endpoints answer 401 unless sent `Authorization: Bearer <api_key>`.
    """

    _FAULT_ERRORS: ClassVar = {
        "http_500": (500, "server_error", "mock: internal server error"),
        "http_503": (503, "server_error", "mock: the engine is currently overloaded"),
        "http_429": (429, "rate_limit_exceeded", "mock: rate limit reached"),
    }

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency_s: float = 0.0,
        token_delay_s: float = 0.0,
        model: str = DEFAULT_MODEL,
        embedding_dimensions: int = 64,
        backlog: int = 4096,
        shutdown_timeout_s: float = 1.0,
        context_window: int | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(
            host=host,
            port=port,
            latency_s=latency_s,
            token_delay_s=token_delay_s,
            model=model,
            api_key=api_key,
            backlog=backlog,
            shutdown_timeout_s=shutdown_timeout_s,
        )
        self.embedding_dimensions = embedding_dimensions
        self.context_window = context_window
        for prefix in ("/v1", ""):
            self._routes["POST", prefix + "/chat/completions"] = self._chat
            self._routes["POST", prefix + "/embeddings"] = self._embeddings
            self._routes["GET", prefix + "/models"] = self._models

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`: the root plus "/v1"."""
        return self.url + "/v1"

    # what differs from the other mocks

    def _error_response(
        self, status: int, kind: str, message: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        return _error(status, message, kind, headers)

    def _no_route(self, request: web.BaseRequest) -> web.Response:
        if any(path == request.path for _, path in self._routes):
            return _error(405, f"{request.method} not allowed", "invalid_request_error")
        return _error(404, f"no route {request.path}", "invalid_request_error")

    def _deny(self, request: web.BaseRequest) -> web.Response | None:
        if self.api_key is not None and request.headers.get("Authorization") != (
            f"Bearer {self.api_key}"
        ):
            return _error(401, "mock: invalid API key", "invalid_request_error")
        return None

    # model endpoints

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.chat_requests += 1
        try:
            mode = self.faults.pick(request.headers.get(FAULT_HEADER))
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error")
        body = await request.read()
        try:
            chat = _chat_decoder.decode(body)
        except msgspec.DecodeError as exc:
            return _error(400, f"invalid request body: {exc}", "invalid_request_error")
        if not chat.messages:
            return _error(400, "messages must not be empty", "invalid_request_error")
        self._last_raw = (request.headers, body)

        fault = await self._before_answer(request, mode)
        if fault is not None:
            return fault

        prompt_tokens = _prompt_tokens(chat)
        if self.context_window is not None and prompt_tokens > self.context_window:
            return _context_overflow(self.context_window, prompt_tokens)
        answer = _answer(chat)
        self._calls += 1
        completion_tokens = (
            _count_tokens(answer.text or "")
            if answer.tool_arguments is None
            else max(1, len(answer.tool_arguments) // 4)  # JSON runs ~4 characters a token
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        completion_id = f"chatcmpl-mock-{self._calls}"
        model = chat.model or self.model
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            return await self._stream(
                request, mode, completion_id, model, answer, usage if include_usage else None
            )
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.tool_name is not None:
            message["tool_calls"] = [
                {
                    "id": f"call_{self._calls:08x}",
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": answer.tool_arguments},
                }
            ]
        payload = _encode(
            {
                "id": completion_id,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": answer.finish_reason}
                ],
                "usage": usage,
            }
        )
        return await self._json_answer(request, mode, payload)

    async def _stream(
        self,
        request: web.BaseRequest,
        mode: FaultMode,
        completion_id: str,
        model: str,
        answer: _Answer,
        usage: dict[str, int] | None,
    ) -> web.StreamResponse:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return (
                b"data: "
                + _encode(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                    }
                )
                + b"\n\n"
            )

        events = [chunk({"role": "assistant", "content": ""})]
        if answer.tool_name is not None:
            arguments = answer.tool_arguments or "{}"
            middle = max(1, len(arguments) // 2)
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": f"call_{self._calls:08x}",
                                "type": "function",
                                "function": {"name": answer.tool_name, "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for fragment in (arguments[:middle], arguments[middle:]):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
                )
        else:
            # Word chunks that keep their leading space, as real tokenizers do.
            for word in re.findall(r"\s*\S+", answer.text or ""):
                events.append(chunk({"content": word}))
        events.append(chunk({}, answer.finish_reason))
        if usage is not None:
            events.append(
                b"data: "
                + _encode(
                    {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
                + b"\n\n"
            )
        events.append(b"data: [DONE]\n\n")

        if mode == "malformed_json":
            events.insert(2, b'data: {"id": "broken", "choices": [\n\n')
        elif mode in ("truncated_sse", "reset_mid_stream"):
            # Keep the role chunk and some content; drop the finish and [DONE].
            events = events[: max(2, (len(events) - 3) // 2 + 1)]

        return await self._write_stream(request, mode, events)

    async def _embeddings(self, request: web.BaseRequest) -> web.StreamResponse:
        self.stats.embedding_requests += 1
        try:
            body = _embeddings_decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(400, f"invalid request body: {exc}", "invalid_request_error")
        dimensions = self.embedding_dimensions if body.dimensions is None else body.dimensions
        if not 1 <= dimensions <= 4096:
            return _error(400, "dimensions must be within [1, 4096]", "invalid_request_error")
        if body.encoding_format not in ("float", "base64"):
            return _error(400, "encoding_format must be float or base64", "invalid_request_error")
        delay = self._latency(request)
        if delay > 0:
            await asyncio.sleep(delay)
        inputs = [body.input] if isinstance(body.input, str) else body.input
        data = []
        tokens = 0
        for index, text in enumerate(inputs):
            vector = embed(text, dimensions)
            tokens += _count_tokens(text)
            value: list[float] | str = vector
            if body.encoding_format == "base64":
                value = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": value})
        payload = {
            "object": "list",
            "data": data,
            "model": body.model or DEFAULT_EMBEDDING_MODEL,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=_encode(payload), content_type=JSON)

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "roost-mock"}
            for name in (self.model, DEFAULT_EMBEDDING_MODEL)
        ]
        return web.Response(body=_encode({"object": "list", "data": data}), content_type=JSON)


# --- CLI -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    run_cli(
        argv,
        prog="python -m roost.testing.mock_openai",
        description="A mock OpenAI-compatible server (deterministic answers, injectable faults).",
        port=8001,
        model=DEFAULT_MODEL,
        between="chunks",
        backlog=True,
        make_server=lambda args: MockOpenAIServer(
            host=args.host,
            port=args.port,
            latency_s=args.latency_ms / 1000.0,
            token_delay_s=args.token_delay_ms / 1000.0,
            model=args.model,
            backlog=args.backlog,
        ),
    )


if __name__ == "__main__":
    main()
