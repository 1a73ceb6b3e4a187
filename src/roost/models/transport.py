"""`HTTPClient`: a lean HTTP/1.1 client for model calls (POST a body, read the answer).

    client = HTTPClient(headers={"Authorization": "Bearer sk-..."}, max_connections=64)
    response = await client.post(url, body, headers={"Accept": "text/event-stream"},
                                 deadline=loop.time() + 30)
    try:
        while chunk := await response.readany():
            events = parser.feed(chunk)
        response.release()          # the body was read: the connection goes back to the pool
    finally:
        response.close()            # a no-op after release(); else the connection is dropped
    await client.aclose()

Why not aiohttp: a server holding thousands of agent turns makes two or more model calls per
turn, and aiohttp's client (session, connector, happy eyeballs, timeout handles, payload
writers) took about a quarter of its CPU. This client is an `asyncio.Protocol` feeding
`httptools`' response parser; a call costs a request head built from cached bytes, one
`transport.write`, one timer and the futures it waits on.

What it does: one pool of keep-alive connections per client (bound to one event loop,
`max_connections` in total, waiters served first come first served, idle connections closed
after `keepalive_timeout_s`); `http` and `https` (by default `ssl.create_default_context()`);
responses with a Content-Length, chunked or read until close; flow control (the socket is not
read while more than 256 KiB of body waits for the reader); one transparent retry when a
connection that sat idle in the pool turns out closed before any byte of the answer.
Proxies: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` / `NO_PROXY` (or `proxies=`), through a
CONNECT tunnel (see `proxy.py`).
What it leaves out: methods other than POST, redirects (a 3xx is a status like any other),
compression (no Accept-Encoding is sent), HTTP/2, cookies.

Timeouts, all raising the builtin `TimeoutError`:

* `pool_timeout_s` bounds waiting for a free connection when all `max_connections` are busy
  (default: `connect_timeout_s`);
* `connect_timeout_s` bounds the TCP (and TLS) connect (host names are looked up once per
  `dns_ttl_s`; a name's addresses are tried in order);
* `read_timeout_s` bounds the silence of the server while a response is outstanding;
* `deadline` (absolute, on the loop's clock) bounds the whole call, reading the body included.

Exceptions:

    ValueError
     └── InvalidRequest        the caller's mistake; nothing was sent
          ├── InvalidURL       not an absolute http(s) URL with a host
          └── InvalidHeader    a header that cannot go on the wire (CR/LF, not latin-1, ...)
    OSError
     └── ConnectionError
          └── TransportError   cannot connect, TLS failure, connection closed or reset before
               │               the response ended, an unparsable response, the client closed
               └── BodyCutShort    the connection ended inside the response body
    TimeoutError (builtin)     see above; an OSError too: test for it before OSError
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, cast

import httptools
from yarl import URL

from roost.models.proxy import Proxy, environment_proxies, open_tunnel, proxy_for

__all__ = [
    "BodyCutShort",
    "HTTPClient",
    "Headers",
    "InvalidHeader",
    "InvalidRequest",
    "InvalidURL",
    "Response",
    "TransportError",
    "TransportStatistics",
]

# Unread body bytes that stop reading the socket: the server then blocks on its own buffers
# instead of this process buffering a whole slow consumer's stream. One 256 KiB socket read
# (asyncio's and uvloop's read size) may land on top of it.
_HIGH_WATER: Final = 256 * 1024
# `release()` before the terminating chunk arrived (an SSE stream's `[DONE]` comes before the
# end of the chunked body, sometimes in a later segment) waits this long, for at most this
# many bytes, for the end instead of dropping a connection a new call would pay to reopen.
_DRAIN_S: Final = 1.0
_DRAIN_BYTES: Final = 64 * 1024
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers the client writes itself from the URL and the body.
_OWN_HEADERS: Final = frozenset({"content-length", "transfer-encoding"})


class InvalidRequest(ValueError):
    """The call cannot be sent as asked; nothing went on the wire."""


class InvalidURL(InvalidRequest):
    """Not an absolute `http` or `https` URL with a host (credentials in it are refused too)."""


class InvalidHeader(InvalidRequest):
    """A header name that is not a token, or a value with CR, LF, NUL or non-latin-1 text."""


class TransportError(ConnectionError):
    """The exchange failed on the wire; the message says how. Retrying may succeed."""


class BodyCutShort(TransportError):
    """The connection ended (closed, reset) inside the response body: the body is incomplete."""


class _IdleConnectionClosed(TransportError):
    """A pooled connection was found closed before any byte of the response: `post` retries."""


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """What a client's pool holds now, and its totals since it was opened.

    client.statistics()  # TransportStatistics(open=2, idle=1, in_use=1, waiters=0, ...)
    """

    open: int  #: slots taken: connections open or being opened
    idle: int  #: open connections waiting in the pool for a call
    in_use: int  #: `open - idle`: serving a call, connecting, or draining a released response
    waiters: int  #: calls waiting for a slot
    connects_total: int  #: connections opened
    reuses_total: int  #: calls served by a connection that served one before
    lookups_total: int = 0  #: host-name lookups (the DNS cache's misses)


class Headers(Mapping[str, str]):
    """Response headers, read case-insensitively; keys are lower-case, the first value wins.

        response.headers.get("retry-after") == response.headers.get("Retry-After")

    Decoded on first use: most successful calls never look at them.
    """

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def _decoded(self) -> dict[str, str]:
        decoded = self._map
        if decoded is None:
            decoded = {}
            for name, value in self._raw:
                decoded.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            self._map = decoded
        return decoded

    def __getitem__(self, name: str) -> str:
        return self._decoded()[name.lower()]

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self._decoded().get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._decoded()

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __repr__(self) -> str:
        return f"Headers({self._decoded()!r})"


class _Target:
    """Where a URL's requests go: the pool key and what `create_connection` needs."""

    __slots__ = ("authority", "host", "named", "origin", "port", "tls")

    def __init__(self, url: URL) -> None:
        authority = url.host_port_subcomponent  # [v6]:port, the port only when not the default
        if url.scheme not in ("http", "https") or not url.raw_host or not authority:
            raise InvalidURL(f"not an absolute http(s) URL: {str(url)!r}")
        if url.raw_user is not None:
            raise InvalidURL(f"credentials in the URL are not supported: {url.host}")
        self.tls = url.scheme == "https"
        self.host = url.raw_host.strip("[]")
        self.port: int = url.port or (443 if self.tls else 80)
        self.authority = authority
        self.origin = f"{url.scheme}://{authority}"
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            self.named = True  # resolved through the client's DNS cache
        else:
            self.named = False


