"""`HTTPClient` against real servers on loopback: aiohttp.web for well-behaved ones, raw
`asyncio.start_server` handlers for servers that stall, cut bodies short or break the protocol.
A selection runs again on uvloop, the loop Roost's server runs on."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web

from roost.models.http import retry_after
from roost.models.transport import (
    BodyCutShort,
    HTTPClient,
    InvalidHeader,
    InvalidURL,
    Response,
    TransportError,
)

BIG = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB


# --- servers -------------------------------------------------------------------------------


class App:
    """Well-behaved endpoints, and what the server saw of the calls."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.order: list[bytes] = []

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        return web.json_response(
            {
                "headers": list(request.headers.items()),
                "length": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "peer": peer[1] if peer else None,
            }
        )

    async def slow(self, request: web.Request) -> web.Response:
        self.order.append(await request.read())
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(float(request.query["ms"]) / 1000)
        finally:
            self.running -= 1
        return web.Response(text="done")

    async def sse(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for n in range(3):
            await response.write(b'data: {"n": %d}\n\n' % n)
            await asyncio.sleep(0.03)
        await response.write_eof()
        return response

    async def big(self, request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def close(self, request: web.Request) -> web.Response:
        response = web.Response(text="bye")
        response.force_close()
        return response

    async def limited(self, request: web.Request) -> web.Response:
        return web.Response(status=429, text="slow down", headers={"Retry-After": "3"})


@asynccontextmanager
async def web_server(
    app: App | None = None, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    """An aiohttp.web server for `app`; yields its base URL."""
    app = app or App()
    web_app = web.Application()
    for name in ("echo", "slow", "sse", "big", "close", "limited"):
        web_app.router.add_post(f"/{name}", getattr(app, name))
    runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A server running `handler` on each connection (closed after it); yields a URL."""
    tasks: set[asyncio.Task[Any]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/x"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert match is not None
    return await reader.readexactly(int(match[1]))


async def json_body(response: Response) -> Any:
    return msgspec.json.decode(await response.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- pooling -------------------------------------------------------------------------------


async def test_sequential_calls_reuse_one_connection() -> None:
    async with web_server() as base, HTTPClient() as client:
        peers = set()
        for _ in range(3):
            response = await client.post(f"{base}/echo", b"{}")
            assert response.status == 200
            peers.add((await json_body(response))["peer"])
            response.release()
        assert len(peers) == 1
        stats = client.statistics()
        assert (stats.connects_total, stats.reuses_total) == (1, 2)
        assert (stats.open, stats.idle, stats.in_use, stats.waiters) == (1, 1, 0, 0)


async def test_pool_limit_queues_calls_in_order() -> None:
    app = App()
    async with web_server(app) as base, HTTPClient(max_connections=2) as client:

        async def call(n: int) -> bytes:
            response = await client.post(f"{base}/slow?ms=60", b"%d" % n)
            async with response:
                return await response.read()

        calls = [asyncio.create_task(call(n)) for n in range(5)]
        await asyncio.sleep(0.03)
        stats = client.statistics()
        assert (stats.open, stats.in_use, stats.waiters) == (2, 2, 3)
        assert await asyncio.gather(*calls) == [b"done"] * 5
        assert app.max_running == 2
        assert set(app.order[:2]) == {b"0", b"1"} and app.order[4] == b"4"
        stats = client.statistics()
        assert (stats.connects_total, stats.reuses_total, stats.idle) == (2, 3, 2)


async def test_waiting_for_a_slot_is_bounded_by_the_pool_timeout() -> None:
    async with web_server() as base, HTTPClient(max_connections=1, pool_timeout_s=0.1) as client:
        holder = await client.post(f"{base}/echo", b"{}")  # holds the only slot, unreleased
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError, match="no free connection"):
            await client.post(f"{base}/echo", b"{}")
        assert 0.09 <= loop.time() - started < 0.5
        assert client.statistics().waiters == 0
        holder.release()
        response = await client.post(f"{base}/echo", b"{}")
        response.release()
        assert client.statistics().connects_total == 1


async def test_the_pool_timeout_defaults_to_the_connect_timeout_and_the_deadline_bounds_it() -> None:
    async with web_server() as base, HTTPClient(max_connections=1, connect_timeout_s=0.1,
                                                pool_timeout_s=None) as client:
        holder = await client.post(f"{base}/echo", b"{}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError, match="no free connection"):
            await client.post(f"{base}/echo", b"{}")
        assert 0.09 <= loop.time() - started < 0.5
        started = loop.time()
        client.pool_timeout_s = 30.0
        with pytest.raises(TimeoutError):
            await client.post(f"{base}/echo", b"{}", deadline=loop.time() + 0.1)
        assert loop.time() - started < 0.5
        holder.release()


async def test_a_closed_connection_passes_its_slot_to_the_first_waiter() -> None:
    async with web_server() as base, HTTPClient(max_connections=1) as client:
        holder = await client.post(f"{base}/sse", b"")  # its body takes ~90 ms
        waiting = asyncio.create_task(client.post(f"{base}/echo", b"{}"))
        await asyncio.sleep(0.01)
        holder.close()  # body unread: the connection is dropped, its slot goes to `waiting`
        response = await waiting
        response.release()
        stats = client.statistics()
        assert (stats.connects_total, stats.open, stats.idle) == (2, 1, 1)


async def test_one_limit_across_origins() -> None:
    async with web_server() as one, web_server() as two, HTTPClient(max_connections=1) as client:
        response = await client.post(f"{one}/echo", b"{}")
        response.release()
        response = await client.post(f"{two}/echo", b"{}")  # closes the idle one to connect
        assert client.statistics().open == 1

        waiting = asyncio.create_task(client.post(f"{one}/echo", b"{}"))
        await asyncio.sleep(0.01)
        response.release()  # a connection to `two` is no use to `waiting`: its slot is
        response = await waiting
        response.release()
        stats = client.statistics()
        assert (stats.connects_total, stats.reuses_total, stats.open) == (3, 0, 1)


async def test_connection_close_from_the_server_is_not_reused() -> None:
    async with web_server() as base, HTTPClient() as client:
        for _ in range(2):
            response = await client.post(f"{base}/close", b"")
            assert await response.read() == b"bye"
            response.release()
            assert client.statistics().open == 0
        stats = client.statistics()
        assert (stats.connects_total, stats.reuses_total) == (2, 0)


async def test_idle_connections_expire() -> None:
    async with web_server() as base, HTTPClient(keepalive_timeout_s=0.05) as client:
        response = await client.post(f"{base}/echo", b"{}")
        response.release()
        assert client.statistics().idle == 1
        await asyncio.sleep(0.12)
        assert client.statistics().open == 0


async def test_aclose_closes_connections_and_the_client_reopens() -> None:
    async with web_server() as base:
        client = HTTPClient()
        response = await client.post(f"{base}/echo", b"{}")
        response.release()
        await client.aclose()
        assert client.statistics().open == 0
        response = await client.post(f"{base}/echo", b"{}")
        response.release()
        assert client.statistics().connects_total == 1  # a new pool
        await client.aclose()


async def test_aclose_fails_the_calls_in_flight() -> None:
    async with web_server() as base, HTTPClient(max_connections=1) as client:
        reading = await client.post(f"{base}/sse", b"")
        waiting = asyncio.create_task(client.post(f"{base}/echo", b"{}"))
        await asyncio.sleep(0.01)
        await client.aclose()
        with pytest.raises(TransportError, match="closed"):
            await waiting
        with pytest.raises(TransportError, match="closed"):
            await reading.read()


# --- bodies --------------------------------------------------------------------------------


async def test_content_length_chunked_and_read_until_close_bodies() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the ")
        await asyncio.sleep(0.01)
        writer.write(b"end")
        writer.write_eof()

    async with web_server() as base, raw_server(until_close) as raw_url, HTTPClient() as client:
        response = await client.post(f"{base}/echo", b"x")
        assert response.headers["Content-Length"] == str(len(await response.read()))
        response.release()

        response = await client.post(f"{base}/sse", b"")
        assert response.headers["transfer-encoding"] == "chunked"
        assert await response.read() == b"".join(b'data: {"n": %d}\n\n' % n for n in range(3))
        response.release()

        response = await client.post(raw_url, b"")
        assert await response.read() == b"until the end"
        response.release()
        assert client.statistics().open == 1  # the aiohttp one


async def test_readany_hands_out_pieces_as_they_arrive() -> None:
    async with web_server() as base, HTTPClient() as client:
        response = await client.post(f"{base}/sse", b"", headers={"Accept": "text/event-stream"})
        pieces = []
        while piece := await response.readany():
            pieces.append(piece)
        assert pieces == [b'data: {"n": %d}\n\n' % n for n in range(3)]
        assert await response.readany() == b""
        response.release()
        assert client.statistics().idle == 1


async def test_large_body_is_read_with_flow_control() -> None:
    async with web_server() as base, HTTPClient() as client:
        response = await client.post(f"{base}/big", b"")
        await asyncio.sleep(0.1)  # the server could have sent it all by now
        first = await response.readany()
        # reading stopped past the high-water mark (256 KiB, plus one socket read)
        assert 0 < len(first) <= 768 * 1024
        rest = await response.read()
        assert first + rest == BIG
        response.release()
        assert client.statistics().idle == 1


async def test_request_body_and_headers_are_sent_intact() -> None:
    body = os.urandom(1024 * 1024)
    defaults = {"Authorization": "Bearer k", "Accept": "application/json", "User-Agent": "roost"}
    async with web_server() as base, HTTPClient(headers=defaults) as client:
        traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        response = await client.post(
            f"{base}/echo",
            body,
            headers={"traceparent": traceparent, "accept": "text/event-stream"},
        )
        echoed = await json_body(response)
        response.release()
        assert echoed["length"] == len(body)
        assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
        headers = [(name.lower(), value) for name, value in echoed["headers"]]
        port = base.rsplit(":", 1)[1]
        assert ("host", f"127.0.0.1:{port}") in headers
        assert ("authorization", "Bearer k") in headers
        assert ("user-agent", "roost") in headers
        assert ("traceparent", traceparent) in headers
        assert ("content-length", str(len(body))) in headers
        assert [value for name, value in headers if name == "accept"] == ["text/event-stream"]
        assert not any(name == "accept-encoding" for name, _ in headers)

        response = await client.post(f"{base}/echo", b"{}")  # the defaults alone again
        echoed = await json_body(response)
        response.release()
        assert ["Accept", "application/json"] in echoed["headers"]
        assert not any(name.lower() == "traceparent" for name, _ in echoed["headers"])


async def test_headers_are_case_insensitive() -> None:
    async with web_server() as base, HTTPClient() as client:
        response = await client.post(f"{base}/limited", b"")
        assert response.status == 429
        headers = response.headers
        assert headers.get("retry-after") == headers["RETRY-AFTER"] == "3"
        assert "Retry-After" in headers and headers.get("X-Missing") is None
        assert retry_after(headers) == 3.0
        assert await response.read() == b"slow down"
        response.close()  # whole already: the connection is kept
        assert client.statistics().idle == 1


async def test_release_before_the_end_of_a_chunked_body_keeps_the_connection() -> None:
    async def late_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"e\r\ndata: [DONE]\n\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async with raw_server(late_end) as url, HTTPClient() as client:
        response = await client.post(url, b"")
        assert await response.readany() == b"data: [DONE]\n\n"
        response.release()
        assert client.statistics().in_use == 1  # waiting for the terminating chunk
        await asyncio.sleep(0.1)
        assert client.statistics().idle == 1
        response = await client.post(url, b"")
        assert await response.read() == b"ok"
        response.release()
        assert client.statistics().connects_total == 1


async def test_interim_responses_are_skipped() -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async with raw_server(early_hints) as url, HTTPClient() as client:
        response = await client.post(url, b"")
        assert (response.status, "link" in response.headers) == (200, False)
        assert await response.read() == b"ok"
        response.release()


# --- stale connections ---------------------------------------------------------------------


async def test_pooled_connection_found_closed_is_retried_once() -> None:
    requests = 0

    async def closes_on_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_request(reader)  # the next request: closed without an answer
        requests += 1

    async with raw_server(closes_on_second) as url, HTTPClient() as client:
        for _ in range(2):
            response = await client.post(url, b"{}")
            assert await response.read() == b"ok"
            response.release()
        assert requests == 3
        assert client.statistics().connects_total == 2


async def test_no_retry_once_the_response_started() -> None:
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")

    async with raw_server(half_answer) as url, HTTPClient() as client:
        response = await client.post(url, b"{}")
        await response.read()
        response.release()
        with pytest.raises(TransportError, match="before the response headers ended"):
            await client.post(url, b"{}")
        assert client.statistics().connects_total == 1


async def test_connection_closed_while_idle_is_dropped() -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with raw_server(one_shot) as url, HTTPClient() as client:
        response = await client.post(url, b"{}")
        await response.read()
        response.release()
        await asyncio.sleep(0.05)
        assert client.statistics().open == 0
        response = await client.post(url, b"{}")
        assert await response.read() == b"ok"
        response.release()


async def test_bytes_after_a_response_drop_the_connection() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await asyncio.sleep(0.01)
        writer.write(b"HTTP/1.1 200 OK\r\n")  # with no request: the connection is unusable
        await reader.read()

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok\x00\x01junk")
        await reader.read()

    for handler in (chatty, junk):
        async with raw_server(handler) as url, HTTPClient() as client:
            response = await client.post(url, b"{}")
            assert await response.read() == b"ok"
            response.release()
            await asyncio.sleep(0.03)
            assert client.statistics().open == 0


# --- failures ------------------------------------------------------------------------------


async def test_body_cut_short_by_a_close() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await asyncio.sleep(0.01)

    async with raw_server(cut) as url, HTTPClient() as client:
        response = await client.post(url, b"")
        assert await response.readany() == b"hello"
        with pytest.raises(BodyCutShort, match="cut short after 5 bytes"):
            await response.readany()
        with pytest.raises(BodyCutShort):  # and again: the end is not b""
            await response.readany()
        response.close()
        assert client.statistics().open == 0


async def test_body_cut_short_by_a_reset() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
        await writer.drain()
        await asyncio.sleep(0.01)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    async with raw_server(reset) as url, HTTPClient() as client:
        response = await client.post(url, b"")
        with pytest.raises(BodyCutShort) as caught:
            await response.read()
        assert isinstance(caught.value, TransportError | ConnectionError)
        response.close()
        assert client.statistics().open == 0


async def test_close_before_the_response() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with raw_server(hang_up) as url, HTTPClient() as client:
        with pytest.raises(TransportError, match="closed the connection before responding") as e:
            await client.post(url, b"{}")
        assert not isinstance(e.value, BodyCutShort)
        assert client.statistics().open == 0


async def test_invalid_response() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async with raw_server(garbage) as url, HTTPClient() as client:
        with pytest.raises(TransportError, match="invalid response"):
            await client.post(url, b"{}")
        assert client.statistics().open == 0


async def test_refused_connection() -> None:
    async with HTTPClient() as client:
        with pytest.raises(TransportError, match="cannot connect") as caught:
            await client.post(f"http://127.0.0.1:{free_port()}/v1", b"{}")
        assert isinstance(caught.value, ConnectionError)
        assert client.statistics().open == 0


async def test_invalid_url_and_headers_send_nothing() -> None:
    async with HTTPClient() as client:
        for url in ("ftp://example.com/", "/relative", "http://", "http://user:pw@host/"):
            with pytest.raises(InvalidURL):
                await client.post(url, b"")
        for headers in ({"X-Bad": "a\r\nInjected: 1"}, {"Bad Name": "a"}, {"X": "\u20ac"}):
            with pytest.raises(InvalidHeader):
                await client.post("http://127.0.0.1:9/", b"", headers=headers)
        with pytest.raises(ValueError):
            HTTPClient(headers={"Content-Length": "3"})
        assert client.statistics().connects_total == 0


# --- timeouts ------------------------------------------------------------------------------


async def stall_after(
    head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    await read_request(reader)
    writer.write(head)
    await reader.read()  # until the client gives up


async def test_read_timeout_while_waiting_for_the_body() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stall_after(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab", reader, writer)

    async with raw_server(stall) as url, HTTPClient(read_timeout_s=0.1) as client:
        loop = asyncio.get_running_loop()
        response = await client.post(url, b"")
        assert await response.readany() == b"ab"
        started = loop.time()
        with pytest.raises(TimeoutError, match="no data"):
            await response.readany()
        assert 0.05 <= loop.time() - started < 0.5
        response.close()
        assert client.statistics().open == 0


async def test_read_timeout_while_waiting_for_the_headers() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stall_after(b"", reader, writer)

    async with raw_server(stall) as url, HTTPClient(read_timeout_s=0.1) as client:
        with pytest.raises(TimeoutError):
            await client.post(url, b"")
        assert client.statistics().open == 0


async def test_deadline_holds_while_data_trickles_in() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"1\r\n.\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)

    async with raw_server(trickle) as url, HTTPClient(read_timeout_s=0.05) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.2
        response = await client.post(url, b"", deadline=deadline)
        received = b""
        with pytest.raises(TimeoutError, match="deadline"):
            while True:
                received += await response.readany()
        assert deadline <= loop.time() < deadline + 0.2
        assert len(received) >= 5
        response.close()
        assert client.statistics().open == 0

        with pytest.raises(TimeoutError, match="before the call started"):
            await client.post(url, b"", deadline=loop.time() - 1)


# --- cancellation --------------------------------------------------------------------------


async def test_cancelled_body_read_closes_the_connection() -> None:
    closed = asyncio.Event()

    async def partial(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stall_after(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", reader, writer
        )
        closed.set()

    async with raw_server(partial) as url, HTTPClient() as client:

        async def call() -> None:
            response = await client.post(url, b"")
            await response.readany()
            await response.readany()  # blocks: the server sends no more

        task = asyncio.create_task(call())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = client.statistics()
        assert (stats.open, stats.in_use) == (0, 0)
        async with asyncio.timeout(1):
            await closed.wait()


async def test_cancelled_calls_free_their_slot() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await stall_after(b"", reader, writer)

    async with raw_server(stall) as url, HTTPClient(max_connections=1) as client:
        waiting_for_headers = asyncio.create_task(client.post(url, b""))
        await asyncio.sleep(0.05)
        waiting_for_a_slot = asyncio.create_task(client.post(url, b""))
        await asyncio.sleep(0.01)
        assert (client.statistics().open, client.statistics().waiters) == (1, 1)

        waiting_for_a_slot.cancel()
        waiting_for_headers.cancel()
        for task in (waiting_for_a_slot, waiting_for_headers):
            with pytest.raises(asyncio.CancelledError):
                await task
        stats = client.statistics()
        assert (stats.open, stats.waiters) == (0, 0)


async def test_a_connection_handed_to_a_cancelled_waiter_goes_back_to_the_pool() -> None:
    async with web_server() as base, HTTPClient(max_connections=1) as client:
        holder = await client.post(f"{base}/echo", b"{}")
        await holder.read()
        waiting = asyncio.create_task(client.post(f"{base}/echo", b"{}"))
        await asyncio.sleep(0.01)
        holder.release()  # hands the connection to `waiting`...
        waiting.cancel()  # ...cancelled before it could resume
        with pytest.raises(asyncio.CancelledError):
            await waiting
        stats = client.statistics()
        assert (stats.open, stats.idle, stats.waiters) == (1, 1, 0)


# --- TLS -----------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with web_server(ssl_context=server_context) as base:
        async with HTTPClient(ssl_context=client_context) as client:
            for _ in range(2):
                response = await client.post(f"{base}/echo", b"secret")
                assert (await json_body(response))["length"] == 6
                response.release()
            assert client.statistics().connects_total == 1
        async with HTTPClient() as untrusting:  # the system's CAs do not know this one
            with pytest.raises(TransportError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.post(f"{base}/echo", b"")


# --- uvloop --------------------------------------------------------------------------------

ON_UVLOOP: list[Callable[[], Coroutine[Any, Any, None]]] = [
    test_sequential_calls_reuse_one_connection,
    test_pool_limit_queues_calls_in_order,
    test_content_length_chunked_and_read_until_close_bodies,
    test_large_body_is_read_with_flow_control,
    test_release_before_the_end_of_a_chunked_body_keeps_the_connection,
    test_pooled_connection_found_closed_is_retried_once,
    test_body_cut_short_by_a_close,
    test_body_cut_short_by_a_reset,
    test_refused_connection,
    test_deadline_holds_while_data_trickles_in,
    test_cancelled_body_read_closes_the_connection,
    test_cancelled_calls_free_their_slot,
    test_bytes_after_a_response_drop_the_connection,
]


@pytest.mark.parametrize("scenario", ON_UVLOOP, ids=lambda test: test.__name__[5:])
def test_on_uvloop(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


# --- host names ------------------------------------------------------------------------------


def fake_dns(monkeypatch: pytest.MonkeyPatch, ports: list[int]) -> list[str]:
    """`roost.test` resolves to 127.0.0.1 on each of `ports`, in order; returns the names
    looked up (one entry per lookup)."""
    loop = asyncio.get_running_loop()
    looked_up: list[str] = []

    async def getaddrinfo(host: str, port: int, **kwargs: Any) -> list[Any]:
        looked_up.append(host)
        await asyncio.sleep(0.01)  # a lookup takes a while: concurrent calls overlap it
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p)) for p in ports]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return looked_up


async def test_a_host_name_is_looked_up_once_per_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    async with web_server() as base:
        port = int(base.rsplit(":", 1)[1])
        looked_up = fake_dns(monkeypatch, [port])
        async with HTTPClient(max_connections=5, dns_ttl_s=0.3) as client:
            url = f"http://roost.test:{port}"

            async def call(path: str) -> bytes:
                response = await client.post(url + path, b"x")
                body = await response.read()
                response.release()
                return body

            assert await asyncio.gather(*(call("/slow?ms=50") for _ in range(5))) == [b"done"] * 5
            stats = client.statistics()
            assert (stats.connects_total, stats.lookups_total) == (5, 1)  # one shared lookup
            for _ in range(5):  # each takes an idle connection, which the server then closes
                assert await call("/close") == b"bye"
            assert client.statistics().idle == 0
            assert await call("/close") == b"bye"  # a new connection: the name is cached
            stats = client.statistics()
            assert (stats.connects_total, stats.lookups_total) == (6, 1)
            await asyncio.sleep(0.35)
            assert await call("/close") == b"bye"
            stats = client.statistics()
            assert (stats.connects_total, stats.lookups_total) == (7, 2)
            assert looked_up == ["roost.test"] * 2


async def test_the_next_address_answers_and_a_name_that_fails_is_looked_up_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with web_server() as base:
        live, dead = int(base.rsplit(":", 1)[1]), free_port()
        fake_dns(monkeypatch, [dead, live])
        async with HTTPClient(dns_ttl_s=300) as client:
            response = await client.post(f"http://roost.test:{live}/echo", b"{}")
            assert response.status == 200
            response.close()
            stats = client.statistics()
            assert (stats.connects_total, stats.lookups_total) == (1, 1)

        fake_dns(monkeypatch, [dead])
        async with HTTPClient(dns_ttl_s=300) as client:
            for lookups in (1, 2):  # every address refused: the name is looked up anew
                with pytest.raises(TransportError, match="cannot connect to http://roost.test"):
                    await client.post(f"http://roost.test:{live}/echo", b"{}")
                assert client.statistics().lookups_total == lookups


async def test_a_real_name_through_the_system_resolver() -> None:
    async with web_server() as base, HTTPClient() as client:
        port = int(base.rsplit(":", 1)[1])
        # localhost may come back as ::1 first; the server listens on 127.0.0.1 only.
        response = await client.post(f"http://localhost:{port}/echo", b"{}")
        assert response.status == 200
        assert ["Host", f"localhost:{port}"] in msgspec.json.decode(await response.read())["headers"]
        response.release()
        assert client.statistics().lookups_total == 1
