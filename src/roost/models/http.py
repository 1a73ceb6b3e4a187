"""`HTTPModel`: the HTTP plumbing every HTTP provider shares.

A provider (`OpenAICompatModel`, `AnthropicModel`) subclasses it and writes only what its API
says differently: the request body, the response shapes, what an error body means.

    class MyModel(HTTPModel):
        def __init__(self, model: str, *, api_key: str) -> None:
            super().__init__(model, base_url="https://example.com/v1", provider="mine",
                             provider_headers={"Authorization": f"Bearer {api_key}"})
            self._url = URL(self.base_url + "/generate")

        def _body(self, request: ModelRequest) -> bytes: ...

        async def stream(self, request):
            loop = asyncio.get_running_loop()
            response = await self._post(request, loop)   # errors already `ModelError`s
            ...

What it holds:

* one pooled `HTTPClient` (`roost.models.transport`, a lean HTTP/1.1 client: aiohttp's took
  about a quarter of a busy server's CPU) per instance, its pool bound to the loop it is first
  used on; `aclose()` releases it and the model stays usable;
* the request's deadline bounds the whole call, reading the answer included, to the
  millisecond;
* the translation of transport failures into `ModelError`s with a `kind` (`_transport_error`):
  a timeout at the deadline is "deadline" (not retryable), one before it "timeout";
  refused, reset or cut-short connections are "connection" (retryable);
* `retry_after` (the `Retry-After` header, seconds or an HTTP date) and `SSEParser`
  (incremental server-sent events).

Everything here sits on the hot path of every model call: no per-call allocation beyond
what a call needs, no indirection a subclass pays for twice.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from yarl import URL

from roost.errors import ModelError
from roost.models.base import ModelRequest
from roost.models.transport import BodyCutShort, HTTPClient, InvalidURL, Response

__all__ = [
    "DEADLINE_SLACK_S",
    "HTTPModel",
    "SSEParser",
    "read_error_body",
    "retry_after",
    "status_kind",
]

# A timeout this close to the deadline is the deadline: nothing left to retry with.
DEADLINE_SLACK_S: Final = 0.005
_BASE_HEADERS: Final = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "roost",
}


class SSEParser:
    """Incremental server-sent-events parser: bytes in, complete `data` payloads out.

        parser = SSEParser()
        parser.feed(b'data: {"a"')      # []: the event is not finished
        parser.feed(b': 1}\\n\\n')        # [b'{"a": 1}']

    A network read may end anywhere — mid-line, mid-event — so the unfinished tail is kept
    for the next feed. Only `data:` fields matter to the model APIs (Anthropic repeats the
    event name inside its data); comments (keep-alive lines starting with ":"), `event:`,
    `id:` and `retry:` are skipped. Lines end in LF or CRLF (no model API uses a bare CR).
    """

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._tail + chunk if self._tail else chunk).split(b"\n")
        self._tail = lines.pop()  # b"" when the chunk ended on a line break
        events: list[bytes] = []
        data = self._data
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        return events

    def flush(self) -> list[bytes]:
        """At end of stream: an event the server did not terminate with a blank line."""
        return self.feed(b"\n\n") if self._tail or self._data else []


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from a `Retry-After` header (seconds or an HTTP date), or None.

        retry_after({"Retry-After": "1.5"})  # 1.5
    """
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return max(0.0, seconds) if math.isfinite(seconds) else None


async def read_error_body(response: Response) -> bytes:
    """The body of an error response, or b"" when it cannot be read."""
    try:
        return await response.read()
    except Exception:  # the status says enough; the body is a courtesy
        return b""


def status_kind(status: int | None) -> str:
    """What an HTTP status means to the wrappers (see `ModelError.kind`); None: a bad body."""
    if status is None:
        return "malformed"
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 408:
        return "timeout"
    if status >= 500:
        return "overloaded"
    return "bad_request"