class _Connection(asyncio.Protocol):
    """One connection: one request at a time, its response parsed as bytes arrive.

    The parser calls `on_*` back from inside `data_received`. The caller's side waits on
    `_waiter` (one future per wait, for headers or for body bytes). One timer per call watches
    both the deadline and the read timeout: it is armed once and, when it fires while data is
    still flowing, re-armed for the rest of the period, never on each `data_received`.
    """

    __slots__ = (
        "_chunks",
        "_deadline",
        "_draining",
        "_last_data",
        "_loop",
        "_parser",
        "_paused",
        "_pool",
        "_read_timeout",
        "_received",
        "_reused",
        "_size",
        "_timer",
        "_transport",
        "_waiter",
        "active",
        "closed",
        "done",
        "exc",
        "got_data",
        "headers_done",
        "idle",
        "idle_since",
        "keep_alive",
        "origin",
        "raw_headers",
        "served",
        "slot",
        "status",
    )

    def __init__(self, pool: _Pool, origin: str) -> None:
        self._pool = pool
        self._loop = pool.loop
        self.origin = origin
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.slot = False  # counts against max_connections (set once connected)
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self.served = 0
        self.active = False  # a request is out and its connection not released
        self._draining = False
        self._reused = False
        self.got_data = False
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._received = 0
        self.exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._read_timeout = 0.0
        self._last_data = 0.0

    # --- the caller's side -----------------------------------------------------------------

    def start(self, data: bytes, deadline: float | None, read_timeout: float) -> None:
        """Send one request (head and body in `data`) and arm the call's timer."""
        self.active = True
        self._reused = self.served > 0
        self.served += 1
        self.got_data = self.headers_done = self.done = False
        self.raw_headers = []
        self._chunks = []
        self._size = self._received = 0
        self.exc = None
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            self.exc = self._ended(None)  # closed while idle: `post` retries
            self.abort()
            return
        transport.write(data)
        now = self._loop.time()
        self._last_data = now
        self._deadline = deadline
        self._read_timeout = read_timeout
        when = now + read_timeout
        if deadline is not None and deadline < when:
            when = deadline
        self._timer = self._loop.call_at(when, self._on_timer)

    def news(self) -> asyncio.Future[None]:
        """A future done when the parser or the end of the connection has news."""
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def take(self) -> bytes:
        """The body bytes buffered so far (at least one chunk is)."""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if self._paused:
            self._resume()
        return data

    def finish(self, *, drain: bool) -> None:
        """The caller is done: back to the pool if the response arrived whole, else (with
        `drain`) once its end arrives, else closed."""
        if self.closed:
            return
        if self.done:
            if self.keep_alive:
                self._to_pool()
            else:
                self.abort()
        elif drain and self.headers_done and self.exc is None and not self._until_close():
            self._draining = True
            self._chunks = []
            self._size = self._received = 0
            if self._paused:
                self._resume()
            if self._timer is not None:
                self._timer.cancel()
            when = self._loop.time() + _DRAIN_S
            if self._deadline is not None and self._deadline < when:
                when = self._deadline
            self._timer = self._loop.call_at(when, self.abort)
        else:
            self.abort()

    def abort(self) -> None:
        """Close the connection now, whatever it was doing; frees its pool slot."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        self._lost()

    def fail(self, exc: BaseException) -> None:
        if self.exc is None and not self.done:
            self.exc = exc
        self.abort()
        self._wake()

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.active:
            self.abort()  # bytes nobody asked for: the connection's state is unknown
            return
        self.got_data = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.done:  # junk after a whole response: keep the response, not the connection
                self.keep_alive = False
            else:
                self.fail(TransportError(f"invalid response from {self.origin}: {exc}"))
            return
        if self._draining and self.done and not self.closed:
            self._draining = False
            if self.keep_alive:
                self._to_pool()
            else:
                self.abort()

    def eof_received(self) -> bool:
        return False  # let the transport close; `connection_lost` sorts out what it means

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.active and not self.done and self.exc is None:
            self.exc = self._ended(exc)
        self._lost()
        self._wake()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.done:  # a second response to one request: never reuse this connection
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # an interim response (100 Continue, 103 Early Hints): skip it
            self.raw_headers = []
            return
        self.status = status
        self.headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._received += len(body)
        if self._draining:
            if self._received > _DRAIN_BYTES:
                self.abort()
            return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > _HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an interim response
        self.done = True
        self.keep_alive = self._parser.should_keep_alive()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    # --- internals -------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.time()
        deadline = self._deadline
        if deadline is not None and now >= deadline:
            what = "the response body" if self.headers_done else "the response"
            self.fail(TimeoutError(f"deadline exceeded while waiting for {what}"))
            return
        if self._paused:  # the reader is behind, not the server
            self._last_data = now
        elif now - self._last_data >= self._read_timeout:
            self.fail(TimeoutError(f"no data from {self.origin} for {self._read_timeout:g} s"))
            return
        when = self._last_data + self._read_timeout
        if deadline is not None and deadline < when:
            when = deadline
        self._timer = self._loop.call_at(when, self._on_timer)

    def _until_close(self) -> bool:
        """Whether the body ends when the connection does (no length, not chunked)."""
        for name, _ in self.raw_headers:
            if name.lower() in (b"content-length", b"transfer-encoding"):
                return False
        return True

    def _ended(self, exc: Exception | None) -> TransportError | None:
        """What the connection ending (`exc`: how) means to the outstanding response."""
        how = f": {exc}" if exc is not None else ""
        if not self.got_data:
            if self._reused:
                return _IdleConnectionClosed(
                    f"{self.origin} closed a pooled connection before responding{how}"
                )
            return TransportError(f"{self.origin} closed the connection before responding{how}")
        if not self.headers_done:
            return TransportError(f"connection closed before the response headers ended{how}")
        if exc is None and self._until_close():
            self.done = True  # the body was read until close: it is whole
            self.keep_alive = False
            return None
        return BodyCutShort(f"response body cut short after {self._received} bytes{how}")

    def _to_pool(self) -> None:
        self.active = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._paused:
            self._resume()
        self._pool.put(self)

    def _resume(self) -> None:
        self._paused = False
        self._last_data = self._loop.time()  # the read timeout counts from now again
        if self._transport is not None:
            self._transport.resume_reading()

    def _lost(self) -> None:
        if not self.closed:
            self.closed = True
            self._pool.forget(self)


_Address = tuple[int, tuple[Any, ...]]  # (address family, socket address)


class _Resolver:
    """Host names to addresses, cached for `ttl_s`, one lookup in flight per name.

    `getaddrinfo` runs in the loop's small thread pool: without a cache, a burst of new
    connections to one provider would queue a lookup each behind it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, ttl_s: float) -> None:
        self._loop = loop
        self._ttl = ttl_s
        self._cache: dict[tuple[str, int], tuple[float, list[_Address]]] = {}
        self._lookups: dict[tuple[str, int], asyncio.Task[list[_Address]]] = {}
        self.lookups_total = 0

    async def resolve(self, host: str, port: int) -> list[_Address]:
        key = (host, port)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._loop.time():
            return cached[1]
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = self._lookups[key] = self._loop.create_task(self._lookup(host, port))
            lookup.add_done_callback(lambda _: self._lookups.pop(key, None))
        # Shielded: one caller giving up does not cancel the lookup the others wait for.
        return await asyncio.shield(lookup)

    def forget(self, host: str, port: int) -> None:
        """None of the addresses answered: look the name up again next time."""
        self._cache.pop((host, port), None)

    async def _lookup(self, host: str, port: int) -> list[_Address]:
        self.lookups_total += 1
        infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[_Address] = []
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr) not in addresses:
                addresses.append((family, sockaddr))
        if not addresses:
            raise OSError(f"no address for {host}")
        self._cache[(host, port)] = (self._loop.time() + self._ttl, addresses)
        return addresses

    def close(self) -> None:
        for lookup in self._lookups.values():
            lookup.cancel()


