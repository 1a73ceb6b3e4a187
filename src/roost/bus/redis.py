"""The fleet bus on Redis pub/sub.

    bus = RedisBus("redis://cache:6379/0", prefix="roost:")

Channel `c` is the Redis channel `{prefix}c`. Pub/sub ignores the database number, so the
prefix is what keeps two fleets (or two tests) apart on one server: by default it is
`roost:db<N>:`, N the URL's database, so fleets kept apart by database stay apart here too. Every message is the payload
behind a one-byte tag: `m` + payload, or `g` alone for a gap marker (see `network`).

Two plain redis-py connections (not its `PubSub` helper, whose hidden reconnect and resubscribe
would hide exactly the moment subscribers must hear about): the writer sends a batch as one
EVALSHA of a script that PUBLISHes each message in order; the listener SUBSCRIBEs, reads, and answers for itself whether it is
alive (a PING when idle for `health_check_s`; no answer within twice that: reconnect). Both
connections carry `client_name`, so an operator can find them in `CLIENT LIST`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import redis.asyncio.connection as rconn
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, ResponseError

from roost.bus.base import BusLimits
from roost.bus.network import Batch, NetworkBus
from roost.errors import ConfigError

# PUBLISH each (channel, message) pair of ARGV, in order.
_PUBLISH_MANY = "for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end"
_MESSAGE = b"message"
_SUBSCRIBE = b"subscribe"


class RedisBus(NetworkBus):
    backend = "redis"

    def __init__(self, url: str, *, prefix: str | None = None, client_name: str = "roost-bus",
                 limits: BusLimits | None = None) -> None:
        super().__init__(limits)
        ct = self.limits.connect_timeout_s
        common: dict[str, Any] = {
            "decode_responses": False, "socket_connect_timeout": ct,
            "retry": Retry(NoBackoff(), 0), "client_name": client_name,
        }
        try:
            self._writer_pool = rconn.ConnectionPool.from_url(url, socket_timeout=ct, **common)
            # The listener blocks in a read for as long as nothing is published.
            self._listener_pool = rconn.ConnectionPool.from_url(url, socket_timeout=None, **common)
        except ValueError as exc:
            raise ConfigError(f"redis bus: {exc}", [("bus.url", str(exc))]) from exc
        if prefix is None:
            prefix = f"roost:db{self._writer_pool.connection_kwargs.get('db', 0)}:"
        self._prefix = prefix
        self._wconn: rconn.AbstractConnection | None = None
        self._script: bytes = b""  # the SHA1 of _PUBLISH_MANY on the writer's server
        self._lconn: rconn.AbstractConnection | None = None
        self._channel_of: dict[bytes, str] = {}  # wire name -> channel
        self._confirming: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._reading = False
        self._last_seen = 0.0

    def _wire(self, channel: str) -> bytes:
        return (self._prefix + channel).encode()

    # -- writer ---------------------------------------------------------------------------

    async def _connect_writer(self) -> None:
        conn = self._writer_pool.make_connection()  # type: ignore[no-untyped-call]
        self._wconn = conn
        await conn.connect()
        await conn.send_command("SCRIPT", "LOAD", _PUBLISH_MANY, check_health=False)
        self._script = await conn.read_response()

    async def _disconnect_writer(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _write(self, batch: Batch) -> None:
        conn = self._wconn
        assert conn is not None
        prefix = self._prefix
        args: list[str | bytes] = []
        for channel, payload in batch:
            args.append(prefix + channel)
            args.append(b"g" if payload is None else b"m" + payload)
        # One command and one reply for the batch (PUBLISH by PUBLISH, a reply each cost
        # ~2x the CPU per message at full batches).
        await conn.send_command("EVALSHA", self._script, 0, *args, check_health=False)
        await conn.read_response()

    def _retryable(self, exc: Exception) -> bool:
        # An error reply (READONLY replica, OOM, ...) is the server refusing the batch;
        # NOSCRIPT (the script cache was flushed) is fixed by reconnecting, which loads it.
        return not isinstance(exc, ResponseError) or isinstance(exc, NoScriptError)

    # -- listener -------------------------------------------------------------------------

    async def _connect_listener(self) -> None:
        conn = self._listener_pool.make_connection()  # type: ignore[no-untyped-call]
        self._lconn = conn
        await conn.connect()
        self._last_seen = asyncio.get_running_loop().time()

    async def _disconnect_listener(self) -> None:
        self._reading = False
        conn, self._lconn = self._lconn, None
        for waiters in self._confirming.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._confirming.clear()
        if conn is not None:
            await conn.disconnect(nowait=True)

    async def _abort_listener(self) -> None:
        if self._lconn is not None:
            await self._lconn.disconnect(nowait=True)  # the reader's read fails at once

    async def _listen_on(self, channels: list[str]) -> None:
        conn = self._lconn
        assert conn is not None
        names = [self._wire(channel) for channel in channels]
        for name, channel in zip(names, channels, strict=True):
            self._channel_of[name] = channel
        if not self._reading:  # (re)connecting: read the confirmations here
            await conn.send_command("SUBSCRIBE", *names, check_health=False)
            pending = len(names)
            while pending:
                response = await conn.read_response(push_request=True)
                if isinstance(response, list) and response[0] == _SUBSCRIBE:
                    pending -= 1
            return
        loop = asyncio.get_running_loop()
        waiters = []
        for name in names:
            waiter: asyncio.Future[None] = loop.create_future()
            self._confirming.setdefault(name, deque()).append(waiter)
            waiters.append(waiter)
        await conn.send_command("SUBSCRIBE", *names, check_health=False)
        for waiter in waiters:
            await waiter
        if self._lconn is not conn:
            raise ConnectionError("the listener connection was lost while subscribing")

    async def _unlisten(self, channel: str) -> None:
        conn = self._lconn
        assert conn is not None
        name = self._wire(channel)
        self._channel_of.pop(name, None)
        await conn.send_command("UNSUBSCRIBE", name, check_health=False)

    async def _run_listener(self) -> None:
        conn = self._lconn
        assert conn is not None
        self._reading = True
        loop = asyncio.get_running_loop()
        interval = self.limits.health_check_s
        reader = asyncio.create_task(self._read(conn), name="roost-bus-redis-reader")
        try:
            while True:
                done, _ = await asyncio.wait({reader}, timeout=interval)
                if done:
                    return reader.result()
                idle = loop.time() - self._last_seen
                if idle > 2 * interval:
                    raise ConnectionError(f"no answer from Redis for {idle:.1f}s")
                if idle >= interval:
                    await conn.send_command("PING", check_health=False)
        finally:
            reader.cancel()
            await asyncio.wait({reader})

    async def _read(self, conn: rconn.AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        dispatch = self._hub.dispatch
        channel_of = self._channel_of
        while True:
            # push_request: with hiredis >= 3.2, redis-py parses pub/sub frames as pushes
            # and would otherwise skip them waiting for a "real" reply.
            response = await conn.read_response(push_request=True)
            self._last_seen = loop.time()
            if not isinstance(response, list):
                continue  # PONG outside subscribed mode
            kind = response[0]
            if kind == _MESSAGE:
                channel = channel_of.get(response[1])
                if channel is not None:
                    body: bytes = response[2]
                    dispatch(channel, body[1:] if body[:1] == b"m" else None)
            elif kind == _SUBSCRIBE:
                waiters = self._confirming.get(response[1])
                if waiters:
                    waiter = waiters.popleft()
                    if not waiters:
                        del self._confirming[response[1]]
                    if not waiter.done():
                        waiter.set_result(None)