class HTTPModel:
    """Base of the HTTP providers: session per loop, deadline → timeout, error translation.

    Subclasses set `_url` and implement `_body(request) -> bytes`; `_post` sends it. Errors
    built with `_error` without a `kind` take the one their status implies (`status_kind`).
    """

    #: The `kind` of an invalid URL and of an unexpected exception; None: `status_kind(None)`.
    #: Per provider because each has always reported its own.
    _INVALID_URL_KIND: ClassVar[str | None] = None
    _UNEXPECTED_KIND: ClassVar[str | None] = None

    _url: URL

    def __init__(
        self,
        model: str,
        *,
        base_url: str,
        provider: str,
        provider_headers: Mapping[str, str],
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        headers: dict[str, str] | None,
        settings: dict[str, Any] | None,
    ) -> None:
        self.model = model
        self.provider = provider
        self.name = f"{provider}:{model}"
        self.base_url = base_url.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.settings: dict[str, Any] = dict(settings or {})
        self._headers: dict[str, str] = {**_BASE_HEADERS, **provider_headers, **(headers or {})}
        # Without a deadline a call is bounded by the connect and per-read timeouts only;
        # waiting for a free connection in the pool as long as a read may take.
        self._client = HTTPClient(
            headers=self._headers,
            max_connections=max_connections,
            keepalive_timeout_s=30.0,
            connect_timeout_s=connect_timeout_s,
            read_timeout_s=read_timeout_s,
            pool_timeout_s=read_timeout_s,
        )

    def _body(self, request: ModelRequest) -> bytes:
        raise NotImplementedError

    # --- connections ----------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pooled connections. The model can be used again."""
        await self._client.aclose()

    # --- one call --------------------------------------------------------------------------

    async def _post(self, request: ModelRequest, loop: asyncio.AbstractEventLoop) -> Response:
        """POST `_body(request)` to `_url` under the request's deadline, trace headers and
        all; any failure before a response arrives is a `ModelError`."""
        deadline = request.deadline
        if deadline is not None and deadline <= loop.time():
            raise self._error(
                "deadline passed before the call started", retryable=False, kind="deadline"
            )
        metadata = request.metadata
        headers: dict[str, str] | None = None
        if metadata and "traceparent" in metadata:
            headers = {"traceparent": metadata["traceparent"]}
            if "tracestate" in metadata:
                headers["tracestate"] = metadata["tracestate"]
        if request.stream:
            headers = {**(headers or {}), "Accept": "text/event-stream"}
        try:
            return await self._client.post(
                self._url, self._body(request), headers=headers, deadline=deadline
            )
        except RuntimeError as exc:  # the pool belongs to another, still running, loop
            raise ModelError(f"{self.name}: {exc}", provider=self.provider) from exc
        except Exception as exc:
            raise self._transport_error(exc, request, loop) from exc

    # --- errors ----------------------------------------------------------------------------

    def _error(
        self,
        message: str,
        *,
        retryable: bool,
        kind: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> ModelError:
        return ModelError(
            f"{self.name}: {message}",
            status_code=status_code,
            retryable=retryable,
            retry_after=retry_after,
            provider=self.provider,
            kind=kind or status_kind(status_code),
        )

    def _transport_error(
        self, exc: BaseException, request: ModelRequest, loop: asyncio.AbstractEventLoop
    ) -> ModelError:
        """`exc`, raised while sending or reading, as a `ModelError` (one passes through)."""
        if isinstance(exc, ModelError):
            return exc
        if isinstance(exc, TimeoutError):
            deadline = request.deadline
            if deadline is not None and loop.time() >= deadline - DEADLINE_SLACK_S:
                return self._error("deadline exceeded", retryable=False, kind="deadline")
            return self._error(f"timed out ({type(exc).__name__})", retryable=True, kind="timeout")
        if isinstance(exc, InvalidURL):
            return self._error(
                f"invalid URL {self._url}", retryable=False, kind=self._INVALID_URL_KIND
            )
        if isinstance(exc, BodyCutShort):
            return self._error(
                f"response body cut short: {exc}", retryable=True, kind="connection"
            )
        if isinstance(exc, OSError):
            return self._error(
                f"connection failed: {type(exc).__name__}: {exc}",
                retryable=True,
                kind="connection",
            )
        return self._error(
            f"unexpected {type(exc).__name__}: {exc}", retryable=False, kind=self._UNEXPECTED_KIND
        )