class _Pool:
    """The connections of one client on one loop, and the calls waiting for one.

    A slot is a connection open or being opened; `_open` counts them against the limit. A
    released connection or a freed slot goes to the first live waiter rather than back to the
    pool, so waiters are served in order and a newcomer never jumps the queue.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, client: HTTPClient) -> None:
        self.loop = loop
        self._max = client.max_connections
        self._keepalive = client.keepalive_timeout_s
        self._open = 0
        self._idle_count = 0
        # Most recently used at the right: calls take from the right (the connection least
        # likely closed by the server), the sweeper expires from the left.
        self._idle: dict[str, deque[_Connection]] = {}
        self._conns: set[_Connection] = set()
        self._waiters: deque[tuple[str, asyncio.Future[_Connection | None]]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._tls = client.ssl_context
        self._proxies = client.proxies
        self._proxy: dict[str, Proxy | None] = {}  # origin -> its proxy (None: direct)
        self.resolver = _Resolver(loop, client.dns_ttl_s)
        self.closed = False
        self.connects_total = 0
        self.reuses_total = 0

    def take_idle(self, origin: str) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.idle:  # else it died while idle and was only counted out
                conn.idle = False
                self._idle_count -= 1
                self.reuses_total += 1
                return conn
        return None

    async def acquire(self, target: _Target, wait_by: float, connect_s: float,
                      deadline: float | None) -> _Connection:
        """A new connection to `target`, or one handed over by a call that finished: the
        slow path after `take_idle`. Waits for a slot until `wait_by`, then connects within
        `connect_s`; neither past `deadline`."""
        if self.closed:
            raise TransportError("the HTTP client is closed")
        if self._open >= self._max:
            self._evict_idle()
        if self._open < self._max:
            self._open += 1
        else:
            handed = await self._wait(target, wait_by if deadline is None else min(wait_by, deadline))
            if handed is not None:
                self.reuses_total += 1
                return handed
            # else a slot was handed over: `_open` already counts it for us
        connect_by = self.loop.time() + connect_s
        if deadline is not None and deadline < connect_by:
            connect_by = deadline
        try:
            return await self._connect(target, connect_by)
        except BaseException:
            self._free_slot()
            raise

    async def _wait(self, target: _Target, connect_by: float) -> _Connection | None:
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append((target.origin, waiter))
        try:
            async with asyncio.timeout_at(connect_by):
                return await waiter
        except BaseException as exc:
            # Handed a connection or a slot in the same loop turn as the timeout or the
            # cancellation: give it back, or it is lost for good.
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    handed.finish(drain=False)
            if isinstance(exc, TimeoutError):
                raise TimeoutError(
                    f"no free connection to {target.origin} in time (max_connections={self._max})"
                ) from None
            raise

    async def _connect(self, target: _Target, connect_by: float) -> _Connection:
        if self.closed:
            raise TransportError("the HTTP client is closed")
        conn = _Connection(self, target.origin)
        tls: ssl.SSLContext | None = None
        if target.tls:
            tls = self._tls
            if tls is None:
                tls = self._tls = ssl.create_default_context()
        proxy = self._proxy_of(target)
        try:
            async with asyncio.timeout_at(connect_by):
                if proxy is not None:
                    sock = await open_tunnel(proxy, target.host, target.port)
                    await self.loop.create_connection(
                        lambda: conn, sock=sock, ssl=tls,
                        server_hostname=target.host if tls is not None else None)
                elif target.named:
                    await self._connect_named(conn, target, tls)
                else:
                    await self.loop.create_connection(
                        lambda: conn,
                        target.host,
                        target.port,
                        ssl=tls,
                        server_hostname=target.host if tls is not None else None,
                    )
        except TimeoutError:
            raise TimeoutError(f"connecting to {target.origin} timed out") from None
        except OSError as exc:  # refused, unreachable, no such host, TLS failure
            raise TransportError(f"cannot connect to {target.origin}: {exc}") from exc
        if conn.closed:
            raise TransportError(f"{target.origin} closed the connection as it opened")
        if self.closed:  # aclose() ran while this connection was being opened
            conn.abort()
            raise TransportError("the HTTP client is closed")
        conn.slot = True
        self._conns.add(conn)
        self.connects_total += 1
        return conn

    def _proxy_of(self, target: _Target) -> Proxy | None:
        if not self._proxies:
            return None
        if target.origin not in self._proxy:
            scheme = "https" if target.tls else "http"
            self._proxy[target.origin] = proxy_for(scheme, target.host, target.port,
                                                   self._proxies)
        return self._proxy[target.origin]

    async def _connect_named(
        self, conn: _Connection, target: _Target, tls: ssl.SSLContext | None
    ) -> None:
        """Connect to the first of the name's (cached) addresses that answers, in order."""
        addresses = await self.resolver.resolve(target.host, target.port)
        error: OSError | None = None
        for family, sockaddr in addresses:
            try:
                await self.loop.create_connection(
                    lambda: conn,
                    sockaddr[0],
                    sockaddr[1],
                    family=family,
                    ssl=tls,
                    server_hostname=target.host if tls is not None else None,
                )
                return
            except ssl.SSLError:
                raise  # the server answered: another address of it would say the same
            except OSError as exc:
                error = exc
        self.resolver.forget(target.host, target.port)
        assert error is not None
        raise error

    def put(self, conn: _Connection) -> None:
        """A connection whose response ended cleanly: to the first waiter, or idle."""
        while self._waiters:
            origin, waiter = self._waiters.popleft()
            if waiter.done():
                continue  # timed out or cancelled
            if origin == conn.origin:
                waiter.set_result(conn)
            else:  # its slot is worth more to the waiter than the connection is
                conn.slot = False
                conn.abort()
                waiter.set_result(None)
            return
        if self.closed:
            conn.abort()
            return
        now = self.loop.time()
        conn.idle_since = now
        conn.idle = True
        self._idle_count += 1
        idle = self._idle.get(conn.origin)
        if idle is None:
            idle = self._idle[conn.origin] = deque()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_at(now + self._keepalive, self._expire_idle)

    def forget(self, conn: _Connection) -> None:
        """`conn` closed (it stays in its idle deque until popped: removal is lazy)."""
        self._conns.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle_count -= 1
        if conn.slot:
            conn.slot = False
            self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        self._open -= 1

    def _evict_idle(self) -> None:
        """Close the longest-idle connection (to another origin, or a stale one) for a slot."""
        oldest: _Connection | None = None
        for idle in self._idle.values():
            while idle and not idle[0].idle:
                idle.popleft()
            if idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            oldest.abort()

    def _expire_idle(self) -> None:
        self._sweep = None
        now = self.loop.time()
        next_at: float | None = None
        for idle in self._idle.values():
            while idle:
                conn = idle[0]
                if not conn.idle:
                    idle.popleft()
                elif conn.idle_since + self._keepalive <= now:
                    idle.popleft()
                    conn.abort()
                else:
                    at = conn.idle_since + self._keepalive
                    next_at = at if next_at is None else min(next_at, at)
                    break
        if next_at is not None and not self.closed:
            self._sweep = self.loop.call_at(next_at, self._expire_idle)

    async def aclose(self) -> None:
        self.closed = True
        self.resolver.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        waiters, self._waiters = self._waiters, deque()
        for _, waiter in waiters:
            if not waiter.done():
                waiter.set_exception(TransportError("the HTTP client is closed"))
        conns = list(self._conns)
        for conn in conns:
            conn.fail(TransportError("the HTTP client was closed during the call"))
        self._idle.clear()
        # Aborted transports close their sockets from a loop callback (two turns under TLS):
        # let that happen before the caller closes the loop.
        for _ in range(4):
            await asyncio.sleep(0)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            open=self._open,
            idle=self._idle_count,
            in_use=self._open - self._idle_count,
            waiters=sum(1 for _, waiter in self._waiters if not waiter.done()),
            connects_total=self.connects_total,
            reuses_total=self.reuses_total,
            lookups_total=self.resolver.lookups_total,
        )


