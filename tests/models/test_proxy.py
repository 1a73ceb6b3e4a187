"""Model calls through an outbound proxy (HTTPS_PROXY / HTTP_PROXY / NO_PROXY): a CONNECT
tunnel to a real server on loopback, through a small real proxy here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from roost.models.proxy import Proxy, ProxyError, proxy_for
from roost.models.transport import HTTPClient, TransportError


class ConnectProxy:
    """A CONNECT-only proxy: records each request line, pipes bytes both ways."""

    def __init__(self, require_auth: str | None = None) -> None:
        self.requests: list[str] = []
        self.require_auth = require_auth
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        line, *headers = head.split("\r\n")
        self.requests.append(line)
        if self.require_auth and f"Proxy-Authorization: {self.require_auth}" not in headers:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, _, port = line.split()[1].rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        async with asyncio.TaskGroup() as group:
            group.create_task(pipe(reader, up_writer))
            group.create_task(pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def running(proxy: ConnectProxy) -> AsyncIterator[int]:
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def upstream() -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=b"echo:" + await request.read())

    app = web.Application()
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def call(client: HTTPClient, url: str) -> bytes:
    response = await client.post(url, b"hello")
    async with response:
        return await response.read()


async def test_a_call_goes_through_the_proxys_connect_tunnel() -> None:
    proxy = ConnectProxy()
    async with upstream() as port, running(proxy) as proxy_port:
        client = HTTPClient(proxies={"http": f"http://127.0.0.1:{proxy_port}"})
        try:
            assert await call(client, f"http://127.0.0.1:{port}/echo") == b"echo:hello"
            assert await call(client, f"http://127.0.0.1:{port}/echo") == b"echo:hello"
        finally:
            await client.aclose()
    assert proxy.requests == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]  # pooled: one tunnel


async def test_no_proxy_goes_direct() -> None:
    proxy = ConnectProxy()
    async with upstream() as port, running(proxy) as proxy_port:
        client = HTTPClient(proxies={"http": f"http://127.0.0.1:{proxy_port}",
                                     "no": "localhost,127.0.0.1"})
        try:
            assert await call(client, f"http://127.0.0.1:{port}/echo") == b"echo:hello"
        finally:
            await client.aclose()
    assert proxy.requests == []


async def test_proxy_credentials_and_a_refusal() -> None:
    proxy = ConnectProxy(require_auth="Basic dXNlcjpwYXNz")  # user:pass
    async with upstream() as port, running(proxy) as proxy_port:
        good = HTTPClient(proxies={"http": f"http://user:pass@127.0.0.1:{proxy_port}"})
        bad = HTTPClient(proxies={"http": f"http://127.0.0.1:{proxy_port}"})
        try:
            assert await call(good, f"http://127.0.0.1:{port}/echo") == b"echo:hello"
            with pytest.raises(TransportError, match="407"):
                await call(bad, f"http://127.0.0.1:{port}/echo")
        finally:
            await good.aclose()
            await bad.aclose()


def test_proxy_for_reads_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY",
                 "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https", "api.openai.com", 443) is None
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", ".internal,localhost")
    assert proxy_for("https", "api.openai.com", 443) == Proxy("proxy.corp", 3128)
    assert proxy_for("https", "vllm.internal", 443) is None
    assert proxy_for("http", "api.openai.com", 80) is None  # only HTTPS_PROXY is set


def test_an_unreachable_proxy_is_a_proxy_error() -> None:
    assert issubclass(ProxyError, ConnectionError)