class Response:
    """The status and headers of a response, and its body as it arrives.

        response = await client.post(url, body)
        if response.status == 200:
            data = await response.read()
        response.release()

    Finish with `release()` once the body was read (the connection is reused), or `close()`
    (it is dropped unless the response had already arrived whole). `async with response:`
    does the right one. Reading after either returns b"".
    """

    __slots__ = ("_body", "_conn", "_headers", "_raw", "status")

    def __init__(self, conn: _Connection) -> None:
        self.status: int = conn.status
        self._raw = conn.raw_headers
        self._conn: _Connection | None = conn
        self._headers: Headers | None = None
        self._body: bytes | None = None

    @property
    def headers(self) -> Headers:
        headers = self._headers
        if headers is None:
            headers = self._headers = Headers(self._raw)
        return headers

    async def readany(self) -> bytes:
        """The body bytes that arrived since the last read, waiting for some; b"" at the end.

        Raises `BodyCutShort`, `TransportError` or `TimeoutError` after handing out the bytes
        that came before the failure. A cancelled read closes the connection.
        """
        conn = self._conn
        if conn is None:
            return b""
        try:
            while not conn._chunks:
                if conn.done:
                    return b""
                if conn.exc is not None:
                    raise conn.exc
                await conn.news()
        except BaseException as exc:
            if exc is not conn.exc:  # cancelled: the rest of the body will not be read
                conn.fail(TransportError("the response was abandoned: a read was cancelled"))
            raise
        return conn.take()

    async def read(self) -> bytes:
        """The whole body (the same bytes again on a second call)."""
        if self._body is None:
            parts = []
            while chunk := await self.readany():
                parts.append(chunk)
            self._body = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._body

    def release(self) -> None:
        """Done, body read: the connection goes back to the pool (once the end of the body
        arrives, when it has not yet: it is then closed unless that takes under a second)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(drain=True)

    def close(self) -> None:
        """Done, whatever was read: the connection is closed unless the response had arrived
        whole. Safe to call after `release()`."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish(drain=False)

    async def __aenter__(self) -> Response:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
        else:
            self.close()

    def __del__(self) -> None:
        # A response dropped unfinished would hold its pool slot for good.
        if self._conn is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: so is the connection
                self.close()

    def __repr__(self) -> str:
        return f"<Response {self.status}>"


class HTTPClient:
    """POST bytes to HTTP/1.1 servers over pooled keep-alive connections.

        client = HTTPClient(headers={"Content-Type": "application/json"}, max_connections=32)
        response = await client.post("http://127.0.0.1:8011/v1/chat/completions", body,
                                     headers={"traceparent": tp}, deadline=loop.time() + 10)
        async with response:
            answer = await response.read()
        client.statistics().reuses_total  # calls served by an already open connection

    `headers` go with every call; a call's own `headers` add to them or replace them (names
    compare case-insensitively). Host and Content-Length are written by the client. The
    pool is created on first use, bound to the running loop; `aclose()` closes it and the
    next call opens a new one. `https` URLs use `ssl_context`, by default
    `ssl.create_default_context()` (the system's CAs, the host name checked).
    """

    def __init__(
        self,
        *,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 100,
        keepalive_timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        pool_timeout_s: float | None = None,
        dns_ttl_s: float = 300.0,
        ssl_context: ssl.SSLContext | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {max_connections}")
        pool_timeout_s = connect_timeout_s if pool_timeout_s is None else pool_timeout_s
        for name, value in (
            ("keepalive_timeout_s", keepalive_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("read_timeout_s", read_timeout_s),
            ("pool_timeout_s", pool_timeout_s),
            ("dns_ttl_s", dns_ttl_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value}")
        self.max_connections = max_connections
        self.keepalive_timeout_s = keepalive_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.pool_timeout_s = pool_timeout_s
        self.dns_ttl_s = dns_ttl_s
        self.ssl_context = ssl_context
        # scheme ("http", "https", "all") or "no" -> value; read from the environment once.
        self.proxies = dict(environment_proxies() if proxies is None else proxies)
        self._defaults = {
            name.lower(): _header_line(name, value) for name, value in (headers or {}).items()
        }
        if self._defaults.keys() & _OWN_HEADERS:
            raise InvalidHeader("Content-Length and Transfer-Encoding are written by the client")
        # (url, names of the call's headers) -> target and the request head up to the call's
        # own header lines: a call only formats what is its own.
        self._heads: dict[object, tuple[_Target, bytes]] = {}
        self._pool: _Pool | None = None

    async def post(
        self,
        url: str | URL,
        body: bytes,
        *,
        headers: Mapping[str, str] | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send `body` and return the response once its headers arrived.

        `deadline` is absolute, on the running loop's clock, and bounds reading the body
        too. Raises `InvalidRequest`, `TransportError` or `TimeoutError` (see the module).
        """
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is None or pool.loop is not loop:
            pool = self._pool_for(loop)
        key: object = (url, tuple(headers)) if headers else url
        prepared = self._heads.get(key)
        if prepared is None:
            prepared = self._prepare(key, url, headers)
        target, head = prepared
        if headers:
            own = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
            count = len(headers)
            # A CR or LF in a value would let it write headers (or a request) of its own.
            if own.count("\n") != count or own.count("\r") != count or "\0" in own:
                raise _bad_header(headers)
            try:
                own_bytes = own.encode("latin-1")
            except UnicodeEncodeError:
                raise _bad_header(headers) from None
            data = b"".join((head, own_bytes, b"Content-Length: %d\r\n\r\n" % len(body), body))
        else:
            data = b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))

        now = loop.time()
        if deadline is not None and now >= deadline:
            raise TimeoutError("deadline passed before the call started")
        fresh = False
        while True:
            conn = None if fresh else pool.take_idle(target.origin)
            if conn is None:
                conn = await pool.acquire(target, now + self.pool_timeout_s,
                                          self.connect_timeout_s, deadline)
            try:
                conn.start(data, deadline, self.read_timeout_s)
                while not conn.headers_done:
                    if conn.exc is not None:
                        raise conn.exc
                    await conn.news()
            except _IdleConnectionClosed:
                # The server closed it while idle: the request never reached it (nothing
                # came back), so sending it again on a new connection is safe. Once.
                fresh = True
                now = loop.time()
                continue
            except BaseException:
                conn.finish(drain=False)
                raise
            return Response(conn)

    def statistics(self) -> TransportStatistics:
        """The pool's counts (all zero before the first call and after `aclose()`)."""
        if self._pool is None:
            return TransportStatistics(0, 0, 0, 0, 0, 0)
        return self._pool.statistics()

    async def aclose(self) -> None:
        """Close every connection (calls in flight fail with `TransportError`). The client
        stays usable: the next call opens a new pool. A pool opened on another loop is only
        dropped."""
        pool, self._pool = self._pool, None
        # Another loop's connections are that loop's to close (or went with it).
        if pool is not None and pool.loop is asyncio.get_running_loop():
            await pool.aclose()

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _pool_for(self, loop: asyncio.AbstractEventLoop) -> _Pool:
        if self._pool is not None and not self._pool.loop.is_closed():
            raise RuntimeError("this HTTPClient is in use on another event loop")
        # A closed loop took its connections with it: nothing to close.
        self._pool = _Pool(loop, self)
        return self._pool

    def _prepare(
        self, key: object, url: str | URL, headers: Mapping[str, str] | None
    ) -> tuple[_Target, bytes]:
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except (TypeError, ValueError) as exc:
            raise InvalidURL(f"invalid URL {url!r}: {exc}") from exc
        target = _Target(parsed)
        replaced = set()
        for name in headers or ():
            if not _TOKEN.fullmatch(name):
                raise InvalidHeader(f"invalid header name {name!r}")
            if name.lower() in _OWN_HEADERS:
                raise InvalidHeader(f"{name} is written by the client")
            replaced.add(name.lower())
        lines = [f"POST {parsed.raw_path_qs} HTTP/1.1\r\n".encode("ascii")]
        if "host" not in replaced and "host" not in self._defaults:
            lines.append(f"Host: {target.authority}\r\n".encode("ascii"))
        lines.extend(line for name, line in self._defaults.items() if name not in replaced)
        prepared = target, b"".join(lines)
        if len(self._heads) >= 64:  # callers use a handful of URLs; never grow without bound
            self._heads.clear()
        self._heads[key] = prepared
        return prepared


def _bad_header(headers: Mapping[str, str]) -> InvalidHeader:
    """The error for the first header that cannot be sent (its value stays out of it: it
    may be a credential)."""
    for name, value in headers.items():
        try:
            _header_line(name, value)
        except InvalidHeader as exc:
            return exc
    return InvalidHeader("invalid header")


def _header_line(name: str, value: str) -> bytes:
    if not _TOKEN.fullmatch(name):
        raise InvalidHeader(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise InvalidHeader(f"CR, LF or NUL in the value of {name}")
    try:
        return f"{name}: {value}\r\n".encode("latin-1")
    except UnicodeEncodeError as exc:
        raise InvalidHeader(f"the value of {name} is not latin-1") from exc
